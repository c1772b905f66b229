"""Idempotency keys name the sending agency: each agency chooses its own event ids (the broker
keeps them apart by source too), so two agencies' events that share an id are two events for
the handler, the retry table, the dead letters and the sinks. Keys an older SDK recorded under
the bare event id still stop a redelivery of that event, so an upgrade never hands one over
twice."""

from __future__ import annotations

import uuid
from pathlib import Path

from adapters import InMemoryConnection, Received
from adapters._deadletter import DeadLetter
from adapters._sinks import FolderSink
from adapters._state import Parked
from broker.platform import egress
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import FakeBroker, FakeClock, example, make_client

#: The example events' senders (the fake broker delivers the examples as they are).
TASK_FROM = example("TaskEvent")["header"]["source_agency"]
SCREENING_FROM = example("HealthScreeningOutcome")["header"]["source_agency"]


async def _same_id_from_two_agencies(broker: FakeBroker) -> str:
    shared_id = str(uuid.uuid4())
    await broker.deliver("oranga-tamariki", "TaskEvent", event_id=shared_id)
    await broker.deliver("oranga-tamariki", "HealthScreeningOutcome", event_id=shared_id)
    return shared_id


def test_the_examples_come_from_two_agencies() -> None:
    assert TASK_FROM != SCREENING_FROM


async def test_two_agencies_events_with_one_id_are_both_handled_and_both_written(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    shared_id = await _same_id_from_two_agencies(fake_broker)
    sink = FolderSink(tmp_path / "received")
    seen: list[tuple[str, str]] = []

    async def handler(event: Received) -> None:
        seen.append((event.source_agency, event.idempotency_key))
        await sink.deliver(event)

    async with make_client("oranga-tamariki", connection, clock, tmp_path / "state") as client:
        await client.receive(handler)
        assert client.statistics().duplicates == 0
        # Each delivered again (a commit that did not land): each is a duplicate now.
        await fake_broker.deliver("oranga-tamariki", "TaskEvent", event_id=shared_id)
        await fake_broker.deliver("oranga-tamariki", "HealthScreeningOutcome", event_id=shared_id)
        await client.receive(handler)
        assert client.statistics().duplicates == 2
    assert sorted(seen) == [
        (SCREENING_FROM, f"{SCREENING_FROM}/{shared_id}"),
        (TASK_FROM, f"{TASK_FROM}/{shared_id}"),
    ]
    assert sorted(p.name for p in (tmp_path / "received").iterdir()) == [
        f"{SCREENING_FROM}_{shared_id}.json",
        f"{TASK_FROM}_{shared_id}.json",
    ]


async def test_two_agencies_events_with_one_id_are_retried_and_dead_lettered_apart(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    shared_id = await _same_id_from_two_agencies(fake_broker)
    calls: list[str] = []

    def failing(event: Received) -> None:
        calls.append(event.source_agency)
        raise RuntimeError("synthetic: the case system is down")

    async with make_client(
        "oranga-tamariki", connection, clock, tmp_path, max_attempts=2
    ) as client:
        await client.receive(failing)
        assert client.statistics().parked == 2
        clock.advance(seconds=1)
        await client.receive(failing)
        letters = sorted(client.dead_letters.list(), key=lambda d: d.event_id)
        assert [(d.event_id, d.source_agency) for d in letters] == [
            (f"{SCREENING_FROM}/{shared_id}", SCREENING_FROM),
            (f"{TASK_FROM}/{shared_id}", TASK_FROM),
        ]
        fixed: list[str] = []
        for letter in letters:
            await client.replay_dead_letter(letter.event_id, lambda e: fixed.append(e.event_type))
        assert sorted(fixed) == ["HealthScreeningOutcome", "TaskEvent"]
    assert sorted(calls) == sorted([TASK_FROM, SCREENING_FROM] * 2)


async def test_an_event_handled_under_an_older_sdks_key_is_not_handled_again(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    event_id = await fake_broker.deliver("oranga-tamariki")
    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        client._state.mark_handled(event_id, 0)  # as an SDK before source-keyed keys did
        seen: list[Received] = []
        await client.receive(seen.append)
        assert (seen, client.statistics().duplicates) == ([], 1)


async def test_a_retry_an_older_sdk_parked_is_retried_once_and_forgotten(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    event_id = await fake_broker.deliver("oranga-tamariki")
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(egress("oranga-tamariki"))
    seen: list[str] = []
    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        # Parked by an older SDK under the bare event id, its offset not yet committed.
        client._state.park(Parked.of(record, event_id))
        await client.receive(lambda e: seen.append(e.idempotency_key))
        assert seen == [f"{TASK_FROM}/{event_id}"]
        assert client.statistics().parked == 0
        assert client.statistics().duplicates == 1  # the redelivered record: not a second go
        await fake_broker.deliver("oranga-tamariki", event_id=event_id)
        await client.receive(lambda e: seen.append(e.idempotency_key))
    assert seen == [f"{TASK_FROM}/{event_id}"]


async def test_a_dead_letter_an_older_sdk_kept_stops_a_redelivery_and_can_be_replayed(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    event_id = await fake_broker.deliver("oranga-tamariki")
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(egress("oranga-tamariki"))
    async with make_client("oranga-tamariki", connection, clock, tmp_path) as client:
        client.dead_letters.put(
            DeadLetter(
                event_id=event_id,  # an older SDK named dead letters by the bare event id
                event_type="TaskEvent",
                source_agency=TASK_FROM,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                attempts=5,
                reason="RuntimeError: the handler raised (message not kept)",
                dead_lettered_at="2025-06-01T09:00:00.000Z",
            ),
            record.value,
        )
        seen: list[str] = []
        await client.receive(lambda e: seen.append(e.idempotency_key))
        assert (seen, client.statistics().duplicates) == ([], 1)
        assert await client.replay_dead_letters(lambda e: seen.append(e.idempotency_key)) == [
            (event_id, None)
        ]
        assert seen == [f"{TASK_FROM}/{event_id}"]
        assert client.dead_letters.list() == []
        assert client._state.was_handled(f"{TASK_FROM}/{event_id}")
