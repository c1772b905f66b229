"""Chaining a transaction's audit records before they leave the broker (issue 7).

The worker hands every batch's outputs to :meth:`AuditChainer.seal` just before its Kafka
transaction. The chainer adds the chain headers to each ``tiaki.audit`` record (in the order
they will be produced), and, in the same transaction,

- a signed checkpoint on ``tiaki.checkpoints`` when one is due (every K records or T seconds),
  which every agency may read and keep as a witness;
- the chain's new head on the compacted ``tiaki.state.chains``, keyed by chain id.

So the stored head always describes exactly the committed records. After a commit the worker
calls :meth:`committed` with that batch's :meth:`mark` (the next batch may already be sealed:
the worker processes it while this one commits, and throws it away if this one fails); after
a failed one :meth:`aborted`, which drops every pending link and also marks the head *stale*:
a failed commit may still have committed (a lost reply), so before chaining again the chainer
re-reads its head from the state topic (:meth:`resync`) instead of trusting memory. The
transport has by then replaced its producer, whose InitProducerId settles the old
transaction, so what a read-committed reader sees is the truth.

The chain id is the worker's transactional id: Kafka lets only one producer with that id
commit at a time, so the chain has one writer however the consumer group rebalances.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import structlog

from broker.audit import (
    CHECKPOINT_HEADER,
    ChainHead,
    ChainWriter,
    latest_heads,
    sign_head,
)
from broker.envelope import BROKER, KeyRing
from broker.platform._topics import AUDIT, CHECKPOINTS, STATE_CHAINS
from broker.runtime._pipeline import SCHEMA_HEADER
from broker.transport import Outgoing, Reader

log = structlog.get_logger("tiaki.broker")


class AuditChainer:
    """One writer's chain, applied to whole transactions (not thread-safe)."""

    def __init__(
        self,
        chain: str,
        ring: KeyRing,
        *,
        reader: Callable[[], Reader] | None = None,
        head: ChainHead | None = None,
        every_records: int | None = None,
        every: timedelta | None = None,
    ) -> None:
        self._ring = ring
        self._reader = reader
        self._writer = ChainWriter(head or ChainHead(chain))
        if every_records is not None:
            self._writer.every_records = every_records
        if every is not None:
            self._writer.every = every
        #: Whether the head must be re-read before the next link (at start, after a failure).
        self.stale = reader is not None

    @property
    def chain(self) -> str:
        return self._writer.chain

    @property
    def head(self) -> ChainHead:
        return self._writer.head

    async def resync(self) -> None:
        """Continue from the head committed in ``tiaki.state.chains``."""
        if self._reader is None:
            self.stale = False
            return
        async with self._reader() as reader:
            records = await reader.read_all(STATE_CHAINS)
        heads = latest_heads([(r.key, r.value) for r in records])
        self._writer.reset(heads.get(self.chain, ChainHead(self.chain)))
        self.stale = False
        log.info("audit chain resumed", chain=self.chain, size=self._writer.head.size)

    def due(self, now: datetime, *, final: bool = False) -> bool:
        """Whether a checkpoint is due even without new records (the T-second cadence; with
        ``final``, the worker is stopping: any record no checkpoint covers yet)."""
        return not self.stale and (
            self._writer.checkpoint_due(now) or (final and self._writer.unsigned() > 0)
        )

    def seal(
        self, outputs: Sequence[Outgoing], now: datetime, *, final: bool = False
    ) -> list[Outgoing]:
        """``outputs`` with every audit record chained, plus the checkpoint and head records.
        ``final``: the worker's last transaction, which signs whatever is unsigned, so that a
        worker stopped for good leaves no tail that ``tiaki audit verify --strict`` must
        report as waiting too long for a checkpoint."""
        if self.stale:
            raise RuntimeError("resync the audit chain before sealing")
        sealed: list[Outgoing] = []
        for out in outputs:
            if out.topic == AUDIT:
                if out.value is None:  # the audit topic keeps everything; nothing retracts
                    raise ValueError("an audit record cannot be a tombstone")
                schema = dict(out.headers).get(SCHEMA_HEADER, b"")
                out = Outgoing(
                    out.topic,
                    out.key,
                    out.value,
                    out.headers + self._writer.link(out.value, schema),
                )
            sealed.append(out)
        if self._writer.checkpoint_due(now) or (final and self._writer.unsigned() > 0):
            checkpoint = sign_head(self._ring, BROKER, self._writer.head, now)
            self._writer.mark_checkpointed(now)
            sealed.append(
                Outgoing(
                    CHECKPOINTS,
                    self.chain.encode(),
                    checkpoint,
                    ((CHECKPOINT_HEADER, self.chain.encode()),),
                )
            )
        if self._writer.dirty():
            key, value = self._writer.head_record()
            sealed.append(Outgoing(STATE_CHAINS, key, value))
        return sealed

    def mark(self) -> ChainHead:
        """The head as of the outputs sealed so far (see :meth:`ChainWriter.mark`)."""
        return self._writer.mark()

    def committed(self, mark: ChainHead | None = None) -> None:
        self._writer.committed(mark)

    def aborted(self) -> None:
        self._writer.aborted()
        self.stale = self._reader is not None


ChainReload = Callable[[], Awaitable[None]]
