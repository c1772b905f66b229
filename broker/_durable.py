"""Writing files that must survive a crash or a full disk whole or not at all: keys, secrets,
connection profiles, and the adapters' files of personal data.

Two steps every such write shares. ``os.write`` may write fewer bytes than asked (on a nearly
full disk, past a file size limit), so :func:`write_all` calls it until every byte is written,
and treats a write that takes nothing without an error as a full disk (``ENOSPC``). A rename or
link into place is durable only once its folder is fsynced (:func:`fsync_dir`). Each caller
writes to a temporary name, fsyncs it, puts it in place, then fsyncs the folder; most do all
of that through :func:`replace_whole`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` or raise :class:`OSError`."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # a write that takes nothing and reports no error: treat as full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def replace_whole(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (permission bits ``mode``), whole or not at all: every
    byte to ``.<name>.tmp`` beside it, fsync, rename into place, fsync the folder. On any
    failure raise :class:`OSError`, remove the temporary file and leave ``path`` as it was."""
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
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename, link or creation in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_to_others(path: Path) -> int | None:
    """``path``'s permission bits if group or others have any permission on it, else None:
    private keys and secrets must be the owner's alone (as ssh insists for its keys)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None
