"""Writing files that hold personal data: owner-only (``0600`` in ``0700`` folders), atomic
and durable, so a crash leaves the old file or the new, never half of one, and a watcher
reading the folder never sees a partial file.

The steps: write every byte to a temporary name (``os.write`` may write fewer bytes than asked,
on a nearly full disk or past a file size limit, so it is called until all are written), fsync
the file, rename it into place, fsync the folder (so the rename itself survives a power cut).
Any failure raises :class:`OSError` (``ENOSPC`` for a disk that took nothing more) and removes
the temporary file; nothing is renamed into place then. Callers treat that as "not written":
a sink raises, so the SDK does not mark the event handled nor commit its offset.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from broker._durable import fsync_dir, write_all


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (``0600``, its folder ``0700`` if new): all of it, or raise
    :class:`OSError` and leave ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
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
