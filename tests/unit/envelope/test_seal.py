"""Sealing and opening: round trips, tampering, binding, replay, key states, rotation."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import (
    BadVersion,
    EnvelopeConfig,
    EnvelopeError,
    KeyExpired,
    KeyRevoked,
    KeyRing,
    Kind,
    Opener,
    Oversized,
    Purpose,
    ReplayCache,
    Replayed,
    RotationPolicy,
    Sealer,
    Stale,
    Suite,
    Tampered,
    UnknownKey,
    WrongKind,
    WrongRecipient,
    WrongSource,
    WrongTopic,
    verify_origin,
)
from broker.envelope._primitives import Algorithm

from .conftest import T0, FakeClock, make_ring, seeded

FP = bytes.fromhex("c0ffee0123456789")


def ingress(sealer: Sealer, payload: bytes, event_id: str = "ev-1", **kw: object) -> bytes:
    args: dict[str, object] = {
        "kind": Kind.INGRESS,
        "topic": f"tiaki.ingress.{sealer.principal}",
        "recipient": "broker",
        "event_id": event_id,
        "schema_fingerprint": FP,
        "now": T0,
    }
    args.update(kw)
    return sealer.seal(payload, **args)  # type: ignore[arg-type]


def egress(
    sealer: Sealer, payload: bytes, recipient: str, event_id: str = "ev-1", **kw: object
) -> bytes:
    args: dict[str, object] = {
        "kind": Kind.EGRESS,
        "topic": f"tiaki.egress.{recipient}",
        "recipient": recipient,
        "event_id": event_id,
        "schema_fingerprint": FP,
        "now": T0,
    }
    args.update(kw)
    return sealer.seal(payload, **args)  # type: ignore[arg-type]


@dataclass
class World:
    ring: KeyRing
    record: bytes
    topic: str


@functools.cache
def world(suite: Suite = Suite.X25519) -> World:
    ring = make_ring(seed=11)
    sealer = Sealer("police", ring, config=EnvelopeConfig(suite=suite), random=seeded(3))
    return World(ring, ingress(sealer, b"a victim's address, for example"), "tiaki.ingress.police")


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seals=st.lists(
        st.tuples(
            st.sampled_from(["ev-1", "ev-2"]),
            st.sampled_from([FP, b"\x01"]),
            st.sampled_from(["corrections", "health-nz"]),
            st.integers(min_value=0, max_value=2),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_run_of_seals_names_each_record_and_time_of_its_own(
    seals: list[tuple[str, bytes, str, int]],
) -> None:
    """The sealer reuses the header fields and time of the seal before (one event, several
    recipients): any order of events, fingerprints and times still opens as sealed."""
    w = world()
    sealer = Sealer("broker", w.ring)
    times = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1)]  # equal, not the same
    for event_id, fingerprint, recipient, at in seals:
        record = egress(
            sealer, b"body", recipient, event_id, schema_fingerprint=fingerprint, now=times[at]
        )
        opened = Opener(recipient, w.ring).open(
            record, topic=f"tiaki.egress.{recipient}", now=times[at], kind=Kind.EGRESS
        )
        assert (opened.event_id, opened.schema_fingerprint) == (event_id, fingerprint)
        assert opened.sealed_at == times[at]


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=4096),
    event_id=st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 255),
    fingerprint=st.binary(min_size=1, max_size=32),
    suite=st.sampled_from(list(Suite)),
)
def test_random_payloads_round_trip(
    payload: bytes, event_id: str, fingerprint: bytes, suite: Suite
) -> None:
    w = world(suite)
    sealer = Sealer("police", w.ring, config=EnvelopeConfig(suite=suite))
    record = ingress(sealer, payload, event_id, schema_fingerprint=fingerprint)
    opened = Opener("broker", w.ring).open(
        record, topic="tiaki.ingress.police", now=T0, kind=Kind.INGRESS, source="police"
    )
    assert opened.payload == payload
    assert (opened.event_id, opened.schema_fingerprint) == (event_id, fingerprint)
    assert (opened.source, opened.recipient, opened.kind) == ("police", "broker", Kind.INGRESS)
    assert opened.sealed_at == T0


def test_egress_round_trip_to_three_recipients(ring: KeyRing) -> None:
    broker = Sealer("broker", ring)
    for name in ("police", "corrections", "health-nz"):
        record = egress(broker, b"minimised", name)
        opened = Opener(name, ring).open(
            record, topic=f"tiaki.egress.{name}", now=T0, kind=Kind.EGRESS, source="broker"
        )
        assert opened.payload == b"minimised"


def test_hybrid_suite_round_trips_and_is_larger(ring: KeyRing) -> None:
    classic = ingress(Sealer("police", ring), b"x" * 100)
    hybrid = ingress(
        Sealer("police", ring, config=EnvelopeConfig(suite=Suite.MLKEM768_X25519)), b"x" * 100
    )
    assert len(hybrid) > len(classic) + 1000  # the ML-KEM ciphertext rides in the announcement
    opener = Opener("broker", ring)
    assert opener.open(hybrid, topic="tiaki.ingress.police", now=T0).payload == b"x" * 100
    assert verify_origin(hybrid, ring).suite is Suite.MLKEM768_X25519


# --- tampering ---------------------------------------------------------------------------------


def _flip(record: bytes, bit: int) -> bytes:
    data = bytearray(record)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), suite=st.sampled_from(list(Suite)), primed=st.booleans())
def test_flipping_any_single_bit_is_rejected(
    data: st.DataObject, suite: Suite, primed: bool
) -> None:
    w = world(suite)
    bit = data.draw(st.integers(0, len(w.record) * 8 - 1), label="bit")
    opener = Opener("broker", w.ring)
    if primed:  # the data key is already cached: the path most records take
        opener.open(w.record, topic=w.topic, now=T0)
    with pytest.raises(EnvelopeError):
        opener.open(_flip(w.record, bit), topic=w.topic, now=T0)


def test_every_bit_of_a_record_is_protected() -> None:
    """Exhaustive over all bit positions, against a primed opener (cheap per record)."""
    w = world()
    opener = Opener("broker", w.ring)
    opener.open(w.record, topic=w.topic, now=T0)
    for bit in range(len(w.record) * 8):
        with pytest.raises(EnvelopeError):
            opener.open(_flip(w.record, bit), topic=w.topic, now=T0)


def test_security_messages_say_little() -> None:
    w = world()
    with pytest.raises(Tampered) as info:
        Opener("broker", w.ring).open(_flip(w.record, len(w.record) * 8 - 1), topic=w.topic, now=T0)
    assert str(info.value) == "envelope failed authentication"


def test_unknown_version_and_truncation(ring: KeyRing) -> None:
    record = ingress(Sealer("police", ring), b"p")
    opener = Opener("broker", ring)
    with pytest.raises(BadVersion):
        opener.open(b"\x02" + record[1:], topic="tiaki.ingress.police", now=T0)
    with pytest.raises(BadVersion):
        opener.open(b"", topic="tiaki.ingress.police", now=T0)
    for cut in (1, 10, 60, len(record) - 1):
        with pytest.raises(EnvelopeError):
            opener.open(record[:cut], topic="tiaki.ingress.police", now=T0)


# --- binding ---------------------------------------------------------------------------------


def test_a_record_sealed_for_b_cannot_be_opened_by_c(ring: KeyRing) -> None:
    record = egress(Sealer("broker", ring), b"for police only", "police")
    with pytest.raises(WrongRecipient):
        Opener("corrections", ring).open(record, topic="tiaki.egress.police", now=T0)
    # ... nor by relabelling it: C cannot unwrap the data key, and the AAD names B.
    forged = record.replace(b"\x06police", b"\x06poliCE", 1)
    with pytest.raises(EnvelopeError):
        Opener("poliCE", ring).open(forged, topic="tiaki.egress.police", now=T0)


def test_a_record_moved_to_another_topic_is_rejected(ring: KeyRing) -> None:
    record = ingress(Sealer("police", ring), b"p")
    opener = Opener("broker", ring)
    with pytest.raises(WrongTopic):
        opener.open(record, topic="tiaki.ingress.corrections", now=T0)
    # Rewriting the topic in the header to match does not help: the header is the AAD.
    moved = record.replace(b"tiaki.ingress.police", b"tiaki.ingress.pOlice", 1)
    with pytest.raises(Tampered):
        opener.open(moved, topic="tiaki.ingress.pOlice", now=T0)


def test_source_and_kind_must_match_the_channel(ring: KeyRing) -> None:
    record = ingress(Sealer("police", ring), b"p")
    opener = Opener("broker", ring)
    with pytest.raises(WrongSource):
        opener.open(record, topic="tiaki.ingress.police", now=T0, source="corrections")
    with pytest.raises(WrongKind):
        opener.open(record, topic="tiaki.ingress.police", now=T0, kind=Kind.EGRESS)
    with pytest.raises(WrongKind):  # an agency cannot seal ingress to anyone but the broker
        ingress(Sealer("police", ring), b"p", recipient="corrections")
    with pytest.raises(WrongKind):  # and only the broker seals egress
        egress(Sealer("police", ring), b"p", "corrections")


def test_another_senders_announcement_cannot_be_swapped_in(ring: KeyRing) -> None:
    police = ingress(Sealer("police", ring), b"p")
    corrections = ingress(Sealer("corrections", ring), b"c", topic="tiaki.ingress.police")
    opener = Opener("broker", ring)
    with pytest.raises(EnvelopeError):
        # corrections' announcement is validly signed, but by someone else, for another key
        opener.open(
            corrections.replace(b"\x0bcorrections", b"\x06police", 1),
            topic="tiaki.ingress.police",
            now=T0,
        )
    assert opener.open(police, topic="tiaki.ingress.police", now=T0).payload == b"p"


# --- replay ----------------------------------------------------------------------------------


def test_a_replayed_event_id_is_detected(ring: KeyRing, clock: FakeClock) -> None:
    sealer = Sealer("police", ring)
    opener = Opener("broker", ring, replay=ReplayCache(window=timedelta(hours=1)))
    first = ingress(sealer, b"p", "ev-9", now=clock.now)
    opener.open(first, topic="tiaki.ingress.police", now=clock.now)
    with pytest.raises(Replayed):
        opener.open(first, topic="tiaki.ingress.police", now=clock.advance(seconds=5))
    resealed = ingress(sealer, b"p", "ev-9", now=clock.now)  # same event id, fresh record
    with pytest.raises(Replayed):
        opener.open(resealed, topic="tiaki.ingress.police", now=clock.now)
    with pytest.raises(Stale):  # after the window the cache cannot vouch for it
        opener.open(first, topic="tiaki.ingress.police", now=clock.advance(hours=2))


def test_forged_records_do_not_poison_the_replay_cache(ring: KeyRing) -> None:
    replay = ReplayCache()
    opener = Opener("broker", ring, replay=replay)
    record = ingress(Sealer("police", ring), b"p", "ev-1")
    with pytest.raises(Tampered):
        opener.open(_flip(record, len(record) * 8 - 3), topic="tiaki.ingress.police", now=T0)
    assert len(replay) == 0
    opener.open(record, topic="tiaki.ingress.police", now=T0)


# --- key states ---------------------------------------------------------------------------


def _enc_key(ring: KeyRing, who: str) -> str:
    return ring.current(who, Purpose.ENCRYPTION, Algorithm.X25519, T0).key_id


def _sig_key(ring: KeyRing, who: str) -> str:
    return ring.current(who, Purpose.SIGNING, Algorithm.ED25519, T0).key_id


def test_a_revoked_recipient_key_is_refused_for_sealing_and_opening(
    ring: KeyRing, clock: FakeClock
) -> None:
    sealer = Sealer("broker", ring)
    opener = Opener("police", ring)
    record = egress(sealer, b"p", "police", now=clock.now)
    opener.open(record, topic="tiaki.egress.police", now=clock.now)  # cached now
    ring.revoke(_enc_key(ring, "police"), clock.advance(seconds=1), "compromised")
    with pytest.raises(KeyRevoked):
        egress(sealer, b"p", "police", now=clock.now)
    with pytest.raises(KeyRevoked):  # even though its data key was cached
        opener.open(record, topic="tiaki.egress.police", now=clock.now)
    with pytest.raises(KeyRevoked):
        Opener("police", ring).open(record, topic="tiaki.egress.police", now=clock.now)


def test_a_revoked_signing_key_is_refused(ring: KeyRing, clock: FakeClock) -> None:
    sealer = Sealer("police", ring)
    record = ingress(sealer, b"p", now=clock.now)
    opener = Opener("broker", ring)
    opener.open(record, topic="tiaki.ingress.police", now=clock.now)
    ring.revoke(_sig_key(ring, "police"), clock.advance(seconds=1))
    with pytest.raises(KeyRevoked):
        ingress(sealer, b"p", now=clock.now)
    with pytest.raises(KeyRevoked):
        opener.open(record, topic="tiaki.ingress.police", now=clock.now)
    with pytest.raises(KeyRevoked):
        verify_origin(record, ring)


def test_an_expired_key_is_refused(clock: FakeClock) -> None:
    ring = make_ring()
    record = egress(Sealer("broker", ring), b"p", "police", now=clock.now)
    sealer = Sealer("broker", ring)
    egress(sealer, b"p", "police", now=clock.now)  # a data key is cached by this sealer
    later = clock.advance(days=366)  # keys are valid for 365 days
    with pytest.raises(KeyExpired):
        egress(sealer, b"p", "police", now=later)
    with pytest.raises(KeyExpired):
        Opener("police", ring).open(record, topic="tiaki.egress.police", now=later)


def test_rotated_keys_retire_and_still_open_in_flight_records(
    ring: KeyRing, clock: FakeClock
) -> None:
    sealer = Sealer("broker", ring)
    opener = Opener("police", ring)
    before = egress(sealer, b"old", "police", now=clock.now)
    old_key = _enc_key(ring, "police")
    ring.rotate("police", clock.advance(minutes=1), seeded(99))
    after = egress(sealer, b"new", "police", event_id="ev-2", now=clock.now)
    assert sealer.statistics().rotations["key"] == 1
    assert opener.open(before, topic="tiaki.egress.police", now=clock.now).payload == b"old"
    assert opener.open(after, topic="tiaki.egress.police", now=clock.now).payload == b"new"
    assert ring.get(old_key).state.value == "retiring"


def test_unannounced_data_key_is_unknown_until_learned(ring: KeyRing) -> None:
    sealer = Sealer("police", ring, config=EnvelopeConfig(inline_announcement=False))
    record = ingress(sealer, b"p")
    opener = Opener("broker", ring)
    with pytest.raises(UnknownKey):
        opener.open(record, topic="tiaki.ingress.police", now=T0)
    opener.learn(sealer.announcement("broker", Kind.INGRESS, T0), T0)
    assert opener.open(record, topic="tiaki.ingress.police", now=T0).payload == b"p"


def test_oversized_payload_is_refused(ring: KeyRing) -> None:
    sealer = Sealer("police", ring, config=EnvelopeConfig(max_payload=100))
    with pytest.raises(Oversized):
        ingress(sealer, b"x" * 101)
    big = ingress(Sealer("police", ring), b"x" * 5000)
    with pytest.raises(Oversized):
        Opener("broker", ring, max_payload=100).open(big, topic="tiaki.ingress.police", now=T0)


# --- rotation and cost ----------------------------------------------------------------------


def test_rotation_by_count(ring: KeyRing) -> None:
    sealer = Sealer("police", ring, config=EnvelopeConfig(rotation=RotationPolicy(max_records=10)))
    opener = Opener("broker", ring, ops=sealer.ops)
    for i in range(25):
        record = ingress(sealer, b"p", f"ev-{i}")
        opener.open(record, topic="tiaki.ingress.police", now=T0)
    stats = sealer.statistics()
    assert stats.data_keys == 3
    assert stats.rotations["count"] == 2
    # 3 data keys: 3 wraps + 3 signs at the sender, 3 verifies + 3 unwraps at the receiver.
    assert sealer.ops.snapshot() == {
        "wraps": 3,
        "unwraps": 3,
        "signs": 3,
        "verifies": 3,
        "total": 12,
    }


def test_rotation_by_age(ring: KeyRing, clock: FakeClock) -> None:
    sealer = Sealer(
        "police",
        ring,
        config=EnvelopeConfig(rotation=RotationPolicy(max_age=timedelta(minutes=10))),
    )
    opener = Opener("broker", ring)
    first = ingress(sealer, b"p", "ev-1", now=clock.now)
    ingress(sealer, b"p", "ev-2", now=clock.advance(minutes=9, seconds=59))
    assert sealer.statistics().data_keys == 1
    late = ingress(sealer, b"p", "ev-3", now=clock.advance(seconds=1))
    assert sealer.statistics().rotations["age"] == 1
    assert first[40:] != late[40:]
    opener.open(late, topic="tiaki.ingress.police", now=clock.now)


def test_a_data_key_used_past_its_announced_age_is_refused(ring: KeyRing, clock: FakeClock) -> None:
    """A sender whose clock ran on cannot keep a data key past what it announced."""
    sealer = Sealer(
        "police",
        ring,
        config=EnvelopeConfig(rotation=RotationPolicy(max_age=timedelta(minutes=10))),
    )
    record = ingress(sealer, b"p", "ev-1", now=clock.now)
    key = sealer._keys[("broker", Kind.INGRESS)]
    key.not_after_ms += 3_600_000  # simulate a sender that ignores its own rotation rule
    stale_key_record = ingress(sealer, b"p", "ev-2", now=clock.advance(minutes=30))
    opener = Opener("broker", ring)
    opener.open(record, topic="tiaki.ingress.police", now=clock.now)
    with pytest.raises(KeyExpired):
        opener.open(stale_key_record, topic="tiaki.ingress.police", now=clock.now)


def test_default_rotation_costs_at_most_ten_public_key_operations_per_10000_records(
    ring: KeyRing,
) -> None:
    sealer = Sealer("police", ring)
    opener = Opener("broker", ring, ops=sealer.ops)
    for i in range(10_000):
        opener.open(ingress(sealer, b"x" * 64, f"ev-{i}"), topic="tiaki.ingress.police", now=T0)
    assert sealer.ops.total == 4
    assert opener.statistics().cache_hits == 9_999
