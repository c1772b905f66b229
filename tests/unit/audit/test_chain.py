"""The chain writer: links, pending heads that commit or roll back with their transaction,
the stored head record, and the checkpoint cadence."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.audit import (
    GENESIS,
    AuditError,
    ChainHead,
    ChainWriter,
    Frontier,
    LogEntry,
    latest_heads,
    leaf_hash,
    link_hash,
    read_link,
    root_of,
)
from broker.audit._chain import SEQ_LIMIT, parse_seq

from .conftest import T0


def entry(value: bytes, headers: tuple[tuple[str, bytes], ...], offset: int) -> LogEntry:
    return LogEntry("tiaki.audit", 0, offset, None, value, headers, 0)


def test_links_verify_and_follow_each_other() -> None:
    writer = ChainWriter(ChainHead("tiaki-broker-0"))
    links = [read_link(entry(b"v%d" % i, writer.link(b"v%d" % i, b""), i)) for i in range(5)]
    assert [x.seq for x in links] == [0, 1, 2, 3, 4]
    assert links[0].prev == GENESIS
    assert all(b.prev == a.link for a, b in itertools.pairwise(links))
    assert writer.head.frontier.root() == root_of([leaf_hash(x.link) for x in links])


def test_an_aborted_transaction_leaves_no_used_link() -> None:
    writer = ChainWriter(ChainHead("c"))
    writer.link(b"a", b"")
    writer.committed()
    first = writer.link(b"b", b"")
    writer.aborted()
    again = writer.link(b"b", b"")
    assert first == again  # the same seq and prev: the aborted link was never used
    assert writer.head.size == 2


def test_the_head_record_round_trips_and_resumes_the_chain() -> None:
    writer = ChainWriter(ChainHead("c"))
    for i in range(7):
        writer.link(bytes([i]), b"s")
    writer.mark_checkpointed(T0)
    key, value = writer.head_record()
    writer.committed()
    resumed = ChainWriter(latest_heads([(key, value)])["c"])
    assert resumed.head.head == writer.head.head
    assert resumed.head.frontier.root() == writer.head.frontier.root()
    assert resumed.link(b"x", b"s") == writer.link(b"x", b"s")


def test_latest_heads_keeps_the_last_per_chain() -> None:
    a = ChainHead("a", size=0)
    b = ChainHead("a", size=1, head=b"\x01" * 32, frontier=Frontier(1, [b"\x02" * 32]))
    heads = latest_heads([(b"a", a.to_bytes()), (b"a", b.to_bytes()), (b"a", b"")])
    assert heads["a"].size == 1


@pytest.mark.parametrize(
    "value", [b"{}", b"not json", b'{"v":1,"chain":"a","size":2,"head":"00","frontier":[]}']
)
def test_a_malformed_head_record_is_an_error_not_a_new_chain(value: bytes) -> None:
    with pytest.raises(AuditError):
        ChainHead.from_bytes(value)


def test_checkpoint_cadence_by_count_and_by_age() -> None:
    writer = ChainWriter(ChainHead("c"), every_records=3, every=timedelta(seconds=10))
    writer.mark_checkpointed(T0)
    assert not writer.checkpoint_due(T0)
    writer.link(b"a", b"")
    assert not writer.checkpoint_due(T0 + timedelta(seconds=9))
    assert writer.checkpoint_due(T0 + timedelta(seconds=10))
    writer.link(b"b", b"")
    writer.link(b"c", b"")
    assert writer.checkpoint_due(T0)
    writer.mark_checkpointed(T0)
    assert not writer.checkpoint_due(T0 + timedelta(days=1))  # nothing unsigned


def test_reset_refuses_another_chain() -> None:
    with pytest.raises(AuditError):
        ChainWriter(ChainHead("a")).reset(ChainHead("b"))


@pytest.mark.parametrize(
    ("chain", "seq", "schema"),
    [("c" * 65_536, 0, b""), ("c", 2**64, b""), ("c", -1, b""), ("c", 0, b"s" * 65_536)],
)
def test_a_field_that_does_not_fit_its_prefix_is_an_audit_error(
    chain: str, seq: int, schema: bytes
) -> None:
    """Never a struct.error or OverflowError: the writer and the verifier both see AuditError."""
    with pytest.raises(AuditError, match="out of range"):
        link_hash(chain, seq, GENESIS, schema, b"v")
    assert link_hash("c" * 65_535, 2**64 - 1, GENESIS, b"s" * 65_535, b"v")


@given(st.integers(min_value=0, max_value=SEQ_LIMIT - 1))
def test_every_seq_a_link_encodes_reads_back_from_its_header(seq: int) -> None:
    assert parse_seq(str(seq).encode()) == seq


@given(st.binary(max_size=24) | st.from_regex(rb"\A[0-9]{1,22}\Z"))
def test_a_seq_header_reads_as_a_number_only_if_it_is_that_numbers_one_spelling(
    raw: bytes,
) -> None:
    """The verifier and the index read seqs through parse_seq: no header reads as a number
    it is not written as the writer writes it, so neither can give one record two places."""
    number = parse_seq(raw)
    assert number is None or (str(number).encode() == raw and 0 <= number < SEQ_LIMIT)
