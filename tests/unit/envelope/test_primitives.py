"""HPKE's own errors never escape the envelope: a key it refuses is :class:`KeyUnusable`."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PublicKey

from broker.envelope import EnvelopeError, KeyUnusable, Kind, Sealer
from broker.envelope import _primitives as p
from tests.unit.envelope.conftest import T0, make_ring

#: The X25519 identity point: low order, so the shared secret would be all zeros.
LOW_ORDER = x25519.X25519PublicKey.from_public_bytes(b"\0" * 32)


def test_a_low_order_x25519_key_is_unusable() -> None:
    with pytest.raises(KeyUnusable):
        p.wrap(p.Suite.X25519, LOW_ORDER, os.urandom(32), b"info", p.PublicKeyOps())


def test_a_hybrid_key_with_a_low_order_x25519_half_is_unusable() -> None:
    kem = mlkem.MLKEM768PrivateKey.generate().public_key()
    hybrid = MLKEM768X25519PublicKey(kem, LOW_ORDER)
    with pytest.raises(KeyUnusable):
        p.wrap(p.Suite.MLKEM768_X25519, hybrid, os.urandom(32), b"info", p.PublicKeyOps())


def test_a_key_of_another_suite_is_unusable() -> None:
    key = x25519.X25519PrivateKey.generate().public_key()
    with pytest.raises(KeyUnusable):
        p.wrap(p.Suite.MLKEM768_X25519, key, os.urandom(32), b"info", p.PublicKeyOps())


def test_seal_to_a_refused_key_raises_an_envelope_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealer.seal raises only envelope errors, so the broker can hold the share instead of
    dying on it. (Whether the key ring admits such a key at all is the ring's business.)"""
    ring = make_ring()
    monkeypatch.setattr(ring, "public_key", lambda key_id: LOW_ORDER)
    with pytest.raises(EnvelopeError):
        Sealer("broker", ring).seal(
            b"payload",
            kind=Kind.EGRESS,
            topic="tiaki.egress.corrections",
            recipient="corrections",
            event_id="e-1",
            schema_fingerprint=b"\0" * 32,
            now=T0,
        )
