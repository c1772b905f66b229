"""Whatever bytes an auditor is handed, verification raises envelope errors and nothing else.

A time field on the wire is eight bytes of milliseconds, room for times no ``datetime`` can
hold (past the year 9999): ``verify_batch`` and ``verify_origin`` once turned one into a time
before checking the signature and raised ``ValueError``. And a statement of another version
is :class:`BadVersion`, as a record of another version is.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import (
    BadVersion,
    BatchSigner,
    EnvelopeError,
    Kind,
    Malformed,
    Opener,
    ReplayCache,
    Sealer,
    UnknownKey,
    verify_batch,
    verify_origin,
)
from broker.envelope import _wire as w

from .conftest import T0, make_ring

RING = make_ring(seed=31)
_U64 = struct.Struct(">Q")
#: The last millisecond a ``datetime`` holds, 9999-12-31T23:59:59.999Z.
MAX_MS = (datetime.max.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    milliseconds=1
)


def _statement() -> bytes:
    signer = BatchSigner("police", RING)
    signer.add(b"a sealed record")
    batch = signer.close(T0)
    assert batch is not None
    return batch.statement.encoded


def _record(now: datetime = T0) -> bytes:
    return Sealer("police", RING).seal(
        b"payload",
        kind=Kind.INGRESS,
        topic="tiaki.ingress.police",
        recipient="broker",
        event_id="ev-1",
        schema_fingerprint=b"fp",
        now=now,
    )


STATEMENT = _statement()
#: Where the statement's ``created_at`` is: after the version and two ``str8`` fields.
STATEMENT_TIME = 1 + 1 + STATEMENT[1] + 1 + STATEMENT[2 + STATEMENT[1]]
RECORD = _record()
#: Where the inline announcement's ``created_at`` is: after the header, the announcement's
#: two-byte length, and its version, kind, suite and data key id.
RECORD_TIME = len(w.parse_record(RECORD).aad) + 2 + 3 + w.DATA_KEY_ID_BYTES


def _with_time(data: bytes, at: int, ms: int) -> bytes:
    return data[:at] + _U64.pack(ms) + data[at + _U64.size :]


def _damaged(original: bytes, time_at: int) -> st.SearchStrategy[bytes]:
    """``original`` with bytes overwritten, cut, inserted, its version byte or its time
    field replaced, or nothing like it at all."""
    size = len(original)

    def overwrite(changes: list[tuple[int, int]]) -> bytes:
        data = bytearray(original)
        for index, value in changes:
            data[index] = value
        return bytes(data)

    return st.one_of(
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1).map(
            overwrite
        ),
        st.integers(0, size - 1).map(lambda cut: original[:cut]),
        st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=40)).map(
            lambda at: original[: at[0]] + at[1] + original[at[0] :]
        ),
        st.integers(0, 255).map(lambda version: bytes((version,)) + original[1:]),
        st.integers(0, 2**64 - 1).map(lambda ms: _with_time(original, time_at, ms)),
        st.binary(max_size=2 * size),
    )


def _only_envelope_errors(check: Callable[[], object]) -> None:
    with contextlib.suppress(EnvelopeError):  # anything else propagates and fails the test
        check()


@settings(max_examples=300, deadline=None)
@given(_damaged(STATEMENT, STATEMENT_TIME))
def test_verify_batch_raises_only_envelope_errors(statement: bytes) -> None:
    _only_envelope_errors(lambda: verify_batch(statement, RING))


@settings(max_examples=300, deadline=None)
@given(_damaged(RECORD, RECORD_TIME))
def test_verify_origin_raises_only_envelope_errors(record: bytes) -> None:
    _only_envelope_errors(lambda: verify_origin(record, RING))


@pytest.mark.parametrize("ms", [MAX_MS + 1, 2**58, 2**63, 2**64 - 1])
def test_a_time_no_datetime_holds_is_malformed(ms: int) -> None:
    with pytest.raises(Malformed):
        verify_batch(_with_time(STATEMENT, STATEMENT_TIME, ms), RING)
    with pytest.raises(Malformed):
        verify_origin(_with_time(RECORD, RECORD_TIME, ms), RING)


def test_the_last_time_a_datetime_holds_is_only_outside_the_key_s_validity() -> None:
    with pytest.raises(UnknownKey, match="was not valid when it signed"):
        verify_batch(_with_time(STATEMENT, STATEMENT_TIME, MAX_MS), RING)
    with pytest.raises(UnknownKey, match="was not valid when it signed"):
        verify_origin(_with_time(RECORD, RECORD_TIME, MAX_MS), RING)


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_a_statement_of_another_version_is_bad_version(version: int) -> None:
    with pytest.raises(BadVersion):
        verify_batch(bytes((version,)) + STATEMENT[1:], RING)
    with pytest.raises(BadVersion):
        verify_origin(bytes((version,)) + RECORD[1:], RING)


def test_an_empty_statement_is_bad_version_as_an_empty_record_is() -> None:
    with pytest.raises(BadVersion):
        verify_batch(b"", RING)
    with pytest.raises(BadVersion):
        verify_origin(b"", RING)


def test_the_statement_s_time_is_read_exactly() -> None:
    statement = verify_batch(STATEMENT, RING)
    assert statement.created_at == T0
    assert verify_origin(RECORD, RING).created_at == T0


class _FarFuture(datetime):
    """A clock past the year 9999 as the sealer reads it (``to_ms`` asks ``timestamp()``):
    how a sender writes a ``sealed_at`` no ``datetime`` holds into a record that opens."""

    def timestamp(self) -> float:
        return 2.0**60 / 1000


def test_an_opened_record_sealed_past_the_year_9999_is_malformed() -> None:
    """Authenticated, so only a key holder can write one; :meth:`Opener.open` promises
    envelope errors only all the same, and the replay cache remembers nothing of it."""
    far = _FarFuture(T0.year, T0.month, T0.day, T0.hour, tzinfo=UTC)
    record = _record(far)
    assert w.parse_record(record).header.sealed_at_ms == 2**60
    with pytest.raises(Malformed):
        Opener("broker", RING).open(record, topic="tiaki.ingress.police", now=T0)
    replay = ReplayCache()
    with pytest.raises(Malformed):
        Opener("broker", RING, replay=replay).open(record, topic="tiaki.ingress.police", now=T0)
    assert len(replay) == 0
    opened = Opener("broker", RING).open(_record(), topic="tiaki.ingress.police", now=T0)
    assert opened.sealed_at == T0
