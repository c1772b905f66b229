"""Which polled records are not yet committed: the bookkeeping both transports share.

Pure and synchronous, so the rules are tested once and cannot drift between the aiokafka and
in-memory transports:

- ``polled`` remembers, per partition, the first offset handed out since the last commit (the
  point to rewind to) and the last one (to know whether anything is still outstanding);
- ``to_commit`` turns a batch into ``{partition: highest offset + 1}``, and refuses it with
  :class:`PartitionsRevoked` when a rebalance happened while records were outstanding, or when a
  record's partition is no longer assigned;
- ``rewind`` hands back where to seek so that every outstanding record is polled again.

Why a whole batch is refused after any rebalance, not just its revoked records: aiokafka's
rebalances are eager (every partition is revoked, then some come back), and a partition that
comes back may have been committed by another worker in between. Offsets alone cannot tell a
record polled before the rebalance from the same offset polled again after it, so the only
safe answer is to drop everything outstanding and start again from the committed offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set

from broker.transport._errors import PartitionsRevoked
from broker.transport._types import Record, TopicPartition


class Ledger:
    """Outstanding (polled, uncommitted) records of one worker."""

    def __init__(self) -> None:
        self._first: dict[TopicPartition, int] = {}
        self._last: dict[TopicPartition, int] = {}
        self._stale = False

    @property
    def outstanding(self) -> bool:
        """Whether any polled record is not yet committed."""
        return bool(self._first)

    @property
    def stale(self) -> bool:
        """Whether a rebalance happened while records were outstanding."""
        return self._stale

    def polled(self, records: Iterable[Record]) -> None:
        for record in records:
            tp = (record.topic, record.partition)
            self._first.setdefault(tp, record.offset)
            self._last[tp] = record.offset

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions were taken away; the consumer re-reads them from the committed offsets
        if they come back, so forget them, and poison the current batch if it had records."""
        if self._first:
            self._stale = True
        for tp in partitions:
            self._first.pop(tp, None)
            self._last.pop(tp, None)

    def to_commit(
        self, consumed: Sequence[Record], assignment: Set[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The offsets to commit for ``consumed``; raises :class:`PartitionsRevoked`."""
        if self._stale:
            raise PartitionsRevoked("a rebalance happened since this batch was polled")
        offsets: dict[TopicPartition, int] = {}
        for record in consumed:
            tp = (record.topic, record.partition)
            if tp not in assignment:
                raise PartitionsRevoked(f"{tp[0]}[{tp[1]}] is no longer assigned to this worker")
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        return offsets

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, next_offset in offsets.items():
            if self._last.get(tp, -1) >= next_offset:
                self._first[tp] = next_offset
            else:
                self._first.pop(tp, None)
                self._last.pop(tp, None)

    def rewind(self) -> dict[TopicPartition, int]:
        """Where to seek so every outstanding record is polled again; clears the ledger."""
        points = dict(self._first)
        self._first.clear()
        self._last.clear()
        self._stale = False
        return points
