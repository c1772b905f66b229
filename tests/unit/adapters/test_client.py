"""The SDK on the in-memory transport: outbox, ordering, commit after handling, retries,
dead letters, idempotency keys."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import structlog
from prometheus_client import CollectorRegistry

from adapters import AdapterClient, InMemoryConnection, InvalidEvent, Received
from adapters._metrics import AdapterMetrics
from adapters._sinks import document
from broker._logging import configure_logging
from broker.codec import decode
from broker.envelope import Kind, Opener, ReplayCache, Replayed
from broker.platform import egress, ingress
from broker.transport import InMemoryCluster, Unavailable
from tests.unit.adapters.conftest import (
    RING,
    ROOT,
    SCHEMAS,
    T0,
    FakeBroker,
    FakeClock,
    example,
    make_client,
)

#: Who sends the example TaskEvent the fake broker delivers (idempotency keys name it).
TASK_SOURCE = example("TaskEvent")["header"]["source_agency"]


async def ingress_ids(cluster: InMemoryCluster, agency: str) -> list[str]:
    """Event ids on ``agency``'s ingress topic in offset order, opened as the broker would."""
    opener = Opener("broker", RING)
    async with cluster.reader() as reader:
        records = await reader.read_all(ingress(agency))
    records.sort(key=lambda r: (r.partition, r.offset))
    out = []
    for r in records:
        opened = opener.open(r.value, topic=r.topic, now=T0, kind=Kind.INGRESS, source=agency)
        out.append(opened.event_id)
    return out


async def test_publish_validates_seals_and_sends(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    async with make_client("police", connection, clock, tmp_path) as client:
        doc = example("FamilyHarmEpisodeReport", source_agency="police")
        del doc["header"]["recorded_at"]  # the SDK fills what it can
        event_id = await client.publish("FamilyHarmEpisodeReport", doc)
        assert client.statistics().pending == 1
        assert await client.send_pending() == 1
    assert await ingress_ids(cluster, "police") == [event_id]
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress("police"))
    opened = Opener("broker", RING).open(
        record.value, topic=record.topic, now=clock(), kind=Kind.INGRESS
    )
    event = decode(opened.payload, SCHEMAS.latest("FamilyHarmEpisodeReport"))
    assert event["header"]["source_agency"] == "police"
    assert record.key == doc["header"]["case_id"].encode()


