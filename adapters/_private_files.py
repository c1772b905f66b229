"""Writing files that hold personal data: owner-only (``0600`` in ``0700`` folders), atomic
(temporary name, fsync, rename), so a crash leaves the old file or the new, never half of one,
and a watcher reading the folder never sees a partial file."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
