"""Whatever shape an export takes, the folder source never raises out of a scan: every item
ends published or rejected (with its reason), none lost and none twice, and later files are
still read. Property tests over arbitrary JSON values as items, headers, header fields and
body fields; and no file in ``done/`` or ``rejected/`` is ever overwritten."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import AdapterClient, InMemoryConnection, InvalidEvent
from adapters._sources import MAX_DEPTH, FolderSource, WebhookSource
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import RING, SCHEMAS, FakeClock, example, make_client

EVENT_TYPES = ("TaskEvent", "FamilyHarmEpisodeReport", "ReportOfConcern")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def export_items(draw: st.DrawFn) -> Any:
    """One item as a case system might (mis)write it."""
    doc = example(draw(st.sampled_from(EVENT_TYPES)), source_agency="police")
    shape = draw(st.sampled_from(["whole", "header", "header-field", "body-field", "valid"]))
    if shape == "whole":
        return draw(json_values)
    if shape == "header":
        doc["header"] = draw(json_values)
    elif shape == "header-field":
        key = draw(st.sampled_from([*doc["header"], "extra"]))
        doc["header"][key] = draw(json_values)
    elif shape == "body-field":
        key = draw(st.sampled_from([k for k in doc if k != "header"] + ["extra"]))
        doc[key] = draw(json_values)
    if draw(st.booleans()):
        event_type = draw(st.sampled_from(EVENT_TYPES) | json_values)
        return {"event_type": event_type, "event": doc}
    return doc


def _client() -> AdapterClient:
    return AdapterClient(
        "police",
        InMemoryConnection(InMemoryCluster.provisioned(["police"])),
        RING,
        SCHEMAS,
        None,
        clock=FakeClock(),
        send_in_background=False,
    )


def _rejected_items(folder: Path) -> list[Path]:
    rejected = folder / "rejected"
    return sorted(rejected.glob("*.json")) if rejected.is_dir() else []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(export_items(), min_size=1, max_size=4), as_list=st.booleans())
async def test_every_item_ends_published_or_rejected_and_the_scan_goes_on(
    items: list[Any], as_list: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        exported = items if as_list else items[0]
        (folder / "a.json").write_text(json.dumps(exported))
        later = example("TaskEvent", source_agency="police")
        (folder / "b.json").write_text(json.dumps(later))  # a later export still gets read
        async with _client() as client:
            result = await FolderSource("police", folder).scan(client.publish)
            pending = client.statistics().pending
        count = len(exported) if isinstance(exported, list) else 1  # a list is its items
        assert result.files == 2
        assert result.published + result.rejected == count + 1
        assert pending == result.published  # each published item stored once
        _check_folder(folder, rejected=result.rejected)


def _check_folder(folder: Path, *, rejected: int) -> None:
    """Every rejected item beside its reason, both files moved to done/, nothing left."""
    items = _rejected_items(folder)
    assert len(items) == rejected
    for path in items:
        assert (path.parent / f"{path.name}.reason").read_text().startswith("item ")
    assert sorted(p.name for p in folder.iterdir()) == (["done", "rejected"] if items else ["done"])
    assert len(list((folder / "done").iterdir())) == 2


@pytest.mark.parametrize("header", ["abc", [1, 2], 5, True, 0.5])
async def test_a_header_that_is_not_an_object_is_rejected_with_its_reason(
    tmp_path: Path, header: Any
) -> None:
    (tmp_path / "001-poison.json").write_text(
        json.dumps({"event_type": "TaskEvent", "event": {"header": header}})
    )
    (tmp_path / "002-good.json").write_text(
        json.dumps(example("TaskEvent", source_agency="police"))
    )
    async with _client() as client:
        result = await FolderSource("police", tmp_path).scan(client.publish)
        with pytest.raises(InvalidEvent, match="'header' must be an object"):
            await client.publish("TaskEvent", {"header": header})
    assert (result.files, result.published, result.rejected) == (2, 1, 1)
    (rejected,) = _rejected_items(tmp_path)
    assert rejected.name.endswith("-001-poison.item1.json")
    reason = rejected.parent / f"{rejected.name}.reason"
    assert reason.read_text() == "item 1: 'header' must be an object\n"


async def test_a_falsy_event_id_is_refused_not_replaced(tmp_path: Path) -> None:
    doc = example("TaskEvent", source_agency="police")
    doc["header"]["event_id"] = 0
    async with _client() as client:
        with pytest.raises(InvalidEvent, match="event_id"):
            await client.publish("TaskEvent", doc)


async def test_deeply_nested_exports_are_rejected_not_raised(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000  # beyond the JSON parser's recursion limit
    (tmp_path / "a.json").write_text(deep)
    item = example("TaskEvent", source_agency="police")
    item["note"] = json.loads("[" * 500 + "]" * 500)  # parses, but would overflow copying
    (tmp_path / "b.json").write_text(json.dumps(item))
    (tmp_path / "c.json").write_text(json.dumps([item]))
    async with _client() as client:
        result = await FolderSource("police", tmp_path).scan(client.publish)
        with pytest.raises(InvalidEvent, match="nested too deeply"):
            await client.publish("TaskEvent", item)
    assert (result.files, result.published, result.rejected) == (3, 0, 3)
    reasons = sorted(p.read_text() for p in (tmp_path / "rejected").glob("*.reason"))
    assert reasons == [f"nested more than {MAX_DEPTH} levels deep\n"] * 3
    kept = sorted((tmp_path / "rejected").glob("*-a.json"))
    assert kept[0].read_text() == deep  # kept whole


async def test_the_webhook_answers_a_poison_body_with_422() -> None:
    source = WebhookSource("police", "127.0.0.1", 0)
    stop = asyncio.Event()
    async with _client() as client:
        task = asyncio.create_task(source.run(client.publish, stop))
        await source.bound.wait()
        statuses = []
        for body in (
            json.dumps({"event_type": "TaskEvent", "event": {"header": [1]}}).encode(),
            b"[" * 100_000 + b"]" * 100_000,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
            writer.write(b"POST /events HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            statuses.append((await reader.read()).split(b" ", 2)[1])
            writer.close()
        stop.set()
        await task
    assert statuses == [b"422", b"422"]


async def test_exports_of_the_same_name_never_overwrite_done_or_rejected(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A case system that writes export.json every hour, each with one bad item.
    connection = InMemoryConnection(InMemoryCluster.provisioned(["police"]))
    source = FolderSource("police", tmp_path)
    async with make_client("police", connection, clock, tmp_path / "state") as client:
        for hour in range(3):
            path = tmp_path / "export.json"
            path.write_text(json.dumps([{"event_type": "TaskEvent", "event": {"n": hour}}]))
            os.utime(path, ns=(0, (1_750_000_000 + 3600 * hour) * 10**9))
            await source.scan(client.publish)
    done = sorted(p.name for p in (tmp_path / "done").iterdir())
    rejected = _rejected_items(tmp_path)
    assert len(done) == len(rejected) == 3
    assert [json.loads(p.read_text())["event"]["n"] for p in rejected] == [0, 1, 2]  # in order
    assert done[0].startswith("20250615T150640.000000Z-")
    assert all(n.endswith("-export.json") for n in done)
    assert all(p.name.endswith("-export.item1.json") for p in rejected)


async def test_a_file_read_again_after_a_crash_keeps_its_rejected_items_once(
    tmp_path: Path,
) -> None:
    good = example("TaskEvent", source_agency="police")
    good["header"]["event_id"] = str(uuid.uuid4())
    (tmp_path / "x.json").write_text(json.dumps([good, {"header": "bad"}]))
    kept = (tmp_path / "x.json").read_bytes()
    stat = (tmp_path / "x.json").stat()
    source = FolderSource("police", tmp_path)
    async with _client() as client:
        await source.scan(client.publish)
        # As if the process died before the file moved: the same file is there again.
        (tmp_path / "x.json").write_bytes(kept)
        os.utime(tmp_path / "x.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
        await source.scan(client.publish)
        assert client.statistics().pending == 1
    assert len(_rejected_items(tmp_path)) == 1
    assert len(list((tmp_path / "done").iterdir())) == 1
