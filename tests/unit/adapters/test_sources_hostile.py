"""Hostile input and a hostile file system never stop, hang or silently empty the sources:
unreadable, vanishing, replaced and absurdly named files, idle webhook callers, floods of
connections, and small files of many bad items."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters import AdapterClient, InMemoryConnection
from adapters._sources import MAX_REJECTED_ITEMS, FolderSource, WebhookSource
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import AGENCIES, FakeClock, example, make_client


def _good(**fields: Any) -> str:
    return json.dumps(example("TaskEvent", source_agency="police") | fields)


@asynccontextmanager
async def _client(tmp_path: Path) -> AsyncIterator[AdapterClient]:
    connection = InMemoryConnection(InMemoryCluster.provisioned(AGENCIES))
    async with make_client("police", connection, FakeClock(), tmp_path / "state") as client:
        yield client


def _exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("done", "rejected"))


async def test_an_unreadable_file_is_left_with_one_warning_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _exports(tmp_path)
    (folder / "a-Jane-Doe.json").write_text(_good())
    (folder / "b.json").write_text(_good())
    real_open = os.open

    def locked(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path).name == "a-Jane-Doe.json":  # chmod 000 does not stop root, which tests may be
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", locked)
    async with _client(tmp_path) as client:
        source = FolderSource("police", folder)
        with capture_logs() as logs:
            first = await source.scan(client.publish)
            await source.scan(client.publish)
    assert (first.files, first.published) == (1, 1)
    assert _left(folder) == ["a-Jane-Doe.json"]  # there for a later scan, once readable
    warnings = [e for e in logs if e["event"] == "source file left for the next scan"]
    assert [w["reason"] for w in warnings] == ["PermissionError/EACCES"]  # once, not per scan
    assert "Jane" not in repr(logs)


@pytest.mark.parametrize("stem", ["x" * 248, "Renée " * 35, "ā" * 124])
async def test_a_name_too_long_for_done_or_rejected_is_shortened_and_moved(
    tmp_path: Path, stem: str
) -> None:
    folder = _exports(tmp_path)
    name = f"{stem}.json"
    assert len(os.fsencode(name)) <= 255
    (folder / name).write_text(json.dumps([json.loads(_good()), {"event_type": "TaskEvent"}]))
    (folder / f"{stem[:-1]}z.json").write_text("not JSON")
    async with _client(tmp_path) as client:
        result = await FolderSource("police", folder).scan(client.publish)
    assert (result.files, result.published, result.rejected) == (2, 1, 2)
    assert _left(folder) == []
    kept = [*os.listdir(folder / "done"), *os.listdir(folder / "rejected")]
    assert len(kept) == 5  # the done file, a rejected item, a rejected file, two reasons
    assert all(len(os.fsencode(n)) + len(".x.tmp") <= 255 for n in kept)
    assert all(stem[:20] in n for n in kept)  # still recognisable
    assert all(n.encode() for n in kept)  # cut on a whole character


async def test_a_file_removed_while_it_is_published_does_not_stop_the_scan(
    tmp_path: Path,
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text(_good())
    (folder / "b.json").write_text(_good())
    async with _client(tmp_path) as client:

        async def publish(event_type: str, doc: dict[str, Any]) -> str:
            (folder / "a.json").unlink(missing_ok=True)
            return await client.publish(event_type, doc)

        result = await FolderSource("police", folder).scan(publish)
    assert (result.files, result.published) == (2, 2)
    assert _left(folder) == []
    assert len(os.listdir(folder / "done")) == 1  # b.json; a.json was taken away


def _replace_with(folder: Path, task_id: str) -> None:
    """What a case system does to export: write a temporary name, rename it into place."""
    (folder / "a.json.tmp").write_text(_good(task_id=task_id))
    os.replace(folder / "a.json.tmp", folder / "a.json")


async def test_an_export_replaced_while_it_is_published_is_published_next_scan(
    tmp_path: Path,
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text(_good(task_id="OLD"))
    published: list[str] = []
    async with _client(tmp_path) as client:

        async def publish(event_type: str, doc: dict[str, Any]) -> str:
            published.append(doc["task_id"])
            if len(published) == 1:
                _replace_with(folder, "NEW")
            return await client.publish(event_type, doc)

        source = FolderSource("police", folder)
        await source.scan(publish)
        assert _left(folder) == ["a.json"]  # the new export, left for the next scan
        await source.scan(publish)
    assert published == ["OLD", "NEW"]
    assert _left(folder) == []
    done = [json.loads(p.read_text())["task_id"] for p in (folder / "done").iterdir()]
    assert done == ["NEW"]  # the old content is published; the case system replaced its file


async def test_an_export_replaced_in_the_instant_of_the_move_is_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text(_good(task_id="OLD"))
    real_replace = os.replace

    def racing(src: Any, dst: Any) -> None:
        if Path(dst).parent.name == "done" and Path(src).name == "a.json":
            _replace_with(folder, "NEW")  # after the check, before the move
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing)
    async with _client(tmp_path) as client:
        await FolderSource("police", folder).scan(client.publish)
    monkeypatch.undo()
    assert _left(folder) == ["a.json"]
    assert json.loads((folder / "a.json").read_text())["task_id"] == "NEW"
    assert list((folder / "done").iterdir()) == []  # new content is not "done" unpublished


async def test_many_bad_items_are_kept_once_and_the_loop_keeps_running(tmp_path: Path) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text("[" + ",".join(["1"] * 5000) + "]")  # 10 KB
    ticks = 0
    scanning = True

    async def ticker() -> None:
        nonlocal ticks
        while scanning:
            ticks += 1
            await asyncio.sleep(0)

    async with _client(tmp_path) as client:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        result = await FolderSource("police", folder).scan(client.publish)
        scanning = False
        await task
    assert (result.files, result.rejected) == (1, 5000)
    assert ticks > 5000 // 100  # the event loop ran while the file was read
    rejected = sorted(os.listdir(folder / "rejected"))
    assert len(rejected) == 2 * MAX_REJECTED_ITEMS + 2
    whole = [n for n in rejected if n.endswith("-a.json")]
    assert (folder / "rejected" / whole[0]).read_text().startswith("[1,1,")
    reason = (folder / "rejected" / f"{whole[0]}.reason").read_text()
    assert reason.startswith("5000 of 5000 items are not valid events")
    assert len(os.listdir(folder / "done")) == 1


async def test_duplicate_json_keys_and_csv_columns_are_refused_with_a_reason(
    tmp_path: Path,
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text('{"event_type": "TaskEvent", "event": {}, "event": {"x": 1}}')
    csv_folder = tmp_path / "csv"
    csv_folder.mkdir()
    (csv_folder / "a.csv").write_text("case,case\nC-1,C-2\n")
    async with _client(tmp_path) as client:
        json_result = await FolderSource("police", folder).scan(client.publish)
        csv_result = await FolderSource(
            "police", csv_folder, format="csv", event_type="TaskEvent", columns={}
        ).scan(client.publish)
    assert json_result.rejected == csv_result.rejected == 1
    (json_reason,) = (folder / "rejected").glob("*.reason")
    assert json_reason.read_text() == "bad JSON: an object names the same key twice\n"
    (csv_reason,) = (csv_folder / "rejected").glob("*.reason")
    assert csv_reason.read_text() == "line 1: the header names case twice\n"


async def _post(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@asynccontextmanager
async def _webhook(tmp_path: Path, **options: Any) -> AsyncIterator[WebhookSource]:
    source = WebhookSource("police", "127.0.0.1", 0, **options)
    stop = asyncio.Event()
    async with _client(tmp_path) as client:
        task = asyncio.create_task(source.run(client.publish, stop))
        await source.bound.wait()
        try:
            yield source
        finally:
            stop.set()
            await task


async def test_the_webhook_answers_idle_and_partial_callers_408_and_closes(
    tmp_path: Path,
) -> None:
    async with _webhook(tmp_path, read_timeout_s=0.2) as source:
        partial = b"POST /events HTTP/1.1\r\nContent-Length: 10\r\n\r\n{"
        answers = await asyncio.gather(_post(source.port, partial), _post(source.port, b""))
        duplicate = b'{"a": 1, "a": 2}'
        dup_answer = await _post(
            source.port,
            b"POST /events HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(duplicate) + duplicate,
        )
    assert [a.split(b" ", 2)[1] for a in answers] == [b"408", b"408"]
    assert dup_answer.split(b" ", 2)[1] == b"400"


async def test_the_webhook_refuses_connections_beyond_its_cap(tmp_path: Path) -> None:
    async with _webhook(tmp_path, max_connections=2, read_timeout_s=5) as source:
        idle = [await asyncio.open_connection("127.0.0.1", source.port) for _ in range(2)]
        await asyncio.sleep(0.1)
        refused = await _post(source.port, b"")
        for _, writer in idle:
            writer.close()
        body = _good().encode()
        request = b"POST /events HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        for _ in range(50):  # served again once the idle ones are gone
            answer = await _post(source.port, request)
            if answer.split(b" ", 2)[1] == b"202":
                break
            await asyncio.sleep(0.05)
    assert refused.split(b" ", 2)[1] == b"503"
    assert answer.split(b" ", 2)[1] == b"202"


async def test_a_file_larger_than_the_limit_is_rejected_unread_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder export is read whole into memory: a mistaken multi-gigabyte dump would
    exhaust it and stop the adapter on the same file after every restart. It is moved to
    ``rejected/`` as it is, unread, with its reason."""
    folder = _exports(tmp_path)
    big = json.dumps([json.loads(_good()) for _ in range(40)])
    (folder / "a-dump.json").write_text(big)
    (folder / "b.json").write_text(_good())
    async with _client(tmp_path) as client:
        source = FolderSource("police", folder, max_file_bytes=len(_good()) * 4)
        with capture_logs() as logs:
            result = await source.scan(client.publish)
    assert (result.files, result.published, result.rejected) == (2, 1, 1)
    assert _left(folder) == []
    (kept,) = [n for n in os.listdir(folder / "rejected") if not n.endswith(".reason")]
    assert kept.endswith(f"-{len(big)}-bytes-a-dump.json")
    assert (folder / "rejected" / kept).read_text() == big  # moved whole, not rewritten
    reason = (folder / "rejected" / f"{kept}.reason").read_text()
    assert reason.startswith(f"the file is {len(big)} bytes, more than the ")
    assert [e["reason"] for e in logs if e["event"] == "source file rejected"] == ["oversized_file"]
