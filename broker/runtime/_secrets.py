"""Broker-wide secrets that every worker must share: the audit subject key and the pseudonym
secret. Made once, kept owner-only beside the broker's keys, never logged."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from broker._errors import ConfigError

_BYTES = 32


def shared_secret(path: Path) -> bytes:
    """The secret in ``path``; create it (0600, in a 0700 folder) if it does not exist yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(_BYTES))
        data = path.read_bytes()
    if len(data) < _BYTES:
        raise ConfigError(f"{path}: a broker secret needs {_BYTES} bytes")
    return data
