"""Intake refuses a record that is not keyed, or not partitioned, as its case's events are
(``key_mismatch``): the worker that reads it does not own the case, and would decide it on a
stale copy of the case's state and overwrite the owner's newer state."""

from __future__ import annotations

import uuid

import pytest

from broker.codec import encode
from broker.envelope import Opener, ReplayCache
from broker.runtime import Accepted, Intake, Rejected
from broker.transport import partition_for
from tests.unit.runtime.test_intake import (
    CASE_ID,
    EPISODE,
    NOW,
    REGISTRY,
    SCHEMAS,
    TOPIC,
    Record,
    World,
    episode,
)

KEY = CASE_ID.encode()
COUNT = 6
HOME = partition_for(KEY, COUNT)
ELSEWHERE = (HOME + 1) % COUNT


def with_counts(world: World, counts: dict[str, int | None]) -> World:
    world.intake = Intake(
        registry=REGISTRY,
        schemas=SCHEMAS,
        opener=Opener("broker", world.ring, replay=ReplayCache()),
        partitions=counts.get,
    )
    return world


def admit(world: World, key: bytes | None, partition: int = HOME) -> Accepted | Rejected:
    return world.intake.admit(Record(TOPIC, world.seal(), key, partition), NOW)


@pytest.fixture
def counted() -> World:
    return with_counts(World(), {TOPIC: COUNT})


@pytest.mark.parametrize(
    "key",
    [b"SYN-CASE-0002", None, b"", b"SYN-CASE-0001 ", b"syn-case-0001", CASE_ID.encode("utf-16")],
)
def test_a_record_keyed_other_than_its_case_id_is_refused(key: bytes | None) -> None:
    outcome = admit(World(), key)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == "key_mismatch"
    assert outcome.source == "police"
    assert outcome.event_type == "FamilyHarmEpisodeReport"


def test_a_record_on_another_partition_than_its_keys_is_refused(counted: World) -> None:
    outcome = admit(counted, KEY, ELSEWHERE)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == "key_mismatch"


def test_a_record_keyed_and_partitioned_by_its_case_id_is_admitted(counted: World) -> None:
    assert isinstance(admit(counted, KEY, HOME), Accepted)


def test_the_key_is_checked_against_each_events_own_case_id(counted: World) -> None:
    event_id = str(uuid.uuid4())
    doc = episode(event_id)
    doc["header"]["case_id"] = "SYN-CASE-0777"
    key = b"SYN-CASE-0777"
    sealed = counted.seal(encode(EPISODE, doc), event_id=event_id)
    record = Record(TOPIC, sealed, key, partition_for(key, COUNT))
    assert isinstance(counted.intake.admit(record, NOW), Accepted)


def test_with_the_partition_count_unknown_only_the_key_is_checked() -> None:
    unknown = with_counts(World(), {TOPIC: None})
    assert isinstance(admit(unknown, KEY, ELSEWHERE), Accepted)
    outcome = admit(unknown, b"SYN-CASE-0002", ELSEWHERE)
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "key_mismatch"


def test_without_partition_counts_only_the_key_is_checked() -> None:
    world = World()
    assert isinstance(admit(world, KEY, ELSEWHERE), Accepted)
    assert isinstance(admit(world, KEY, 999), Accepted)


def test_the_detail_names_neither_key_nor_case_nor_partition(counted: World) -> None:
    details = [admit(counted, b"SYN-OTHER-CASE"), admit(counted, KEY, ELSEWHERE)]
    for outcome in details:
        assert isinstance(outcome, Rejected)
        assert "SYN" not in outcome.detail
        assert str(ELSEWHERE) not in outcome.detail
        assert str(COUNT) not in outcome.detail
