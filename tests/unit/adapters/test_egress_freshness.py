"""An egress record read from the topic more than 21 days after the broker sealed it is
refused (``cannot open: stale``), so an old record written to the topic again (by a Kafka
administrator, or a restore from backup) is never handed to the case system as new, even after
its idempotency key was forgotten (30 days). Retries and dead letters the adapter holds itself
are not refused for their age."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adapters import AdapterClient, InMemoryConnection, Received
from adapters._client import MAX_EGRESS_AGE
from broker.platform import egress
from broker.platform._plan import RETENTION_DAYS
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import RING, SCHEMAS, FakeBroker, FakeClock, make_client

AGENCY = "oranga-tamariki"


async def _write_again(cluster: InMemoryCluster) -> None:
    """Every record on the agency's egress topic written to it once more, byte for byte."""
    async with cluster.reader() as reader:
        records = await reader.read_all(egress(AGENCY))
    async with cluster.publisher() as publisher:
        for record in records:
            await publisher.publish(record.topic, record.key, record.value)


def test_the_bound_lies_between_the_topics_retention_and_the_kept_keys() -> None:
    keep_sent = dt.timedelta(days=30)  # AdapterClient's default
    assert dt.timedelta(days=RETENTION_DAYS["egress"]) < MAX_EGRESS_AGE < keep_sent


async def test_a_record_sealed_more_than_21_days_ago_is_dead_lettered_as_stale(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    await fake_broker.deliver(AGENCY, case_id="SYN-CASE-OLD")
    clock.advance(minutes=2)
    fresh_enough = await fake_broker.deliver(AGENCY, case_id="SYN-CASE-OLD")
    clock.advance(days=21, minutes=-1)  # the first is 21 days and a minute old, this 21 less one
    seen: list[Received] = []
    async with make_client(AGENCY, connection, clock, tmp_path) as client:
        await client.receive(seen.append)
        letters = client.dead_letters.list()
    assert [e.event_id for e in seen] == [fresh_enough]
    (letter,) = letters
    assert letter.reason == "cannot open: stale"
    # Named by its position (the first record of the case's partition): nothing in a record
    # that did not open is trusted.
    assert letter.event_type == "unknown"
    assert letter.event_id.endswith("-0")


async def test_an_old_record_written_again_after_its_key_was_forgotten_is_not_handed_over(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    event_id = await fake_broker.deliver(AGENCY)
    seen: list[Received] = []
    async with make_client(AGENCY, connection, clock, tmp_path) as client:
        await client.receive(seen.append)
        assert [e.event_id for e in seen] == [event_id]
        clock.advance(days=31)  # past keep_sent: the handled key is pruned
        await client.receive(seen.append)
        await _write_again(cluster)
        await client.receive(seen.append)
        (letter,) = client.dead_letters.list()
    assert [e.event_id for e in seen] == [event_id]
    assert letter.reason == "cannot open: stale"


async def test_a_record_written_again_within_the_bound_is_a_duplicate(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await fake_broker.deliver(AGENCY)
    seen: list[Received] = []
    async with make_client(AGENCY, connection, clock, tmp_path) as client:
        await client.receive(seen.append)
        clock.advance(days=20)
        await _write_again(cluster)
        await client.receive(seen.append)
        assert client.statistics().duplicates == 1
        assert client.dead_letters.list() == []
    assert len(seen) == 1


async def test_a_dead_letter_older_than_the_bound_can_still_be_replayed(
    connection: InMemoryConnection, fake_broker: FakeBroker, clock: FakeClock, tmp_path: Path
) -> None:
    """The bound is on what arrives from the topic: a dead letter is the adapter's own, and a
    person may fix its cause weeks later."""
    event_id = await fake_broker.deliver(AGENCY)

    def failing(event: Received) -> None:
        raise RuntimeError("synthetic: the case system is down")

    async with make_client(AGENCY, connection, clock, tmp_path, max_attempts=1) as client:
        await client.receive(failing)
        (letter,) = client.dead_letters.list()
        clock.advance(days=40)
        applied: list[str] = []
        assert await client.replay_dead_letters(lambda e: applied.append(e.event_id)) == [
            (letter.event_id, None)
        ]
    assert applied == [event_id]


def test_keys_must_be_kept_longer_than_the_bound(
    connection: InMemoryConnection, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="keep_sent must be longer than 21 days"):
        AdapterClient(AGENCY, connection, RING, SCHEMAS, tmp_path, keep_sent=MAX_EGRESS_AGE)
