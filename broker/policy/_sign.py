"""Approvals: named privacy officers sign the policy hash with Ed25519.

An approval is a small JSON file in the set's ``approvals/`` folder::

    {"officer": "aroha", "policy_hash": "3cb6…", "signed_at": "2025-03-05T09:00:00+00:00",
     "signature": "<base64 Ed25519 over 'tiaki-policy-approval-v1\\n<hash>\\n<officer>'>"}

Verification counts distinct officers of a *trusted roster* whose signature verifies over the
set's current hash, and refuses a set with fewer than ``required_approvals``. The roster is
passed in by the caller (the broker's deployment configuration, or the roster of the set it is
already running): a set cannot vouch for itself by listing its author's key. Approvals of an
older hash are ignored; a signature that does not verify is refused outright, because it means
someone altered the set or the approval.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from broker._yaml import SourceError, load_json
from broker.policy._errors import ApprovalError, PolicySourceError, PolicyValidationError
from broker.policy._model import Officer
from broker.policy._reader import Reader

_CONTEXT = b"tiaki-policy-approval-v1"


@dataclass(frozen=True)
class Approval:
    """One officer's signature over one policy hash."""

    officer: str
    policy_hash: str
    signed_at: str
    signature: bytes


def approval_message(policy_hash: str, officer: str) -> bytes:
    """The bytes an officer signs: a fixed context, the hash and their own name."""
    return _CONTEXT + b"\n" + policy_hash.encode() + b"\n" + officer.encode()


def load_roster(path: Path) -> tuple[Officer, ...]:
    """Read ``officers: [{name, public_key}]``; positioned errors on any fault."""
    errors: list[PolicySourceError] = []
    reader = Reader(path, errors)
    data = reader.load()
    officers: list[Officer] = []
    root = reader.mapping(data, "the roster") if data is not None else None
    if root is not None:
        reader.keys(root, {"officers"}, "the roster")
        node = root.get("officers")
        if not isinstance(node, CommentedSeq):
            reader.error_at(root, "the roster needs 'officers:', a list")
        else:
            for index, body in enumerate(node):
                entry = reader.mapping(body, "an officer", (node, index))
                if entry is None:
                    continue
                officer = _officer(reader, entry)
                if officer is not None:
                    officers.append(officer)
    if errors:
        raise PolicyValidationError(errors)
    return tuple(officers)


def _officer(reader: Reader, entry: CommentedMap) -> Officer | None:
    reader.keys(entry, {"name", "public_key"}, "an officer")
    name = reader.text(entry, "name", "an officer", required=True)
    key = reader.text(entry, "public_key", "an officer", required=True)
    if name is None or key is None:
        return None
    try:
        raw = base64.b64decode(key, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        reader.error((entry, "public_key"), "public_key must be a base64 Ed25519 public key")
        return None
    return Officer(name, raw)


def generate_officer_key(out: Path) -> str:
    """Write a new Ed25519 private key to ``out`` (mode 0600); return the public key, base64.

    Refuses to overwrite an existing key. Development keys belong in an ignored folder such
    as ``.tiaki/officers/``; never in the repository.
    """
    if out.exists():
        raise ApprovalError(f"{out}: a key is already there; not overwriting it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:  # nothing written yet: nothing to clean up
        raise ApprovalError(f"cannot write the key to {out}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(public).decode()


def sign_policy(
    policy_hash: str,
    officer: str,
    key_path: Path,
    approvals: Path,
    *,
    now: dt.datetime,
    roster: tuple[Officer, ...] | None = None,
) -> Path:
    """Sign ``policy_hash`` as ``officer`` with the key at ``key_path``; write the approval.

    With ``roster`` (the one the brokers trust), the key must be the officer's on it: an
    approval signed with another officer's key is refused here, in one line naming the
    cause, rather than written and later refused by ``verify`` as "altered"."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ApprovalError(f"{key_path}: cannot read an Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ApprovalError(f"{key_path}: not an Ed25519 private key")
    if roster is not None:
        keys = {o.name: o.public_key for o in roster}
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if officer not in keys:
            raise ApprovalError(f"{officer} is not on the trusted roster")
        if keys[officer] != public:
            raise ApprovalError(f"{key_path} is not {officer}'s key on the trusted roster")
    signature = key.sign(approval_message(policy_hash, officer))
    approvals.mkdir(parents=True, exist_ok=True)
    path = approvals / f"{officer}.json"
    document = {
        "officer": officer,
        "policy_hash": policy_hash,
        "signed_at": now.isoformat(),
        "signature": base64.b64encode(signature).decode(),
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def load_approvals(folder: Path) -> list[Approval]:
    """Every approval file in ``folder`` (none if the folder is missing)."""
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = load_json(path)
            out.append(
                Approval(
                    officer=str(data["officer"]),
                    policy_hash=str(data["policy_hash"]),
                    signed_at=str(data.get("signed_at", "")),
                    signature=base64.b64decode(data["signature"], validate=True),
                )
            )
        except SourceError as exc:  # unreadable, not UTF-8, bad JSON, nested too deeply
            raise ApprovalError(f"{exc} (not a readable approval)") from None
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApprovalError(f"{path}: not a readable approval") from None
    return out


def verify_approvals(
    policy_hash: str, required: int, approvals: list[Approval], roster: tuple[Officer, ...]
) -> tuple[str, ...]:
    """The officers whose approvals count; :class:`ApprovalError` if fewer than ``required``."""
    keys = {officer.name: officer.public_key for officer in roster}
    good: set[str] = set()
    for approval in approvals:
        if approval.policy_hash != policy_hash:
            continue  # an approval of an earlier version: it does not count for this one
        key = keys.get(approval.officer)
        if key is None:
            continue  # not an officer the caller trusts
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(
                approval.signature, approval_message(policy_hash, approval.officer)
            )
        except InvalidSignature:
            raise ApprovalError(
                f"the approval by {approval.officer} does not verify: the set or the approval "
                "was altered"
            ) from None
        good.add(approval.officer)
    if len(good) < required:
        have = ", ".join(sorted(good)) or "none"
        raise ApprovalError(
            f"policy {policy_hash[:16]}… has {len(good)} of {required} required approvals "
            f"(valid: {have})"
        )
    return tuple(sorted(good))
