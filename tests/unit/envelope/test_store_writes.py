"""The key folder is written whole or not at all: a short ``os.write`` (a nearly full disk)
never leaves a truncated private key file in place, which ``save`` would then keep for good
(it never rewrites a private key file that exists)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from broker.envelope import KeyRing, KeyStore, KeyStoreError

_real_write = os.write


def _is_temporary(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
    except OSError:
        return False


def _private_files(root: Path) -> list[Path]:
    return sorted((root / "private").rglob("*.json"))


def test_short_writes_still_write_whole_key_files(
    ring: KeyRing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(fd: int, data: bytes | memoryview) -> int:
        return _real_write(fd, bytes(data[:16]) if _is_temporary(fd) else data)

    monkeypatch.setattr(os, "write", write)
    KeyStore(tmp_path).save(ring, ["police"])
    monkeypatch.undo()
    loaded = KeyStore(tmp_path).load({"police": "police"}, private_for=["police"])
    assert {k.key_id for k in loaded.keys("police")} == {k.key_id for k in ring.keys("police")}
    assert all(loaded.has_private(k.key_id) for k in ring.keys("police"))


def test_a_full_disk_raises_and_leaves_no_truncated_key(
    ring: KeyRing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(fd: int, data: bytes | memoryview) -> int:
        if not _is_temporary(fd):
            return _real_write(fd, data)
        if os.fstat(fd).st_size:  # the disk took the first bytes and nothing more
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_write(fd, bytes(data[:40]))

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(KeyStoreError, match="cannot write: No space left on device"):
        KeyStore(tmp_path).save(ring, ["police"])
    monkeypatch.undo()
    assert _private_files(tmp_path) == []
    assert not list(tmp_path.rglob(".*.tmp"))
    # Once there is room, saving again writes every key whole.
    KeyStore(tmp_path).save(ring, ["police"])
    loaded = KeyStore(tmp_path).load({"police": "police"}, private_for=["police"])
    assert all(loaded.has_private(k.key_id) for k in ring.keys("police"))
