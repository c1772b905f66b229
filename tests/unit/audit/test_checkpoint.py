"""Checkpoints: signed with the broker's key, and refused when anything about them is off."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.audit import BadCheckpoint, parse_checkpoint, sign_checkpoint, verify_checkpoint
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
    with pytest.raises(BadCheckpoint, match="revoked"):
        verify_checkpoint(data, ring, signer="broker")


def test_unknown_key_and_truncation_are_refused(ring: KeyRing) -> None:
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(signed(make_ring(T0 + timedelta(days=3))), ring, signer="broker")
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(signed(ring)[:-1], ring, signer="broker")
    with pytest.raises(BadCheckpoint):
        verify_checkpoint(b"", ring, signer="broker")
