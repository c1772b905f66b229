"""Files that hold secrets: connection profiles and the local cluster's bootstrap credentials.

Their folders are created ``0700`` and the files ``0600`` before any secret is written, so
there is no moment at which another user could read them.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from broker._durable import replace_whole
from broker._yaml import SourceError, parse_json


def new_password() -> str:
    """A random SCRAM password (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_secret_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` (mode 0600), atomically and durably: the file is
    fsynced before it is renamed into place and the folder after, so a power cut leaves the
    old file or the new one, never an empty one (a lost password would lock its principal
    out until it is provisioned again)."""
    private_dir(path.parent)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    replace_whole(path, text.encode("utf-8"), 0o600)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None if the file does not exist; :class:`ValueError`
    if it is not UTF-8 or not JSON (nested too deeply, or with an integer too long to
    convert, included: :func:`~broker._yaml.parse_json`), which callers report naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = parse_json(path, text)
    except SourceError as exc:
        raise ValueError(exc.reason) from None
    if not isinstance(data, dict):
        return None
    return data
