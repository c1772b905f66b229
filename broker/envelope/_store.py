"""The key folder: JSON documents on disk. The only module of the envelope that does I/O.

Layout (``Settings.keys_dir``, by default ``.tiaki/keys``, which git ignores)::

    keys/                          0700
      public/                      0700
        <key_ref>.json             0644  one key set's public document (all its keys, any state)
      private/                     0700
        <key_ref>/                 0700
          <key_id>.json            0600  one private key

``key_ref`` is the agency registry's ``keys`` field, by default the agency id; the broker's key
set is ``broker``. A public document::

    {"format": "tiaki.public-keys/v1", "owner": "police",
     "keys": [{"key_id": "police.sig.20250101T000000Z.1a2b3c4d", "purpose": "signing",
               "algorithm": "ed25519", "created_at": "...Z", "not_after": "...Z",
               "state": "active", "public_key": "<base64url>"}, ...]}

A private key file::

    {"format": "tiaki.private-key/v1", "key_id": "...", "owner": "police",
     "algorithm": "ed25519", "private_key": "<base64url raw bytes>"}

Private keys never go into a topic, a log or the repository: in production each agency holds
only its own ``private/<key_ref>/`` and the broker only ``private/broker/``. A private file or
folder that group or others can read is refused, as ssh refuses such keys. Writes are atomic
and whole (every byte to a temporary file, fsync, rename, fsync the folder); a write the disk
cannot take raises :class:`KeyStoreError` and leaves the old file, never a truncated key.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker._durable import fsync_dir, write_all
from broker.envelope import _primitives as p
from broker.envelope._errors import KeyStoreError
from broker.envelope._keys import (
    BROKER,
    DEFAULT_KEY_VALIDITY,
    KeyInfo,
    KeyRing,
    KeyState,
    Purpose,
    b64,
    unb64,
)
from broker.envelope._primitives import Algorithm

PUBLIC_FORMAT = "tiaki.public-keys/v1"
PRIVATE_FORMAT = "tiaki.private-key/v1"

#: What ``tiaki keys init`` creates for every key set.
DEV_ALGORITHMS = (Algorithm.ED25519, Algorithm.X25519, Algorithm.MLKEM768_X25519)


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked on a nearly full disk, so
    loop), fsync, rename into place, fsync the folder; on any failure raise
    :class:`KeyStoreError` and leave ``path`` as it was (never a truncated key file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise KeyStoreError(f"{path}: cannot write: {exc.strerror}") from None


def _dump(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyStoreError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise KeyStoreError(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise KeyStoreError(f"{path}: expected a JSON object")
    return doc


def _check_private_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyStoreError(f"{path}: permissions {mode:04o} are too open (need 0600 or 0700)")


@dataclass(frozen=True)
class KeyStore:
    """A key folder; see the module docstring for the layout."""

    root: Path

    @property
    def public_dir(self) -> Path:
        return self.root / "public"

    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    def public_path(self, key_ref: str) -> Path:
        return self.public_dir / f"{key_ref}.json"

    def private_path(self, key_ref: str, key_id: str) -> Path:
        return self.private_dir / key_ref / f"{key_id}.json"

    def key_refs(self) -> list[str]:
        if not self.public_dir.is_dir():
            return []
        return sorted(path.stem for path in self.public_dir.glob("*.json"))

    # -- reading -----------------------------------------------------------------------------

    def load(
        self,
        principals: Mapping[str, str] | None = None,
        *,
        private_for: Iterable[str] | None = (),
    ) -> KeyRing:
        """Read key sets into a :class:`KeyRing`.

        ``principals`` maps each principal to its key set (agency id to ``key_ref``); every
        key set named there must exist. Key sets in the folder but not named are loaded too.
        ``private_for`` names the key sets whose private keys this process may hold (``None``:
        every one present, for development tools).
        """
        ring = KeyRing()
        refs = set(self.key_refs())
        for principal, ref in (principals or {}).items():
            ring.bind(principal, ref)
            if ref not in refs:
                raise KeyStoreError(
                    f"no public keys for {principal!r} at {self.public_path(ref)}"
                    " (run 'tiaki keys init')"
                )
        for ref in sorted(refs):
            doc = _read_json(self.public_path(ref))
            if doc.get("format") != PUBLIC_FORMAT or doc.get("owner") != ref:
                raise KeyStoreError(
                    f"{self.public_path(ref)}: not a {PUBLIC_FORMAT} document for {ref!r}"
                )
            entries = doc.get("keys")
            if not isinstance(entries, list):
                raise KeyStoreError(f"{self.public_path(ref)}: 'keys' must be a list")
            for entry in entries:
                if not isinstance(entry, dict):
                    raise KeyStoreError(f"{self.public_path(ref)}: each key must be an object")
                ring.add(KeyInfo.from_json(ref, entry))
        wanted = set(refs) if private_for is None else set(private_for)
        for ref in sorted(wanted & refs):
            for info in ring.keys(ref):
                path = self.private_path(ref, info.key_id)
                if path.exists():
                    ring.add(info, self._read_private(path, info))
        return ring

    def _read_private(self, path: Path, info: KeyInfo) -> bytes:
        _check_private_mode(path.parent)
        _check_private_mode(path)
        doc = _read_json(path)
        if (
            doc.get("format") != PRIVATE_FORMAT
            or doc.get("key_id") != info.key_id
            or doc.get("algorithm") != info.algorithm.value
        ):
            raise KeyStoreError(f"{path}: does not hold the private half of {info.key_id}")
        try:
            return unb64(str(doc["private_key"]))
        except (KeyError, ValueError):
            raise KeyStoreError(f"{path}: malformed private key") from None

    # -- writing -----------------------------------------------------------------------------

    def save(self, ring: KeyRing, owners: Iterable[str] | None = None) -> None:
        """Write the public documents of ``owners`` (default: all) and any private keys held."""
        _mkdir(self.root)
        _mkdir(self.public_dir)
        for owner in ring.owners() if owners is None else owners:
            keys = ring.keys(owner)
            for info in keys:
                if ring.has_private(info.key_id):
                    self._write_private(owner, info, ring.private_bytes(info.key_id))
            doc = {
                "format": PUBLIC_FORMAT,
                "owner": owner,
                "keys": [info.to_json() for info in keys],
            }
            _write(self.public_path(owner), _dump(doc), 0o644)

    def _write_private(self, owner: str, info: KeyInfo, private: bytes) -> None:
        path = self.private_path(owner, info.key_id)
        if path.exists():
            return
        _mkdir(self.private_dir)
        _mkdir(path.parent)
        doc = {
            "format": PRIVATE_FORMAT,
            "key_id": info.key_id,
            "owner": owner,
            "algorithm": info.algorithm.value,
            "private_key": b64(private),
        }
        _write(path, _dump(doc), 0o600)

    def remove_key_set(self, owner: str) -> None:
        """Delete one key set, public and private (development ``--force`` only)."""
        folder = self.private_dir / owner
        if folder.is_dir():
            for path in folder.glob("*.json"):
                path.unlink()
            folder.rmdir()
        self.public_path(owner).unlink(missing_ok=True)


def _complete(ring: KeyRing, owner: str, now: datetime) -> bool:
    """True if ``owner`` has a current key, with its private half, for every dev algorithm."""
    for algorithm in DEV_ALGORITHMS:
        keys = [
            k
            for k in ring.keys(owner)
            if k.algorithm is algorithm and k.state_at(now) is KeyState.ACTIVE
        ]
        if not any(ring.has_private(k.key_id) for k in keys):
            return False
    return True


def init_dev_keys(
    store: KeyStore,
    key_refs: Iterable[str],
    *,
    now: datetime,
    random: p.Random = os.urandom,
    force: bool = False,
    validity: timedelta = DEFAULT_KEY_VALIDITY,
) -> dict[str, str]:
    """Create development key sets for ``key_refs`` and the broker.

    Each gets an Ed25519 signing key and X25519 and ML-KEM-768+X25519 encryption keys. A key
    set that is already complete is kept unless ``force``. Returns ``{key_ref: "created" |
    "kept" | "replaced"}``.
    """
    refs = sorted(set(key_refs) | {BROKER})
    existing = set(store.key_refs())
    ring = store.load(private_for=None) if existing else KeyRing()
    outcome: dict[str, str] = {}
    for ref in refs:
        if ref in existing and not force and _complete(ring, ref, now):
            outcome[ref] = "kept"
            continue
        if ref in existing and not force:
            raise KeyStoreError(
                f"key set {ref!r} is incomplete (a current key or its private half is missing);"
                " use 'tiaki keys rotate' or '--force'"
            )
        if ref in existing:
            store.remove_key_set(ref)
        fresh = KeyRing()
        for algorithm in DEV_ALGORITHMS:
            fresh.generate(ref, algorithm, now, random, validity)
        store.save(fresh, [ref])
        outcome[ref] = "replaced" if ref in existing else "created"
    return outcome


def purposes_of(names: Iterable[str]) -> list[Purpose]:
    """Parse purpose names from the command line."""
    try:
        return [Purpose(name) for name in names]
    except ValueError:
        raise KeyStoreError("purpose must be 'encryption' or 'signing'") from None
