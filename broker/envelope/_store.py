"""The key folder: JSON documents on disk. The only module of the envelope that does I/O.

Layout (``Settings.keys_dir``, by default ``.tiaki/keys``, which git ignores)::

    keys/                          0700
      public/                      0700
        <key_ref>.json             0644  one key set's public document (all its keys, any state)
      private/                     0700
        <key_ref>/                 0700
          <key_id>.json            0600  one private key
      revoked.jsonl                0600  every revocation seen, one JSON line each, append-only
      .lock                        0600  held by ``tiaki keys`` while it changes documents

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

Revocation is final, and a public document alone cannot keep it so: a stale or rolled-back
copy says the key is active. So every revocation saved (``tiaki keys revoke``) or taken in by
a running broker (``refresh_keys``) is also appended to ``revoked.jsonl``, by key id and by a
SHA-256 fingerprint of the public key, and every read applies it: a listed key is revoked
whatever its document says, and so is the same public key under another key id of the same
key set. A line::

    {"format": "tiaki.revoked-key/v1", "key_id": "...", "owner": "police",
     "public_sha256": "<hex>", "revoked_at": "...Z", "reason": "compromised"}

A last line without its newline (a crash mid-append) is ignored; any other unreadable line
refuses the whole folder, as a revocation that cannot be read must not be dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker._durable import fsync_dir, open_to_others, replace_whole, write_all
from broker._yaml import SourceError, load_json, parse_json
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
    format_time,
    parse_time,
    unb64,
)
from broker.envelope._primitives import Algorithm

PUBLIC_FORMAT = "tiaki.public-keys/v1"
PRIVATE_FORMAT = "tiaki.private-key/v1"
REVOKED_FORMAT = "tiaki.revoked-key/v1"

#: What ``tiaki keys init`` creates for every key set.
DEV_ALGORITHMS = (Algorithm.ED25519, Algorithm.X25519, Algorithm.MLKEM768_X25519)


#: How long ``tiaki keys`` waits for another ``tiaki keys`` command's lock (``--wait``), and
#: how often it tries it meanwhile.
LOCK_WAIT_S = 120.0
LOCK_POLL_S = 0.1


def _try_lock(fd: int) -> bool:
    """Take the exclusive ``flock`` on ``fd`` if no one holds it; whether it was taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked on a nearly full disk, so
    loop), fsync, rename into place, fsync the folder; on any failure raise
    :class:`KeyStoreError` and leave ``path`` as it was (never a truncated key file)."""
    try:
        replace_whole(path, data, mode)
    except OSError as exc:
        raise KeyStoreError(f"{path}: cannot write: {exc.strerror}") from None


def _dump(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``. Anything wrong with the file (unreadable, not UTF-8, bad
    JSON, nested too deeply, an endless number) is a :class:`KeyStoreError`, so it refuses
    that key set only (:meth:`KeyStore.load_each`)."""
    try:
        doc = load_json(path)
    except SourceError as exc:
        raise KeyStoreError(str(exc)) from None
    if not isinstance(doc, dict):
        raise KeyStoreError(f"{path}: expected a JSON object")
    return doc


def _check_private_mode(path: Path) -> None:
    mode = open_to_others(path)
    if mode is not None:
        raise KeyStoreError(f"{path}: permissions {mode:04o} are too open (need 0600 or 0700)")


def fingerprint(public: bytes) -> str:
    """The fingerprint a revocation is also recorded under: SHA-256 of the raw public key."""
    return hashlib.sha256(public).hexdigest()


