"""Intake admits authentic, well-formed events and rejects every other kind of record with its
own quarantine reason code."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.codec import encode, from_json, load_schemas
from broker.envelope import Algorithm, KeyRing, Kind, Opener, ReplayCache, Sealer
from broker.registry import load_registry
from broker.runtime import Accepted, Intake, Rejected

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = load_schemas(ROOT / "schemas")
REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
EPISODE = SCHEMAS.latest("FamilyHarmEpisodeReport")
TOPIC = "tiaki.ingress.police"


#: The case id of the example events, and so the key their records are sent with.
CASE_ID = "SYN-CASE-0001"


@dataclass(frozen=True)
class Record:
    topic: str
    value: bytes
    key: bytes | None = CASE_ID.encode()
    partition: int = 0


def make_ring() -> KeyRing:
    ring = KeyRing()
    for principal in ("broker", "police", "msd", "oranga-tamariki", "corrections"):
        for algorithm in Algorithm:
            ring.generate(principal, algorithm, NOW - timedelta(days=1), os.urandom)
    return ring


def episode(event_id: str, source: str = "police") -> dict[str, Any]:
    doc = json.loads((ROOT / "schemas" / "examples" / "FamilyHarmEpisodeReport.json").read_text())
    doc["header"] |= {"event_id": event_id, "source_agency": source}
    return from_json(EPISODE, doc)


class World:
    def __init__(self) -> None:
        self.ring = make_ring()
        self.police = Sealer("police", self.ring)
        self.intake = Intake(
            registry=REGISTRY,
            schemas=SCHEMAS,
            opener=Opener("broker", self.ring, replay=ReplayCache()),
            max_record_bytes=64 * 1024,
        )

    def seal(
        self,
        payload: bytes | None = None,
        *,
        event_id: str | None = None,
        fingerprint: bytes = EPISODE.fingerprint,
        topic: str = TOPIC,
        sealer: Sealer | None = None,
    ) -> bytes:
        event_id = event_id or str(uuid.uuid4())
        payload = payload if payload is not None else encode(EPISODE, episode(event_id))
        return (sealer or self.police).seal(
            payload,
            kind=Kind.INGRESS,
            topic=topic,
            recipient="broker",
            event_id=event_id,
            schema_fingerprint=fingerprint,
            now=NOW,
        )

    def admit(self, value: bytes, topic: str = TOPIC) -> Accepted | Rejected:
        return self.intake.admit(Record(topic, value), NOW)


@pytest.fixture
def world() -> World:
    return World()


def reason(outcome: Accepted | Rejected) -> str:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


def test_authentic_event_is_admitted(world: World) -> None:
    event_id = str(uuid.uuid4())
    outcome = world.admit(world.seal(event_id=event_id))
    assert isinstance(outcome, Accepted)
    assert (outcome.event_id, outcome.event_type, outcome.source.id) == (
        event_id,
        "FamilyHarmEpisodeReport",
        "police",
    )
    assert str(outcome.event["header"]["event_id"]) == event_id


def test_garbage(world: World) -> None:
    assert reason(world.admit(b"\x01not an envelope at all")) == "malformed_envelope"


def test_unknown_version(world: World) -> None:
    assert reason(world.admit(b"\x7f" + world.seal()[1:])) == "bad_version"


def test_unknown_agency(world: World) -> None:
    assert reason(world.admit(world.seal(), topic="tiaki.ingress.nobody")) == "unknown_agency"


def test_oversized(world: World) -> None:
    assert reason(world.admit(world.seal() + bytes(70 * 1024))) == "oversized"


def test_bit_flip_is_tampering(world: World) -> None:
    sealed = bytearray(world.seal())
    sealed[-5] ^= 0x01
    assert reason(world.admit(bytes(sealed))) == "tampered"


def test_moved_to_another_agencys_topic(world: World) -> None:
    assert reason(world.admit(world.seal(), topic="tiaki.ingress.msd")) in {
        "wrong_topic",
        "wrong_source",
    }


def test_replay(world: World) -> None:
    sealed = world.seal()
    assert isinstance(world.admit(sealed), Accepted)
    assert reason(world.admit(sealed)) == "replayed"


def test_unknown_schema(world: World) -> None:
    assert reason(world.admit(world.seal(fingerprint=bytes(32)))) == "unknown_schema"


def test_malformed_avro(world: World) -> None:
    assert reason(world.admit(world.seal(b"\xff\xfe not avro"))) == "malformed_avro"


def test_shared_type_is_not_an_event(world: World) -> None:
    address = SCHEMAS.latest("Address")
    assert reason(world.admit(world.seal(fingerprint=address.fingerprint))) == "not_an_event"


def test_header_naming_another_source(world: World) -> None:
    event_id = str(uuid.uuid4())
    payload = encode(EPISODE, episode(event_id, source="msd"))
    assert reason(world.admit(world.seal(payload, event_id=event_id))) == "header_mismatch"


def test_header_naming_another_event(world: World) -> None:
    payload = encode(EPISODE, episode(str(uuid.uuid4())))
    assert reason(world.admit(world.seal(payload))) == "header_mismatch"


def test_revoked_source_key(world: World) -> None:
    sealed = world.seal()
    for key in world.ring.keys("police"):
        world.ring.revoke(key.key_id, NOW)
    assert reason(world.admit(sealed)) == "key_revoked"


def test_each_bad_input_has_its_own_reason(world: World) -> None:
    codes = {
        reason(world.admit(b"\x01garbage")),
        reason(world.admit(world.seal(), topic="tiaki.ingress.nobody")),
        reason(world.admit(world.seal() + bytes(70 * 1024))),
        reason(world.admit(world.seal(fingerprint=bytes(32)))),
        reason(world.admit(world.seal(b"\xff\xfe"))),
        reason(world.admit(world.seal(fingerprint=SCHEMAS.latest("Address").fingerprint))),
        reason(world.admit(world.seal(encode(EPISODE, episode(str(uuid.uuid4())))))),
        reason(world.admit(b"\x7f" + world.seal()[1:])),
    }
    assert len(codes) == 8


def test_an_aborted_transaction_is_not_a_replay(world: World) -> None:
    first, second = world.seal(), world.seal()
    assert isinstance(world.admit(first), Accepted)
    world.intake.committed()
    assert isinstance(world.admit(second), Accepted)
    world.intake.aborted()  # the transaction with `second` never happened: read it again
    assert isinstance(world.admit(second), Accepted)
    assert reason(world.admit(first)) == "replayed"  # committed before: still a replay


def test_an_aborted_transaction_does_not_leave_its_events_stale() -> None:
    """In a full replay cache an admitted event older than every other entry evicts itself
    and raises the watermark to its own seal time. If its transaction aborts, the batch is
    processed again and must be admitted again, not refused as stale."""
    world = World()
    replay = ReplayCache(max_entries=3)
    world.intake = Intake(
        registry=REGISTRY,
        schemas=SCHEMAS,
        opener=Opener("broker", world.ring, replay=replay),
        max_record_bytes=64 * 1024,
    )

    def sealed(at: datetime) -> bytes:
        event_id = str(uuid.uuid4())
        return world.police.seal(
            encode(EPISODE, episode(event_id)),
            kind=Kind.INGRESS,
            topic=TOPIC,
            recipient="broker",
            event_id=event_id,
            schema_fingerprint=EPISODE.fingerprint,
            now=at,
        )

    for _ in range(3):
        assert isinstance(world.admit(sealed(NOW - timedelta(seconds=10))), Accepted)
    world.intake.committed()
    backlog = sealed(NOW - timedelta(hours=1))  # held at the agency through an outage
    assert isinstance(world.admit(backlog), Accepted)
    assert replay.watermark_ms >= 0  # it evicted itself, for space
    world.intake.aborted()
    assert replay.watermark_ms == -1
    assert isinstance(world.admit(backlog), Accepted)  # as the first attempt
    world.intake.committed()
    assert reason(world.admit(backlog)) in {"replayed", "stale"}  # committed: never again
