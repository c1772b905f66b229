"""The stale-batch and rewind rules both transports share."""

from __future__ import annotations

import pytest

from broker.transport import PartitionsRevoked, Record
from broker.transport._ledger import Ledger

T = "tiaki.ingress.police"


def rec(partition: int, offset: int) -> Record:
    return Record(T, partition, offset, b"k", b"v", (), 0)


def test_offsets_are_highest_plus_one_per_partition() -> None:
    ledger = Ledger()
    batch = [rec(0, 3), rec(0, 7), rec(1, 2)]
    ledger.polled(batch)
    assert ledger.to_commit(batch, {(T, 0), (T, 1)}) == {(T, 0): 8, (T, 1): 3}


def test_rewind_goes_to_the_first_uncommitted_polled_offset() -> None:
    ledger = Ledger()
    ledger.polled([rec(0, 3), rec(0, 4), rec(0, 5), rec(1, 9)])
    ledger.committed({(T, 0): 5})  # 3 and 4 committed, 5 still outstanding
    assert ledger.rewind() == {(T, 0): 5, (T, 1): 9}
    assert not ledger.outstanding


def test_a_rebalance_with_outstanding_records_poisons_the_next_commit_once() -> None:
    ledger = Ledger()
    batch = [rec(0, 1)]
    ledger.polled(batch)
    ledger.revoked({(T, 0), (T, 1)})
    with pytest.raises(PartitionsRevoked):
        ledger.to_commit(batch, {(T, 0)})
    ledger.rewind()
    ledger.polled(batch)
    assert ledger.to_commit(batch, {(T, 0)}) == {(T, 0): 2}


def test_a_rebalance_with_nothing_outstanding_is_harmless() -> None:
    ledger = Ledger()
    ledger.revoked({(T, 0)})
    assert not ledger.stale


def test_records_of_a_partition_not_assigned_are_refused() -> None:
    ledger = Ledger()
    with pytest.raises(PartitionsRevoked):
        ledger.to_commit([rec(2, 0)], {(T, 0)})
