"""One broker worker: poll a batch, run the pipeline, commit it all in one transaction.

Exactly once follows from the transport: a batch's outputs (egress, audit, review,
quarantine) and its consumed offsets commit together or not at all. If a commit fails, the
batch is discarded, the pipeline is told (so its replay cache forgets the batch's event ids),
and the transport re-delivers the same records. After a crash, a restarted worker resumes at the
last committed offsets and the aborted transaction's outputs were never visible to
read-committed consumers.

Shutdown (SIGTERM): the stop event is checked between batches, so an in-flight batch finishes
its commit (shielded from cancellation inside the transport) before the worker closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from broker.runtime._chaining import AuditChainer
from broker.runtime._decide import Outcome
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._pipeline import Pipeline, Processed
from broker.transport import Record, TransactionalTransport, TransportError

log = structlog.get_logger("tiaki.broker")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class WorkerStatistics:
    batches: int = 0
    records: int = 0
    outputs: int = 0
    aborted: int = 0


class Worker:
    """Runs the pipeline over a transactional transport until told to stop."""

    def __init__(
        self,
        transport: TransactionalTransport,
        pipeline: Pipeline,
        metrics: BrokerMetrics,
        *,
        max_batch: int = 500,
        poll_timeout_ms: int = 100,
        clock: Callable[[], datetime] = _utc_now,
        on_assignment: Callable[[], Awaitable[None]] | None = None,
        chain: AuditChainer | None = None,
    ) -> None:
        self._transport = transport
        self._pipeline = pipeline
        self._metrics = metrics
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._clock = clock
        self._stats = WorkerStatistics()
        #: Re-reads shared state when this worker's partitions change (a rebalance): another
        #: worker may have committed state for the cases it now owns.
        self._on_assignment = on_assignment
        self._assignment: frozenset[tuple[str, int]] = frozenset()
        #: Chains each transaction's audit records (issue 7); see broker.runtime._chaining.
        self._chain = chain

    async def __aenter__(self) -> Worker:
        await self._transport.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._transport.close()

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(**vars(self._stats))

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set; the transport is started and closed here."""
        async with self:
            log.info("worker started", status="running")
            while not stop.is_set():
                await self.step()
            log.info("worker stopping", status="stopped", records=self._stats.records)

    async def step(self) -> int:
        """One poll-process-commit cycle; returns the number of records committed."""
        batch = await self._transport.poll(self._max_batch, self._poll_timeout_ms)
        assignment = self._transport.assignment()
        if assignment != self._assignment:
            self._assignment = assignment
            if self._on_assignment is not None:
                await self._on_assignment()
            log.info("partitions assigned", count=len(assignment))
        if self._chain is not None and self._chain.stale:
            await self._chain.resync()  # at start, and after a commit whose outcome is unknown
        now = self._clock()
        escalations = self._pipeline.escalations(now)
        checkpoint_due = self._chain is not None and self._chain.due(now)
        if not batch and not escalations and not checkpoint_due:
            return 0
        started = time.perf_counter()
        results = [self._pipeline.process(record, now) for record in batch]
        if batch:
            self._metrics.evaluation_seconds.observe((time.perf_counter() - started) / len(batch))
        outputs = [out for result in results for out in result.outputs] + escalations
        if self._chain is not None:
            outputs = self._chain.seal(outputs, now)
        try:
            await self._transport.commit(outputs, batch)
        except TransportError as exc:
            self._pipeline.aborted()
            if self._chain is not None:
                self._chain.aborted()
            self._stats.aborted += 1
            self._metrics.transactions.labels("aborted").inc()
            log.warning("transaction aborted", error_type=type(exc).__name__, records=len(batch))
            if not exc.retriable:
                raise
            return 0
        self._pipeline.committed()
        if self._chain is not None:
            self._chain.committed()
        self._count(batch, results)
        return len(batch)

    def _count(self, batch: Sequence[Record], results: Sequence[Processed]) -> None:
        """Metrics for a committed batch only, so they agree with what the topics hold."""
        m = self._metrics
        m.transactions.labels("committed").inc()
        m.batch_records.observe(len(batch))
        now_ms = time.time() * 1000
        for record, result in zip(batch, results, strict=True):
            m.end_to_end_seconds.observe(max(0.0, (now_ms - record.timestamp_ms) / 1000))
            if result.quarantine_reason is not None:
                m.quarantined.labels(result.quarantine_reason).inc()
                continue
            m.events_in.labels(result.source or "-", result.event_type or "-").inc()
            for verdict in result.verdicts:
                m.decisions.labels(
                    verdict.outcome.value, verdict.rule_ids[0] if verdict.rule_ids else "-"
                ).inc()
                if verdict.outcome is Outcome.SHARE:
                    m.events_out.labels(verdict.recipient, result.event_type or "-").inc()
                elif verdict.outcome is Outcome.REVIEW:
                    m.held_for_review.labels(verdict.recipient).inc()
        outputs = sum(len(r.outputs) for r in results)
        self._stats.batches += 1
        self._stats.records += len(batch)
        self._stats.outputs += outputs
        log.info("batch committed", records=len(batch), outputs=outputs)
