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

from pathlib import Path

from broker._durable import replace_whole


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (``0600``, its folder ``0700`` if new): all of it, or raise
    :class:`OSError` and leave ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_whole(path, data, 0o600)
