"""Publishing again an event the broker refused: never a silent no-op.

The broker's refusal notice names the event id only when it could open the record, and
opening it counted the id as seen (its replay check), so a resend under that id would be
refused again as ``replayed``: ``publish`` says so and asks for a new id. A notice without an
id (a key the broker did not know, a record it could not read) names where Kafka put the
record; the outbox finds its row by that position, and publishing the event again sends it
afresh under the same id."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters import InMemoryConnection, InvalidEvent
from adapters._sources import FolderSource
from broker.platform import ingress
from broker.transport import InMemoryCluster, Record
from tests.unit.adapters.conftest import FakeBroker, FakeClock, example, make_client
from tests.unit.adapters.test_client import ingress_ids


async def _records(cluster: InMemoryCluster, agency: str) -> list[Record]:
    async with cluster.reader() as reader:
        return await reader.read_all(ingress(agency))


async def _refuse(broker: FakeBroker, record: Record, reason: str, event_id: str | None) -> None:
    """The notice the broker sends when it quarantines ``record`` (``event_id``: the id it
    read, None if it could not open the record)."""
    notice = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "reason": reason,
        "detail": "synthetic refusal",
        "event_id": event_id,
        "event_type": "TaskEvent" if event_id else None,
        "refused_at": broker.clock(),
    }
    await broker._send("police", None, "RefusalNotice", notice, str(uuid.uuid4()))


def _task(case_id: str = "SYN-CASE-R1") -> dict[str, Any]:
    return example("TaskEvent", source_agency="police", case_id=case_id)


async def test_an_event_the_broker_read_and_refused_needs_a_new_event_id(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    doc = _task()
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        assert await client.send_pending() == 1
        (record,) = await _records(cluster, "police")
        await _refuse(fake_broker, record, "unauthorised_membership", event_id)
        await client.receive(lambda event: None)
        with pytest.raises(InvalidEvent) as refused:
            await client.publish("TaskEvent", doc)
        assert str(refused.value) == (
            f"TaskEvent: the broker refused event {event_id} (unauthorised_membership) after"
            " reading its id; publish it under a new event id"
        )
        assert client.statistics().pending == 0
        doc["header"]["event_id"] = str(uuid.uuid4())  # the same event, a new id
        again = await client.publish("TaskEvent", doc)
        assert await client.send_pending() == 1
    assert await ingress_ids(cluster, "police") == [event_id, again]


async def test_an_event_the_broker_could_not_open_is_sent_again_under_its_id(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """``unknown_key``: the broker never read the id. Publishing the event again (after the
    keys are fixed) queues it behind what was accepted meanwhile and sends it afresh."""
    first, other = _task("SYN-CASE-R1"), _task("SYN-CASE-R2")
    async with make_client("police", connection, clock, tmp_path) as client:
        first_id = await client.publish("TaskEvent", first)
        other_id = await client.publish("TaskEvent", other)
        assert await client.send_pending() == 2
        records = await _records(cluster, "police")
        (refused,) = [r for r in records if r.key == b"SYN-CASE-R1"]
        # A record of the other event at the same offset on another partition, if there is
        # one, must not be taken for it: the notice's position is partition and offset.
        await _refuse(fake_broker, refused, "unknown_key", None)
        await client.receive(lambda event: None)
        later = await client.publish("TaskEvent", _task("SYN-CASE-R1"))  # waits in the outbox
        assert await client.publish("TaskEvent", first) == first_id
        assert await client.publish("TaskEvent", other) == other_id  # not refused: a no-op
        assert client.statistics().pending == 2
        assert client.statistics().accepted == 4
        assert await client.send_pending() == 2
    # The case's partition, in offset order: sent afresh, behind what was accepted meanwhile.
    ids = await ingress_ids(cluster, "police")
    by_case = [r.key for r in sorted(await _records(cluster, "police"), key=_position)]
    assert [i for i, key in zip(ids, by_case, strict=True) if key == b"SYN-CASE-R1"] == [
        first_id,
        later,
        first_id,
    ]
    assert sorted(ids) == sorted([first_id, other_id, later, first_id])


def _position(record: Record) -> tuple[int, int]:
    return (record.partition, record.offset)


async def test_changed_content_under_a_refused_unread_id_is_still_refused(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    doc = _task()
    async with make_client("police", connection, clock, tmp_path) as client:
        await client.publish("TaskEvent", doc)
        await client.send_pending()
        (record,) = await _records(cluster, "police")
        await _refuse(fake_broker, record, "key_revoked", None)
        await client.receive(lambda event: None)
        changed = dict(doc, transition="completed")
        with pytest.raises(InvalidEvent, match="published before with other content"):
            await client.publish("TaskEvent", changed)


async def test_a_replay_refusal_marks_nothing(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A ``replayed`` notice is about a second copy: the first was admitted, so publishing
    the event again stays the no-op it was."""
    doc = _task()
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        await client.send_pending()
        (record,) = await _records(cluster, "police")
        await _refuse(fake_broker, record, "replayed", None)
        await client.receive(lambda event: None)
        assert await client.publish("TaskEvent", doc) == event_id
        assert client.statistics().pending == 0
        assert client._state.refusal(event_id) is None


