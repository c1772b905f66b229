"""Outbox faults that must not block or lose events: an event too large to seal, state that
must be pruned while the adapter runs, an event id reused with other content."""

from __future__ import annotations

import copy
import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from adapters import InMemoryConnection, InvalidEvent
from adapters._metrics import AdapterMetrics
from broker.codec import encode, from_json
from broker.envelope._seal import DEFAULT_MAX_PAYLOAD
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import SCHEMAS, FakeClock, example, make_client
from tests.unit.adapters.test_client import ingress_ids


def _huge_task(agency: str) -> dict[str, object]:
    doc = example("TaskEvent", source_agency=agency)
    doc["description"] = "A" * (DEFAULT_MAX_PAYLOAD + 1)
    return doc


async def test_publish_refuses_an_event_too_large_to_seal(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    async with make_client("police", connection, clock, tmp_path) as client:
        with pytest.raises(InvalidEvent, match="bytes encoded, more than the"):
            await client.publish("TaskEvent", _huge_task("police"))
        assert client.statistics().pending == 0


async def test_a_stored_row_that_cannot_be_sealed_is_dead_lettered_and_the_queue_moves_on(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    client = make_client("police", connection, clock, tmp_path)
    client.metrics = AdapterMetrics(CollectorRegistry())
    async with client:
        # A row an older SDK stored without checking the size.
        schema = SCHEMAS.latest("TaskEvent")
        doc = _huge_task("police")
        payload = encode(schema, from_json(schema, doc))
        big_id = doc["header"]["event_id"]  # type: ignore[index]
        stored = client._state.enqueue(
            big_id, "TaskEvent", "case-1", schema.fingerprint, payload, 0
        )
        assert stored == "stored"
        after = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        assert await client.send_pending() == 1
        stats = client.statistics()
        assert stats.pending == 0
        assert stats.dead_lettered == 1
        (letter,) = client.dead_letters.list()
        assert (letter.event_id, letter.reason) == (f"police/{big_id}", "cannot seal: oversized")
        assert (tmp_path / "dead-letters" / f"police_{big_id}.unsent").read_bytes() == payload
        assert client.metrics.registry.get_sample_value("tiaki_adapter_dead_lettered_total") == 1
    assert await ingress_ids(cluster, "police") == [after]


async def test_state_is_pruned_while_the_adapter_runs_not_only_at_start(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    async with make_client("police", connection, clock, tmp_path) as client:
        old = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        await client.send_pending()
        client._state.mark_handled("handled-long-ago", int(clock().timestamp() * 1000))
        clock.advance(days=31)
        fresh = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        await client.send_pending()  # the send loop's round, 31 days after start
        rows = client._state._db.execute("SELECT event_id FROM outbox").fetchall()
        assert rows == [(fresh,)]
        assert old != fresh
        assert client._state.handled_count() == 0
        # Not again within the hour: pruning is periodic, not every round.
        client._state.mark_handled("handled-just-now", int(clock().timestamp() * 1000))
        clock.advance(minutes=30)
        await client.send_pending()
        assert client._state.handled_count() == 1


def test_the_prune_period_is_an_hour_by_default() -> None:
    import inspect

    from adapters import AdapterClient

    default = inspect.signature(AdapterClient).parameters["prune_every"].default
    assert default == dt.timedelta(hours=1)


async def test_an_event_id_reused_with_other_content_is_refused(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    async with make_client("police", connection, clock, tmp_path) as client:
        first = example("TaskEvent", source_agency="police")
        first["transition"] = "assigned"
        changed = copy.deepcopy(first)
        changed["transition"] = "completed"
        event_id = await client.publish("TaskEvent", first)
        with pytest.raises(InvalidEvent, match=f"event id {event_id} was published before"):
            await client.publish("TaskEvent", changed)  # while pending
        await client.send_pending()
        with pytest.raises(InvalidEvent, match="with other content"):
            await client.publish("TaskEvent", changed)  # and once sent
        assert await client.publish("TaskEvent", first) == event_id  # the same: a no-op
        assert client.statistics().accepted == 1


async def test_reading_the_same_export_later_is_still_a_no_op(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    """The times publish fills in ("now") are not part of the content compared."""
    doc = example("TaskEvent", source_agency="police")
    del doc["header"]["occurred_at"], doc["header"]["recorded_at"]
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        clock.advance(minutes=5)  # a crash, a restart, the file read again
        assert await client.publish("TaskEvent", doc) == event_id
        assert client.statistics().accepted == 1


_OLD_OUTBOX = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    case_id TEXT NOT NULL,
    fingerprint BLOB,
    payload BLOB,
    accepted_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
"""


async def test_a_state_file_of_an_older_sdk_is_migrated(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    schema = SCHEMAS.latest("TaskEvent")
    old = example("TaskEvent", source_agency="police")
    payload = encode(schema, from_json(schema, old))
    old_id = old["header"]["event_id"]
    db = sqlite3.connect(tmp_path / "adapter.sqlite")
    db.executescript(_OLD_OUTBOX)
    db.execute(
        "INSERT INTO outbox (event_id, event_type, case_id, fingerprint, payload, accepted_ms)"
        " VALUES (?, 'TaskEvent', 'case-1', ?, ?, 0)",
        (old_id, schema.fingerprint, payload),
    )
    db.commit()
    db.close()
    async with make_client("police", connection, clock, tmp_path) as client:
        assert await client.publish("TaskEvent", old) == old_id  # a row without a hash: no-op
        new = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        assert await client.send_pending() == 2
    assert sorted(await ingress_ids(cluster, "police")) == sorted([old_id, new])
