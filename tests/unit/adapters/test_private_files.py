"""Private files are written whole or not at all: a short ``os.write`` (a nearly full disk, a
file size limit) never leaves a truncated file in place, and an event whose sink could not
write it is not marked handled."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters import InMemoryConnection, Received
from adapters._private_files import write_private
from adapters._sinks import FolderSink
from tests.unit.adapters.conftest import FakeBroker, FakeClock, make_client

_real_write = os.write


def _is_temporary(fd: int) -> bool:
    """Only the writer's own temporary files are faked; anything else writes for real."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
    except OSError:
        return False


def short_writes(at_most: int, *, then_full_after: int | None = None) -> Callable[..., int]:
    """An ``os.write`` that writes at most ``at_most`` bytes a call, as the kernel may; after
    ``then_full_after`` bytes it raises ``ENOSPC``, as a full disk does."""
    total = 0

    def write(fd: int, data: bytes | memoryview) -> int:
        nonlocal total
        if not _is_temporary(fd):
            return _real_write(fd, data)
        if then_full_after is not None and total >= then_full_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = _real_write(fd, bytes(data[:at_most]))
        total += written
        return written

    return write


def test_short_writes_are_continued_until_every_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = json.dumps({"body": "x" * 10_000}).encode()
    monkeypatch.setattr(os, "write", short_writes(1000))
    write_private(tmp_path / "out" / "event.json", data)
    assert (tmp_path / "out" / "event.json").read_bytes() == data
    assert (tmp_path / "out" / "event.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700


def test_a_full_disk_raises_and_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "event.json"
    target.write_bytes(b"old\n")
    monkeypatch.setattr(os, "write", short_writes(2048, then_full_after=2048))
    with pytest.raises(OSError, match="No space left on device") as info:
        write_private(target, b"y" * 10_000)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["event.json"]


def test_a_write_that_takes_nothing_is_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        os, "write", lambda fd, data: 0 if _is_temporary(fd) else _real_write(fd, data)
    )
    with pytest.raises(OSError, match="No space left on device") as info:
        write_private(tmp_path / "event.json", b"z" * 100)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


async def test_an_event_the_folder_sink_could_not_write_is_not_handled_nor_lost(
    connection: InMemoryConnection,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event_id = await fake_broker.deliver("oranga-tamariki")
    sink = FolderSink(tmp_path / "received")

    async def handler(event: Received) -> None:
        await sink.deliver(event)

    async with make_client("oranga-tamariki", connection, clock, tmp_path / "state") as client:
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", short_writes(512, then_full_after=512))
            await client.receive(handler)
        stats = client.statistics()
        assert (stats.handled, stats.parked, stats.failures) == (0, 1, 1)
        assert not list((tmp_path / "received").glob(f"*_{event_id}.json"))
        clock.advance(seconds=1)  # the disk has room again: the retry writes it whole
        await client.receive(handler)
        assert client.statistics().handled == 1
    (path,) = (tmp_path / "received").glob(f"*_{event_id}.json")  # <source>_<event id>
    written = json.loads(path.read_text())
    assert written["event_id"] == event_id
