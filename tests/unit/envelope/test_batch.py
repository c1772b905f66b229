"""Batch signatures: one signature per batch proves each record's origin to an auditor."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import (
    BadSignature,
    BatchSigner,
    KeyRing,
    Kind,
    PublicKeyOps,
    Sealer,
    Tampered,
    verify_batch,
    verify_inclusion,
    verify_origin,
)

from .conftest import T0, make_ring

RING = make_ring(seed=21)


def _records(n: int) -> list[bytes]:
    sealer = Sealer("police", RING)
    return [
        sealer.seal(
            f"payload {i}".encode(),
            kind=Kind.INGRESS,
            topic="tiaki.ingress.police",
            recipient="broker",
            event_id=f"ev-{i}",
            schema_fingerprint=b"fp",
            now=T0,
        )
        for i in range(n)
    ]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40))
def test_every_record_of_a_batch_proves_inclusion(n: int) -> None:
    records = _records(n)
    signer = BatchSigner("police", RING)
    for record in records:
        signer.add(record)
    batch = signer.close(T0)
    assert batch is not None
    assert len(signer) == 0
    ops = PublicKeyOps()
    statement = verify_batch(batch.statement.encoded, RING, ops=ops)
    assert (statement.count, ops.verifies, signer.ops.signs) == (n, 1, 1)
    for i, record in enumerate(records):
        verify_inclusion(record, batch.proof(i), statement)
        with pytest.raises(Tampered):
            verify_inclusion(record + b"\x00", batch.proof(i), statement)
        if n > 1:
            with pytest.raises(Tampered):
                verify_inclusion(record, batch.proof((i + 1) % n), statement)


def test_a_forged_statement_does_not_verify() -> None:
    signer = BatchSigner("police", RING)
    signer.add(b"r")
    batch = signer.close(T0)
    assert batch is not None
    encoded = bytearray(batch.statement.encoded)
    encoded[-70] ^= 1  # inside the root
    with pytest.raises(BadSignature):
        verify_batch(bytes(encoded), RING)
    statement = verify_batch(batch.statement.encoded, RING)
    with pytest.raises(Tampered):
        verify_inclusion(b"r", replace(batch.proof(0), size=2), statement)


def test_empty_batch_signs_nothing() -> None:
    assert BatchSigner("police", RING).close(T0) is None


def test_origin_of_a_data_key_is_checkable_without_decrypting() -> None:
    record = _records(1)[0]
    origin = verify_origin(record, RING)
    assert (origin.sender, origin.recipient, origin.kind) == ("police", "broker", Kind.INGRESS)
    other = KeyRing()  # an auditor who does not know police's key
    with pytest.raises(Exception, match="unknown key"):
        verify_origin(record, other)