async def test_invalid_event_is_refused_and_nothing_is_stored(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    async with make_client("police", connection, clock, tmp_path) as client:
        bad = example("TaskEvent", source_agency="police")
        del bad["task_id"]  # required
        with pytest.raises(InvalidEvent, match="task_id"):
            await client.publish("TaskEvent", bad)
        with pytest.raises(InvalidEvent, match="source_agency"):
            await client.publish(
                "FamilyHarmEpisodeReport", example("FamilyHarmEpisodeReport", source_agency="msd")
            )
        with pytest.raises(InvalidEvent):
            await client.publish("NoSuchEvent", {"header": {"case_id": "SYN-1"}})
        # A shared type is no event: the broker would quarantine it (not_an_event).
        address = json.loads(
            (ROOT / "schemas" / "examples" / "FamilyHarmEpisodeReport.json").read_text()
        )["location"]
        with pytest.raises(InvalidEvent, match="a shared type, not an event"):
            await client.publish("Address", address | {"header": {"case_id": "SYN-1"}})
        assert client.statistics().pending == 0


async def test_outbox_keeps_events_while_kafka_is_down_and_sends_them_in_order_once(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    connection.down = True
    async with make_client("police", connection, clock, tmp_path) as client:
        ids = [
            await client.publish(
                "TaskEvent", example("TaskEvent", source_agency="police", case_id=f"SYN-{i % 7}")
            )
            for i in range(200)
        ]
        assert await client.send_pending() == 0
        assert client.statistics().pending == 200
    # The process restarts (same state folder): nothing was lost.
    connection.down = False
    async with make_client("police", connection, clock, tmp_path) as client:
        assert client.statistics().pending == 200
        assert await client.send_pending() == 200
        assert await client.send_pending() == 0
    # Per partition (per case) the order is the publish order; all 200 once.
    got = await ingress_ids(cluster, "police")
    assert sorted(got) == sorted(ids)
    assert len(set(got)) == 200
    async with cluster.reader() as reader:
        records = await reader.read_all(ingress("police"))
    opener = Opener("broker", RING)
    for case in {r.key for r in records}:
        in_case = [
            opener.open(r.value, topic=r.topic, now=clock(), kind=Kind.INGRESS).event_id
            for r in sorted(records, key=lambda r: r.offset)
            if r.key == case
        ]
        assert in_case == [i for n, i in enumerate(ids) if f"SYN-{n % 7}".encode() == case]


async def test_background_sender_drains_after_kafka_returns(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    connection.down = True
    async with make_client("police", connection, clock, tmp_path, background=True) as client:
        ids = [
            await client.publish(
                "TaskEvent", example("TaskEvent", source_agency="police", case_id="SYN-ONE")
            )
            for _ in range(50)
        ]
        with pytest.raises(TimeoutError):
            await client.flush(timeout_s=0.3)
        connection.down = False
        await client.flush(timeout_s=10)
        assert client.statistics().sent == 50
    assert await ingress_ids(cluster, "police") == ids  # one case: one partition, total order


async def test_same_event_id_is_published_once(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    doc = example("TaskEvent", source_agency="police")
    async with make_client("police", connection, clock, tmp_path) as client:
        await client.publish("TaskEvent", doc)
        await client.send_pending()
        await client.publish("TaskEvent", doc)  # a source re-reading the same file
        assert await client.send_pending() == 0
    assert len(await ingress_ids(cluster, "police")) == 1


async def test_handler_receives_typed_events_and_offsets_commit_after_success(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    ids = [await fake_broker.deliver("oranga-tamariki") for _ in range(3)]
    seen: list[Received] = []
    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        assert await client.receive(seen.append) == 3
    assert [e.event_id for e in seen] == ids
    assert seen[0].event_type == "TaskEvent"
    assert seen[0].legal_basis == "FVA s20"
    assert seen[0].body["task_id"] == "SYN-TASK-0001"
    assert seen[0].dropped == 1
    assert "Test Child" not in repr(seen[0])  # the body never shows in a repr
    committed = cluster.committed("oranga-tamariki.adapter")
    assert sum(committed.values()) == 3


async def test_a_release_from_review_says_when_it_was_decided_and_older_records_still_open(
    connection: InMemoryConnection,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A held item a person released arrives after events of its case decided later: the
    recipient orders by ``decided_at``, which the sinks write. A record written before
    SharedEvent v2 (no ``decided_at``) is read by the schema its envelope names."""
    held = await fake_broker.deliver(
        "oranga-tamariki", decided_at=T0 - dt.timedelta(hours=3), case_id="SYN-CASE-R1"
    )
    direct = await fake_broker.deliver("oranga-tamariki", case_id="SYN-CASE-R1")
    old = await fake_broker.deliver("oranga-tamariki", version=1, case_id="SYN-CASE-R1")
    seen: list[Received] = []
    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        assert await client.receive(seen.append) == 3
    by_id = {e.event_id: e for e in seen}
    assert set(by_id) == {held, direct, old}
    assert (by_id[held].decided_at, by_id[held].shared_at) == (T0 - dt.timedelta(hours=3), T0)
    assert by_id[held].released_late
    for event_id in (direct, old):
        assert by_id[event_id].decided_at == by_id[event_id].shared_at == T0
        assert not by_id[event_id].released_late
    assert by_id[old].body["task_id"] == "SYN-TASK-0001"  # the v1 record opened whole
    written = document(by_id[held])
    assert (written["decided_at"], written["shared_at"], written["released_late"]) == (
        "2025-06-01T06:00:00+00:00",
        "2025-06-01T09:00:00+00:00",
        True,
    )


async def test_failing_event_is_retried_others_flow_and_it_ends_in_dead_letters(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    ids = [await fake_broker.deliver("oranga-tamariki") for _ in range(5)]
    poison = ids[2]
    calls: dict[str, int] = {}

    def handler(event: Received) -> None:
        calls[event.event_id] = calls.get(event.event_id, 0) + 1
        if event.event_id == poison:
            raise RuntimeError("case system rejected the record")

    async with make_client(
        "oranga-tamariki", connection, clock, tmp_path, max_attempts=3
    ) as client:
        await client.receive(handler)
        assert calls == {i: 1 for i in ids}  # the others flowed past the failing one
        assert client.statistics().parked == 1
        await client.receive(handler)  # not due yet: the fake clock has not moved
        assert calls[poison] == 1
        clock.advance(seconds=1)
        await client.receive(handler)
        assert calls[poison] == 2  # received again
        clock.advance(seconds=2)
        await client.receive(handler)
        assert calls[poison] == 3
        stats = client.statistics()
        assert stats.parked == 0
        assert stats.dead_lettered == 1
        assert stats.handled == 4
        (letter,) = client.dead_letters.list()
    key = f"{TASK_SOURCE}/{poison}"  # dead letters are kept by idempotency key
    assert letter.event_id == key
    assert letter.attempts == 3
    assert letter.reason == "RuntimeError: the handler raised (message not kept)"
    sealed = tmp_path / "dead-letters" / f"{TASK_SOURCE}_{poison}.sealed"
    assert sealed.read_bytes()  # kept whole, sealed
    detail = client.dead_letters.detail(key)
    assert detail is not None
    assert "RuntimeError: case system rejected the record" in detail  # for the operators
    assert {i: n for i, n in calls.items() if i != poison} == {i: 1 for i in ids if i != poison}

    # After a person fixes the cause, the dead letter is applied and leaves the folder.
    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        fixed: list[str] = []
        await client.replay_dead_letter(key, lambda e: fixed.append(e.event_id))
        assert fixed == [poison]
        assert client.dead_letters.list() == []
        assert client.dead_letters.detail(key) is None  # the detail left with it


async def test_redelivered_event_reaches_the_handler_once(
    cluster: InMemoryCluster, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    event_id = await fake_broker.deliver("oranga-tamariki")
    await fake_broker.deliver("oranga-tamariki", event_id=event_id)  # the same event twice
    seen: list[str] = []
    async with make_client(
        "oranga-tamariki", InMemoryConnection(cluster), clock, tmp_path
    ) as client:
        await client.receive(lambda e: seen.append(e.event_id))
        assert client.statistics().duplicates == 1
    # A new process on the same state reading from the start (a new group, as after an
    # offset reset): the idempotency keys still hold, so the handler sees it once.
    async with AdapterClient(
        "oranga-tamariki",
        InMemoryConnection(cluster),
        RING,
        SCHEMAS,
        tmp_path,
        clock=clock,
        group_id="oranga-tamariki.rewound",
        send_in_background=False,
    ) as client:
        assert await client.receive(lambda e: seen.append(e.event_id)) == 2
    assert seen == [event_id]


async def test_unopenable_record_is_dead_lettered_not_lost(
    cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    async with cluster.publisher() as publisher:
        await publisher.publish(egress("oranga-tamariki"), b"SYN", b"\x01 not an envelope")
    async with make_client(
        "oranga-tamariki", InMemoryConnection(cluster), clock, tmp_path
    ) as client:
        await client.receive(lambda e: None)
        (letter,) = client.dead_letters.list()
    assert letter.reason == "cannot open: malformed_envelope"


async def test_a_refusal_notice_is_reported_not_handled(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """The broker quarantined records this agency sent: the adapter says so (statistics,
    metric, a warning naming the reason and the event id; only an info line for a replay,
    whose first copy was accepted), hands the events around them to the handler, and parks or
    dead-letters nothing."""
    first = await fake_broker.deliver("oranga-tamariki")
    await fake_broker.refuse(
        "oranga-tamariki", "key_unknown", "0b6f3c52-0000-4000-8000-00000000c0de", 7
    )
    await fake_broker.refuse("oranga-tamariki", "malformed_envelope", None, 8)
    await fake_broker.refuse("oranga-tamariki", "replayed", first, 9)  # a resend: harmless
    last = await fake_broker.deliver("oranga-tamariki")
    seen: list[Received] = []
    registry = CollectorRegistry()
    client = make_client("oranga-tamariki", connection, clock, tmp_path)
    client.metrics = AdapterMetrics(registry)
    stream = io.StringIO()
    configure_logging(stream)
    try:
        async with client:
            assert await client.receive(seen.append) == 5
            stats = client.statistics()
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    refused = [w for w in lines if w["event"] == "record refused by the broker"]
    assert sorted((w["offset"], w["reason"], w["event_id"]) for w in refused) == [
        (7, "key_unknown", "0b6f3c52-0000-4000-8000-00000000c0de"),
        (8, "malformed_envelope", None),
    ]
    assert [e.event_id for e in seen] == [first, last]
    assert (stats.refused, stats.dead_lettered, stats.parked) == (3, 0, 0)
    assert registry.get_sample_value("tiaki_adapter_refused_total", {"reason": "key_unknown"}) == 1
    assert not client.dead_letters.list()
    assert sum(cluster.committed("oranga-tamariki.adapter").values()) == 5
    duplicate = [w for w in lines if w["event"].startswith("duplicate refused")]
    assert [(w["level"], w["event_id"]) for w in duplicate] == [("info", first)]


async def test_async_handler_and_run_until_stop(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    await fake_broker.deliver("oranga-tamariki")
    stop = asyncio.Event()

    async def handler(event: Received) -> None:
        stop.set()

    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        await asyncio.wait_for(client.run(handler, stop, poll_timeout_ms=50), 5)
        assert client.statistics().handled == 1


async def test_lost_ack_resends_under_the_same_event_id_which_the_replay_check_catches(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    """Kafka wrote the record but the ack never came back (or the process died before marking
    the row sent): the row is sent again, resealed under the same event id, so the broker's
    replay check (or, after a broker restart, the recipient's idempotency key) drops it."""
    real_publisher = connection.publisher

    class LosesFirstAck:
        def __init__(self) -> None:
            self.inner = real_publisher()
            self.lost = False

        async def start(self) -> None:
            await self.inner.start()

        async def close(self) -> None:
            await self.inner.close()

        async def publish(
            self, topic: str, key: bytes | None, value: bytes, headers: Any = ()
        ) -> Any:
            record = await self.inner.publish(topic, key, value, headers)
            if not lost_once:
                lost_once.append(True)
                raise Unavailable("ack lost")
            return record

    lost_once: list[bool] = []
    connection.publisher = LosesFirstAck  # type: ignore[method-assign,assignment]
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        assert await client.send_pending() == 0
        clock.advance(seconds=1)
        assert await client.send_pending() == 1
    assert await ingress_ids(cluster, "police") == [event_id, event_id]
    async with cluster.reader() as reader:
        first, second = await reader.read_all(ingress("police"))
    opener = Opener("broker", RING, replay=ReplayCache())
    opener.open(first.value, topic=first.topic, now=clock(), kind=Kind.INGRESS)
    with pytest.raises(Replayed):
        opener.open(second.value, topic=second.topic, now=clock(), kind=Kind.INGRESS)


async def test_dead_lettered_event_delivered_again_is_not_retried(
    cluster: InMemoryCluster, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    event_id = await fake_broker.deliver("oranga-tamariki")
    calls: list[str] = []

    def failing(event: Received) -> None:
        calls.append(event.event_id)
        raise RuntimeError("synthetic fault")

    client = make_client(
        "oranga-tamariki", InMemoryConnection(cluster), clock, tmp_path, max_attempts=1
    )
    async with client:
        await client.receive(failing)
        assert [d.event_id for d in client.dead_letters.list()] == [f"{TASK_SOURCE}/{event_id}"]
    async with AdapterClient(
        "oranga-tamariki",
        InMemoryConnection(cluster),
        RING,
        SCHEMAS,
        tmp_path,
        clock=clock,
        group_id="oranga-tamariki.rewound",
        send_in_background=False,
    ) as again:
        await again.receive(failing)
        assert again.statistics().duplicates == 1
    assert calls == [event_id]  # waits in the folder for a person, not retried by redelivery


async def test_a_handler_exception_message_never_reaches_the_reason(
    connection: InMemoryConnection,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A pydantic ValidationError's text quotes the input (here the task id): the retry table,
    the dead-letter file and its listing keep only the exception's type; the text is in the
    dead letter's ``.detail`` file alone."""

    class Task(pydantic.BaseModel):
        task_id: int

    event_id = await fake_broker.deliver("oranga-tamariki")
    async with make_client(
        "oranga-tamariki", connection, clock, tmp_path, max_attempts=2
    ) as client:
        await client.receive(lambda event: Task.model_validate(event.body))
        clock.advance(seconds=1)
        await client.receive(lambda event: Task.model_validate(event.body))
        (letter,) = client.dead_letters.list()
    assert letter.event_id == f"{TASK_SOURCE}/{event_id}"
    assert letter.reason == "ValidationError: the handler raised (message not kept)"
    # Only the operators' detail file, which no listing or log shows, keeps the text.
    assert _files_holding(tmp_path, b"SYN-TASK-0001") == [f"{TASK_SOURCE}_{event_id}.detail"]
    detail = client.dead_letters.detail(letter.event_id)
    assert detail is not None
    assert "validation error for Task" in detail


def _files_holding(folder: Path, needle: bytes) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_a_guid_in_any_spelling_is_one_event_under_its_canonical_id(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    """SQL Server and .NET write GUIDs upper-case or braced. The envelope used to carry the
    id as given and the payload its canonical form, which the broker refuses as
    ``header_mismatch``; and each spelling was an event of its own."""
    canonical = "5f0c6a0e-7d3b-4c1e-9a55-0123456789ab"
    spellings = [canonical.upper(), "{" + canonical + "}", "urn:uuid:" + canonical]
    doc = example("FamilyHarmEpisodeReport", source_agency="police")
    async with make_client("police", connection, clock, tmp_path) as client:
        for spelling in spellings:
            doc["header"]["event_id"] = spelling
            assert await client.publish("FamilyHarmEpisodeReport", doc) == canonical
        assert client.statistics().pending == 1
        doc["header"]["event_id"] = "not-a-guid"
        with pytest.raises(InvalidEvent, match="event_id is not a UUID"):
            await client.publish("FamilyHarmEpisodeReport", doc)
        assert await client.send_pending() == 1
    assert await ingress_ids(cluster, "police") == [canonical]
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress("police"))
    opened = Opener("broker", RING).open(record.value, topic=record.topic, now=clock())
    event = decode(opened.payload, SCHEMAS.latest("FamilyHarmEpisodeReport"))
    assert str(event["header"]["event_id"]) == opened.event_id == canonical
