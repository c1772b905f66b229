"""Broker-wide secrets that every worker must share: the audit subject key and the pseudonym
secret. Made once, kept owner-only beside the broker's keys, never logged.

Made once means made durably, and by one worker: the audit subject key is what makes every
audit record's people findable, so a key that a power cut loses after records were written
under it leaves those records naming nobody anyone can find, and two workers starting together
must not each make one. So the secret is written whole to a temporary file and fsynced, then
hard-linked into place (which fails if another worker got there first, whose secret is then
read instead), and the folder is fsynced: the secret's path either does not exist or holds the
whole secret, durably.

Owner-only means checked, not just made so: a secret file that group or others may read, or
that sits in a folder they may read, is refused at every start (as the key store refuses such
private keys, and ssh such keys), so a copy restored with the wrong mode or a folder opened up
by hand is noticed instead of quietly shared.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from broker._durable import fsync_dir, open_to_others, write_all
from broker._errors import ConfigError

_BYTES = 32


def shared_secret(path: Path) -> bytes:
    """The secret in ``path``; create it (0600, in a 0700 folder) if it does not exist yet.

    Raises :class:`ConfigError` if the file or its folder is open to group or others.
    """
    if not path.exists():
        _create(path, secrets.token_bytes(_BYTES))
    _check_owner_only(path.parent, 0o700)
    _check_owner_only(path, 0o600)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read a broker secret: {exc.strerror}") from None
    if len(data) < _BYTES:
        raise ConfigError(f"{path}: a broker secret needs {_BYTES} bytes")
    return data


def _check_owner_only(path: Path, wanted: int) -> None:
    """Refuse ``path`` if group or others have any permission on it."""
    mode = open_to_others(path)
    if mode is not None:
        raise ConfigError(
            f"{path}: permissions {mode:04o} are too open for a broker secret"
            f" (set {wanted:04o}: chmod {wanted:o} {path})"
        )


def _create(path: Path, secret: bytes) -> None:
    """Put ``secret`` at ``path`` unless something is there already (see the module docs)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another worker made it first: use theirs
            os.link(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create a broker secret: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
