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
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from broker.audit import ChainHead
from broker.runtime._chaining import AuditChainer
from broker.runtime._decide import Outcome
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._pipeline import Pipeline, Processed
from broker.transport import Outgoing, Record, TransactionalTransport, TransportError

log = structlog.get_logger("tiaki.broker")


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: While a commit runs in the background, processing yields to it every this many records.
YIELD_EVERY = 8


@dataclass(frozen=True)
class _Batch:
    """A processed batch waiting to commit: its records, what they caused, the pipeline's mark."""

    records: list[Record]
    results: list[Processed]
    outputs: list[Outgoing]
    mark: tuple[int, int]
    #: The audit chain's head once this batch is committed (issue 7), if the worker chains.
    chain_mark: ChainHead | None = None


@dataclass
class WorkerStatistics:
    batches: int = 0
    records: int = 0
    outputs: int = 0
    aborted: int = 0
    #: Seconds spent running the pipeline, and committing (all, and the longest commit).
    process_seconds: float = 0.0
    commit_seconds: float = 0.0
    commit_max_seconds: float = 0.0


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
            await self.serve(stop)
            log.info("worker stopping", status="stopped", records=self._stats.records)

    async def serve(self, stop: asyncio.Event) -> None:
        """Process batches on a started worker until ``stop`` is set, each batch processed
        while the one before it commits.

        Processing is Python on this core; most of a commit is Kafka's work on another (and
        the network). So batch N commits, in a task, while batch N+1 is processed; the
        processing yields to the event loop every few records so the commit can move. N+1
        is polled before N's commit starts, never during it (a failed commit rewinds the
        consumer, which must not race a poll), and committed only after N's commit has
        succeeded. If N's commit fails, N+1 is thrown away with it: the transport has
        rewound to the last committed offsets, which precede both, and the pipeline forgets
        everything since its last commit. When a batch is waiting to commit, the next poll
        does not wait for records: at low load a batch commits as soon as it is processed.
        """
        pending: _Batch | None = None
        while not stop.is_set():
            timeout = 0 if pending is not None else self._poll_timeout_ms
            batch = await self._transport.poll(self._max_batch, timeout)
            if self._transport.assignment() != self._assignment:
                if pending is not None:  # settle it before state is re-read (it will fail)
                    self._settle(pending, await self._send(pending))
                    pending = None
                await self._assigned()
            committing = None
            if pending is not None:
                committing = asyncio.create_task(self._send(pending))
            current = await self._process(batch, self._clock(), yielding=committing is not None)
            if (
                committing is not None
                and pending is not None
                and not self._settle(pending, await committing)
            ):
                current = None  # polled again from the committed offsets
            pending = current
        if pending is not None:
            self._settle(pending, await self._send(pending))

    async def step(self) -> int:
        """One poll-process-commit cycle, nothing overlapped; returns the number of records
        committed. Tests drive the worker with it."""
        batch = await self._transport.poll(self._max_batch, self._poll_timeout_ms)
        if self._transport.assignment() != self._assignment:
            await self._assigned()
        current = await self._process(batch, self._clock(), yielding=False)
        if current is None:
            return 0
        return len(current.records) if self._settle(current, await self._send(current)) else 0

    async def _assigned(self) -> None:
        assignment = self._transport.assignment()
        self._assignment = assignment
        if self._on_assignment is not None:
            await self._on_assignment()
        log.info("partitions assigned", count=len(assignment))

    async def _process(
        self, batch: Sequence[Record], now: datetime, *, yielding: bool
    ) -> _Batch | None:
        chain = self._chain
        if chain is not None and chain.stale:
            await chain.resync()  # at start, and after a commit whose outcome is unknown
        escalations = self._pipeline.escalations(now)
        if not batch and not escalations and not (chain is not None and chain.due(now)):
            return None
        started = time.perf_counter()
        results = []
        for index, record in enumerate(batch):
            if yielding and index % YIELD_EVERY == 0:
                # Let the previous batch's commit move: first before any of this batch's work,
                # so that commit starts at once, then every few records.
                await asyncio.sleep(0)
            results.append(self._pipeline.process(record, now))
        took = time.perf_counter() - started
        self._stats.process_seconds += took
        if batch:
            self._metrics.evaluation_seconds.observe(took / len(batch))
        outputs = [out for result in results for out in result.outputs]
        outputs += escalations + self._pipeline.seen()
        if chain is None:
            return _Batch(list(batch), results, outputs, self._pipeline.mark())
        outputs = chain.seal(outputs, now)
        return _Batch(list(batch), results, outputs, self._pipeline.mark(), chain.mark())

    async def _send(self, b: _Batch) -> TransportError | None:
        """Commit ``b``; the error if its transaction aborted. Touches no pipeline state, so
        it can run while the next batch is processed."""
        started = time.perf_counter()
        try:
            await self._transport.commit(b.outputs, b.records)
        except TransportError as exc:
            return exc
        took = time.perf_counter() - started
        self._stats.commit_seconds += took
        self._stats.commit_max_seconds = max(self._stats.commit_max_seconds, took)
        self._metrics.commit_seconds.observe(took)
        return None

    def _settle(self, b: _Batch, error: TransportError | None) -> bool:
        """Tell the pipeline and the metrics how ``b``'s commit ended; True if it committed.
        Raises the error if the worker cannot go on (the transport is fenced or broken)."""
        if error is None:
            self._pipeline.committed(b.mark)
            if self._chain is not None and b.chain_mark is not None:
                self._chain.committed(b.chain_mark)
            self._count(b.records, b.results)
            return True
        self._pipeline.aborted()
        if self._chain is not None:
            self._chain.aborted()
        self._stats.aborted += 1
        self._metrics.transactions.labels("aborted").inc()
        log.warning("transaction aborted", error_type=type(error).__name__, records=len(b.records))
        if not error.retriable:
            raise error
        return False

    def _count(self, batch: Sequence[Record], results: Sequence[Processed]) -> None:
        """Metrics for a committed batch only, so they agree with what the topics hold.

        Counts are summed per label set first and each counter moved once per batch: a
        ``labels(...).inc()`` costs a few microseconds (a lock and a dict lookup), and an event
        has a dozen of them, which was a tenth of the pipeline's cost."""
        m = self._metrics
        m.transactions.labels("committed").inc()
        m.batch_records.observe(len(batch))
        now_ms = time.time() * 1000
        quarantined: Counter[tuple[str]] = Counter()
        events_in: Counter[tuple[str, str]] = Counter()
        decisions: Counter[tuple[str, str]] = Counter()
        events_out: Counter[tuple[str, str]] = Counter()
        held: Counter[tuple[str, str]] = Counter()
        observe = m.end_to_end_seconds.observe
        for record, result in zip(batch, results, strict=True):
            observe(max(0.0, (now_ms - record.timestamp_ms) / 1000))
            if result.quarantine_reason is not None:
                quarantined[(result.quarantine_reason,)] += 1
                continue
            event_type = result.event_type or "-"
            events_in[(result.source or "-", event_type)] += 1
            for verdict in result.verdicts:
                rule = verdict.rule_ids[0] if verdict.rule_ids else "-"
                decisions[(verdict.outcome.value, rule)] += 1
                if verdict.outcome is Outcome.SHARE:
                    events_out[(verdict.recipient, event_type)] += 1
                elif verdict.outcome is Outcome.REVIEW:
                    reason = verdict.reason_codes[0] if verdict.reason_codes else "-"
                    held[(verdict.recipient, reason)] += 1
        for counter, counts in (
            (m.quarantined, quarantined),
            (m.events_in, events_in),
            (m.decisions, decisions),
            (m.events_out, events_out),
            (m.held_for_review, held),
        ):
            for labels, count in counts.items():
                counter.labels(*labels).inc(count)
        outputs = sum(len(r.outputs) for r in results)
        self._stats.batches += 1
        self._stats.records += len(batch)
        self._stats.outputs += outputs
        log.info("batch committed", records=len(batch), outputs=outputs)
