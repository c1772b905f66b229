"""Checkpoints: signed with the broker's key, and refused when anything about them is off."""

from __future__ import annotations

import contextlib
import struct
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.audit import (
    BadCheckpoint,
    RevokedKey,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from broker.audit._checkpoint import CHECKPOINT_CONTEXT
from broker.envelope import KeyRing

from .conftest import T0, make_ring


def signed(ring: KeyRing, signer: str = "broker") -> bytes:
    return sign_checkpoint(
        ring, signer, chain="tiaki-broker-0", size=5, root=b"r" * 32, head=b"h" * 32, now=T0
    )


def test_round_trip(ring: KeyRing) -> None:
    checkpoint = verify_checkpoint(signed(ring), ring, signer="broker")
    assert (checkpoint.chain, checkpoint.size, checkpoint.root) == ("tiaki-broker-0", 5, b"r" * 32)
    assert checkpoint.signed_at == T0


@pytest.mark.parametrize("at", [0, 5, 20, 40, 60, -1])
def test_any_changed_byte_is_refused(ring: KeyRing, at: int) -> None:
    data = bytearray(signed(ring))
    data[at] ^= 0x01
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(bytes(data), ring, signer="broker")


def test_another_principals_signature_is_refused(ring: KeyRing) -> None:
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(signed(ring, "police"), ring, signer="broker")


def test_a_revoked_key_is_refused() -> None:
    ring = make_ring()
    data = signed(ring)
    key_id = parse_checkpoint(data)[0].key_id
    ring.revoke(key_id, T0 + timedelta(hours=1), "compromised")
    with pytest.raises(RevokedKey, match="revoked"):
        verify_checkpoint(data, ring, signer="broker")


def test_an_altered_checkpoint_under_a_revoked_key_is_still_a_bad_signature() -> None:
    """Revocation distrusts what a key signed; it does not excuse bytes changed since."""
    ring = make_ring()
    data = bytearray(signed(ring))
    ring.revoke(parse_checkpoint(bytes(data))[0].key_id, T0 + timedelta(hours=1), "compromised")
    data[-1] ^= 0x01
    with pytest.raises(BadCheckpoint, match="signature") as caught:
        verify_checkpoint(bytes(data), ring, signer="broker")
    assert not isinstance(caught.value, RevokedKey)


def test_a_signed_time_past_year_9999_is_malformed_not_a_crash() -> None:
    """A u64 of milliseconds can name no datetime; signed or not, it is a malformed checkpoint."""
    ring = make_ring()
    checkpoint, body, _ = parse_checkpoint(signed(ring))
    body = body[:-8] + struct.pack(">Q", 2**64 - 1)
    private = ring.private_key(checkpoint.key_id)
    data = body + private.sign(CHECKPOINT_CONTEXT + body)
    with pytest.raises(BadCheckpoint, match="malformed"):
        verify_checkpoint(data, ring, signer="broker")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(1, 255)), max_size=4),
    tail=st.binary(max_size=80),
)
def test_any_mangled_checkpoint_is_only_ever_a_bad_checkpoint(
    cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    data = bytearray(signed(_FUZZ_RING)[:cut] + tail)
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    with contextlib.suppress(BadCheckpoint):  # anything else escaping fails the test
        verify_checkpoint(bytes(data), _FUZZ_RING, signer="broker")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_only_ever_a_bad_checkpoint(data: bytes) -> None:
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(data, _FUZZ_RING, signer="broker")


_FUZZ_RING = make_ring()


def test_unknown_key_and_truncation_are_refused(ring: KeyRing) -> None:
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(signed(make_ring(T0 + timedelta(days=3))), ring, signer="broker")
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(signed(ring)[:-1], ring, signer="broker")
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(b"", ring, signer="broker")