async def test_a_refusal_of_a_record_the_outbox_does_not_hold_changes_nothing(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Another program of the agency sent it, or its row was pruned: logged, nothing else."""
    doc = _task()
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        await client.send_pending()
        (record,) = await _records(cluster, "police")
        stranger = dataclasses.replace(record, offset=record.offset + 5)
        await _refuse(fake_broker, stranger, "unknown_key", None)
        await _refuse(fake_broker, record, "unauthorised_membership", str(uuid.uuid4()))
        await client.receive(lambda event: None)
        assert client.statistics().refused == 2
        assert await client.publish("TaskEvent", doc) == event_id  # still a no-op


@pytest.mark.parametrize(
    ("reason", "event_read", "outcome"),
    [("header_mismatch", True, "rejected"), ("unknown_key", False, "sent again")],
)
async def test_a_folder_export_read_again_after_a_refusal_is_rejected_or_sent_again(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
    reason: str,
    event_read: bool,
    outcome: str,
) -> None:
    """A folder export's event id comes from its file name, content and position, so the
    same file written again after a refusal is the same event id: never a silent move to
    ``done/``. Refused after the broker read the id, the item is rejected with the reason
    (write the file under another name, or give ``header.event_id``); refused unread, it is
    sent again."""
    exports = tmp_path / "exports"
    exports.mkdir()
    doc = _task()
    del doc["header"]["event_id"]
    data = json.dumps(doc)
    (exports / "task.json").write_text(data)
    source = FolderSource("police", exports)
    async with make_client("police", connection, clock, tmp_path / "state") as client:
        await source.scan(client.publish)
        await client.send_pending()
        (record,) = await _records(cluster, "police")
        (event_id,) = await ingress_ids(cluster, "police")
        await _refuse(fake_broker, record, reason, event_id if event_read else None)
        await client.receive(lambda event: None)
        (exports / "task.json").write_text(data)  # the agency writes the export again
        result = await source.scan(client.publish)
        await client.send_pending()
    rejected = sorted(p.name for p in (exports / "rejected").glob("*.reason"))
    if outcome == "rejected":
        assert (result.published, result.rejected) == (0, 1)
        (why,) = rejected
        assert (exports / "rejected" / why).read_text() == (
            f"item 1: TaskEvent: the broker refused event {event_id} ({reason}) after reading"
            " its id; publish it under a new event id\n"
        )
        assert await ingress_ids(cluster, "police") == [event_id]
    else:
        assert (result.published, result.rejected, rejected) == (1, 0, [])
        assert await ingress_ids(cluster, "police") == [event_id, event_id]