@dataclass(frozen=True)
class Revocation:
    """One line of ``revoked.jsonl``."""

    key_id: str
    owner: str
    public_sha256: str
    revoked_at: datetime
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REVOKED_FORMAT,
            "key_id": self.key_id,
            "owner": self.owner,
            "public_sha256": self.public_sha256,
            "revoked_at": format_time(self.revoked_at),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Revocations:
    """The revocation list, looked up by key id and by (owner, public key fingerprint): the
    fingerprint is matched only within its own key set, so one key set's document cannot
    revoke another's key by listing that key's public bytes as its own, revoked."""

    by_id: Mapping[str, Revocation]
    by_public: Mapping[tuple[str, str], Revocation]

    def apply(self, info: KeyInfo) -> KeyInfo:
        """``info``, revoked if its id or its public key is listed and it is not already."""
        if info.state is KeyState.REVOKED:
            return info
        listed = self.by_id.get(info.key_id) or self.by_public.get(
            (info.owner, fingerprint(info.public))
        )
        if listed is None:
            return info
        return replace(
            info, state=KeyState.REVOKED, revoked_at=listed.revoked_at, reason=listed.reason
        )


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

    @contextlib.contextmanager
    def locked(self, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
        """Hold the folder's write lock (an exclusive ``flock`` on ``.lock``): ``tiaki keys
        init | rotate | revoke`` each read, change and write the documents under it, so two
        run at once (a scheduled rotation and an incident's revocation) cannot lose each
        other's write. Readers need no lock: every write is an atomic rename. (``flock`` on a
        network file system mounted without locking only excludes commands on one machine.)

        Waits at most ``wait_s`` seconds for another command to let go, then raises
        :class:`KeyStoreError` naming the lock: a command stuck while holding it (a hung
        disk, a stopped terminal) must not hold an incident's revocation for ever unseen."""
        _mkdir(self.root)
        path = self.root / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"{self.root}: cannot lock: {exc.strerror}") from None
        try:
            if not _try_lock(fd):  # say why nothing happens yet, then wait
                print(
                    f"tiaki: note: waiting up to {wait_s:g} s for {path}: another `tiaki "
                    "keys` command is changing the key documents",
                    file=sys.stderr,
                )
                deadline = time.monotonic() + wait_s
                while not _try_lock(fd):
                    if time.monotonic() >= deadline:
                        raise KeyStoreError(
                            f"{path}: another `tiaki keys` command has held it for over "
                            f"{wait_s:g} s; nothing was changed. Find it (fuser {path}) and "
                            "let it finish or stop it, then run this again"
                        )
                    time.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # and with it the lock

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
        """Read key sets into a :class:`KeyRing`; raise :class:`KeyStoreError` if any document
        is refused (what a start and the command-line tools want: all or nothing).

        ``principals`` maps each principal to its key set (agency id to ``key_ref``); every
        key set named there must exist. Key sets in the folder but not named are loaded too.
        ``private_for`` names the key sets whose private keys this process may hold (``None``:
        every one present, for development tools).
        """
        ring, refused = self.load_each(principals, private_for=private_for)
        if refused:
            raise next(iter(refused.values()))
        return ring

    def load_each(
        self,
        principals: Mapping[str, str] | None = None,
        *,
        private_for: Iterable[str] | None = (),
        apply_revoked: bool = True,
    ) -> tuple[KeyRing, dict[str, KeyStoreError]]:
        """Read each key set on its own: the ring of those that could be read, and why each
        other one was refused, by ``key_ref`` (missing key sets of ``principals`` first).

        A key set is taken whole or not at all: a document with one bad entry, a key id that
        is not its owner's or is already taken, or a private key that cannot be read refuses
        that key set only, so one agency's broken document cannot keep another's revocation
        from a running broker (``refresh_keys``). Every key set has ``revoked.jsonl`` applied;
        a revocation list that cannot be read raises :class:`KeyStoreError` (``apply_revoked=False``
        reads the documents alone, for a caller that already holds what the list said).
        """
        revocations = self.revocations() if apply_revoked else Revocations({}, {})
        ring = KeyRing()
        refused: dict[str, KeyStoreError] = {}
        refs = set(self.key_refs())
        for principal, ref in (principals or {}).items():
            ring.bind(principal, ref)
            if ref not in refs:
                refused.setdefault(
                    ref,
                    KeyStoreError(
                        f"no public keys for {principal!r} at {self.public_path(ref)}"
                        " (run 'tiaki keys init')"
                    ),
                )
        wanted = refs if private_for is None else set(private_for)
        for ref in sorted(refs):
            try:
                keys = [revocations.apply(info) for info in self._read_public(ref)]
                for info in keys:
                    if info.key_id in ring:
                        raise KeyStoreError(
                            f"{self.public_path(ref)}: key {info.key_id} is already in key set"
                            f" {ring.get(info.key_id).owner!r}"
                        )
                part = KeyRing()  # the key set alone, so a refusal leaves nothing behind
                for info in keys:
                    path = self.private_path(ref, info.key_id)
                    private = None
                    if ref in wanted and path.exists():
                        private = self._read_private(path, info)
                    part.add(info, private)
            except KeyStoreError as exc:
                refused[ref] = exc
                continue
            for info in keys:
                held = part.has_private(info.key_id)
                ring.add(info, part.private_bytes(info.key_id) if held else None)
        return ring, refused

    # -- revocations ---------------------------------------------------------------------------

    @property
    def revoked_path(self) -> Path:
        return self.root / "revoked.jsonl"

    def revocations(self) -> Revocations:
        """Read ``revoked.jsonl`` (see the module docstring); empty if there is none."""
        path = self.revoked_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise KeyStoreError(f"{path}: {exc.strerror}") from None
        # A last line without its newline is a torn append, which may end inside a character:
        # lines are split as bytes and decoded one by one.
        lines = data.split(b"\n")[:-1]
        by_id: dict[str, Revocation] = {}
        by_public: dict[tuple[str, str], Revocation] = {}
        for number, line in enumerate(lines, 1):
            try:
                doc = parse_json(path, line.decode("utf-8"), number)
                if doc["format"] != REVOKED_FORMAT:
                    raise ValueError(doc["format"])
                entry = Revocation(
                    key_id=str(doc["key_id"]),
                    owner=str(doc["owner"]),
                    public_sha256=str(doc["public_sha256"]),
                    revoked_at=parse_time(doc["revoked_at"]),
                    reason=None if doc.get("reason") is None else str(doc["reason"]),
                )
            except (SourceError, KeyError, ValueError, TypeError):  # UnicodeDecodeError too
                raise KeyStoreError(f"{path}: line {number} is not a revocation") from None
            by_id.setdefault(entry.key_id, entry)
            by_public.setdefault((entry.owner, entry.public_sha256), entry)
        return Revocations(by_id, by_public)

    def record_revoked(self, keys: Iterable[KeyInfo]) -> list[KeyInfo]:
        """Append to ``revoked.jsonl`` every revoked key in ``keys`` not listed yet (by key id);
        return those appended. Raises :class:`KeyStoreError` if the list cannot be written."""
        listed = self.revocations().by_id
        new = [k for k in keys if k.state is KeyState.REVOKED and k.key_id not in listed]
        if not new:
            return []
        lines = b"".join(
            json.dumps(
                Revocation(
                    key_id=k.key_id,
                    owner=k.owner,
                    public_sha256=fingerprint(k.public),
                    # A document may omit when; the key was revoked no earlier than made.
                    revoked_at=k.revoked_at or k.created_at,
                    reason=k.reason,
                ).to_json(),
                ensure_ascii=False,
            ).encode()
            + b"\n"
            for k in new
        )
        path = self.revoked_path
        try:
            _mkdir(self.root)
            created = not path.exists()
            if not created:  # cut a torn last line, or the next line would be appended to it
                data = path.read_bytes()
                if data and not data.endswith(b"\n"):
                    os.truncate(path, data.rfind(b"\n") + 1)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                write_all(fd, lines)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.root)
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot record a revocation: {exc.strerror}") from None
        return new

    def _read_public(self, ref: str) -> list[KeyInfo]:
        """The keys of one public document, checked; :class:`KeyStoreError` if any is not."""
        path = self.public_path(ref)
        doc = _read_json(path)
        if doc.get("format") != PUBLIC_FORMAT or doc.get("owner") != ref:
            raise KeyStoreError(f"{path}: not a {PUBLIC_FORMAT} document for {ref!r}")
        entries = doc.get("keys")
        if not isinstance(entries, list):
            raise KeyStoreError(f"{path}: 'keys' must be a list")
        keys: dict[str, KeyInfo] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                raise KeyStoreError(f"{path}: each key must be an object")
            info = KeyInfo.from_json(ref, entry)
            if info.key_id in keys:
                raise KeyStoreError(f"{path}: key {info.key_id} is listed twice")
            keys[info.key_id] = info
        return list(keys.values())

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
        """Write the public documents of ``owners`` (default: all) and any private keys held,
        and record their revoked keys in ``revoked.jsonl``."""
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
            self.record_revoked(keys)

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
