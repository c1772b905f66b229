"""Policy releases: an approved copy of the policy set the broker runs, and its bundle form.

A release is a folder holding ``policies/`` (with ``approvals/``) and the ``schemas/`` it
names, so it is self-contained. On Kafka it travels as one record on the compacted
``tiaki.policy`` topic (a *bundle*: JSON mapping each relative path to its text), which every
broker worker follows; a worker unpacks a bundle into a fresh folder and hands it to its
:class:`~broker.policy.PolicyStore`, which swaps it in only if it is valid and approved.

Development officers (``dev_officers``) exist so ``make demo`` and the tests can approve a
release without real officers' keys; their private keys live under ``.tiaki/officers/``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from broker._errors import ConfigError
from broker.policy import generate_officer_key, load_policy_set, policy_hash, sign_policy

BUNDLE_FORMAT = 1
DEV_OFFICERS = ("dev-officer-a", "dev-officer-b")


def stage_release(policies: Path, schemas: Path, out: Path) -> Path:
    """Copy the policy set and its schemas into ``out``; return the policy folder there."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(policies, out / "policies")
    shutil.copytree(schemas, out / "schemas")
    return out / "policies"


def dev_officers(folder: Path) -> Path:
    """Development officers' keys in ``folder`` and a roster of them; return the roster path."""
    entries = []
    for name in DEV_OFFICERS:
        key = folder / f"{name}.key"
        public = folder / f"{name}.pub"
        if not key.exists():
            public.write_text(generate_officer_key(key) + "\n")
        entries.append(f"  - name: {name}\n    public_key: {public.read_text().strip()}\n")
    roster = folder / "roster.yaml"
    roster.write_text(
        "# Development officers (synthetic). Trust a real roster in production.\nofficers:\n"
        + "".join(entries)
    )
    return roster


def approve_as_dev_officers(policy_folder: Path, officers: Path, now: dt.datetime) -> str:
    """Sign the policy set in ``policy_folder`` as every development officer; return its hash."""
    policy = load_policy_set(policy_folder)
    digest = policy_hash(policy)
    for name in DEV_OFFICERS:
        sign_policy(digest, name, officers / f"{name}.key", policy.approvals_folder, now=now)
    return digest


def bundle(release: Path) -> bytes:
    """A release folder as one bundle record; a file that is not UTF-8 text is refused with
    a :class:`ConfigError` naming it (a bundle carries text, and a release holds no other)."""
    files: dict[str, str] = {}
    for path in sorted(release.rglob("*")):
        if not path.is_file():
            continue
        try:
            files[str(path.relative_to(release))] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{path}: not UTF-8 text; a policy release holds only text files"
            ) from None
    return json.dumps({"format": BUNDLE_FORMAT, "files": files}, sort_keys=True).encode()


def unbundle(data: bytes, out: Path) -> Path:
    """Unpack a bundle into the fresh folder ``out``; return its policy folder."""
    try:
        document = json.loads(data)
        files = document["files"]
        if document.get("format") != BUNDLE_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown bundle format")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a policy bundle: {exc}") from None
    out.mkdir(parents=True, exist_ok=False)
    root = out.resolve()
    for name, text in files.items():
        try:
            target = (out / name).resolve()
            if root not in target.parents:
                raise ConfigError(f"policy bundle names a path outside its folder: {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(str(text), encoding="utf-8")
        except (OSError, ValueError) as exc:  # a name clash, a NUL, a lone surrogate
            raise ConfigError(f"policy bundle file {name!r} cannot be unpacked: {exc}") from None
    return out / "policies"
