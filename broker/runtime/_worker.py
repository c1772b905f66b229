"""One broker worker: poll records, run the pipeline, commit them in Kafka transactions.

Exactly once follows from the transport: a batch's outputs (egress, audit, review,
quarantine, state) and its consumed offsets commit together or not at all. If a commit fails,
the batch and everything processed since are discarded, the pipeline is told (so its replay
cache forgets their event ids), the transport re-delivers the same records, and the worker's
shared state (case membership, open requests, the replay cache) is *stale*: processing changed
it in memory for records whose state records may never have been committed, and a commit that
failed from the worker's side may still have committed (a lost reply). So before it processes
anything again the worker re-reads that state from the state topics (``refresh``, the same
re-read a rebalance triggers), which hold exactly what committed either way. While the re-read
fails (Kafka away) the worker processes nothing and retries; a rewind to the committed offsets
that failed, and the audit chain's resync, are part of it and retried the same way. After a
crash, a restarted worker resumes at the last committed offsets and the aborted transaction's
outputs were never visible to read-committed consumers.

Rebalances are seen through the transport's assignment generation, which changes on every
assignment, even one that gives back the same partitions.

Shutdown (SIGTERM): the stop event is checked between batches, so an in-flight batch finishes
its commit (shielded from cancellation inside the transport) before the worker closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

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
#: Every record: a commit is several round trips, each resumed only when the loop is free, and
#: a record costs about a millisecond; yielding every 8 records made commits twice as long.
YIELD_EVERY = 1
#: While a commit is in flight, a poll waits at most this long for records, so that the next
#: transaction starts within a few milliseconds of the one ahead ending.
POLL_SLICE_MS = 5
#: While the state cannot be re-read, the worker waits this long before the first retry, then
#: twice as long each time, up to the second figure.
REFRESH_RETRY_S = (0.5, 10.0)


@dataclass
class _Taken:
    """Records processed since the last transaction was closed, and what they caused."""

    records: list[Record] = field(default_factory=list)
    results: list[Processed] = field(default_factory=list)
    #: When each record's processing began (epoch milliseconds), for ``tiaki_queued_seconds``.
    began_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Batch:
    """A processed batch waiting to commit: its records, what they caused, the pipeline's mark."""

    records: list[Record]
    results: list[Processed]
    outputs: list[Outgoing]
    mark: tuple[int, int, int]
    #: When each record's processing began (epoch milliseconds), one per record.
    began_ms: list[float]
    #: The audit chain's head once this batch is committed (issue 7), if the worker chains.
    chain_mark: ChainHead | None = None
    #: The transport's assignment generation the batch was made under (its escalations are
    #: for requests this worker owned then).
    generation: int = 0


class _InFlight(NamedTuple):
    """A batch whose transaction is committing, and the task committing it."""

    batch: _Batch
    task: asyncio.Task[TransportError | None]


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
        commit_interval_ms: int = 0,
        clock: Callable[[], datetime] = _utc_now,
        refresh: Callable[[], Awaitable[None]] | None = None,
        chain: AuditChainer | None = None,
    ) -> None:
        self._transport = transport
        self._pipeline = pipeline
        self._metrics = metrics
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._commit_interval_s = commit_interval_ms / 1000
        self._clock = clock
        self._stats = WorkerStatistics()
        #: Re-reads the shared state from the state topics (see the module docs): after every
        #: assignment (another worker may have committed state for the cases it now owns) and
        #: after every failed commit. None only for a pipeline that keeps no shared state.
        self._refresh = refresh
        self._generation = 0  # the transports count assignments from 1
        #: Whether the shared state must be re-read before anything is processed.
        self._stale = False
        #: Whether the transport must still be rewound to the last commit (it failed, Kafka
        #: away): part of the re-read, before anything is polled.
        self._rewind_due = False
        #: Chains each transaction's audit records (issue 7); see broker.runtime._chaining.
        self._chain = chain
        #: The batch whose commit failed last, until the chain's re-read head says whether
        #: it committed all the same (:meth:`_settle_doubt`).
        self._in_doubt: _Batch | None = None

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
        """Process records on a started worker until ``stop`` is set, while the transaction
        ahead of them commits.

        Processing is Python on this core; most of a commit is waiting for Kafka, which works
        on another core. So while one transaction commits, in a task, the worker goes on
        polling and processing what arrives (yielding to the event loop between records, so
        each of the commit's round trips resumes promptly), and once that commit has ended
        *and* the commit interval (``commit_interval_ms``) has passed since it began, it
        commits everything processed meanwhile, up to ``max_batch`` records (a full batch goes
        at once). A record therefore waits for at most the longer of the interval and the
        transaction ahead of it, and then its own; a record arriving after a quiet interval is
        committed at once. Under a backlog every transaction fills to ``max_batch``.

        Why an interval: most of what a transaction costs Kafka is per transaction, not per
        record (the coordinator's state changes, a commit marker on every partition written,
        five round trips), and on a busy node that cost is what makes the latency tail. In the
        benchmark at 1,000 events/s, a 40 ms interval took Kafka's CPU per event down by about
        a quarter and the pass-through worker's p99 from 59-193 ms to 59-69 ms.

        If a commit fails, a poll fails with a retriable error, or partitions are revoked,
        everything processed since the last successful commit is thrown away: the pipeline
        forgets it, and the transport rewinds to the committed offsets (again, after its own
        rewind: a poll may have run while the failed commit was being rolled back), so every
        record is polled and processed again, after the shared state is re-read (see the
        module docs). The first assignment takes
        the same path, with nothing to throw away.
        """
        taken = _Taken()
        inflight: _InFlight | None = None
        opened = -math.inf  # when the last transaction was closed (time.monotonic)
        while not stop.is_set():
            if self._stale:  # nothing is in flight or taken: both were settled or thrown away
                await self._refreshed(stop)
                continue
            room = self._max_batch - len(taken.records)
            records: list[Record] = []
            if room > 0:
                if inflight is not None:
                    timeout = POLL_SLICE_MS
                elif taken.records:  # waiting only for the interval to end
                    timeout = max(1, math.ceil(self._interval_left(opened) * 1000))
                else:
                    timeout = self._poll_timeout_ms
                try:
                    records = await self._transport.poll(room, timeout)
                except TransportError as exc:
                    if not exc.retriable:
                        raise
                    # Where the consumer stands is in doubt (say, its seek to the committed
                    # offsets after a rebalance ran out of time while another worker's
                    # transaction was pending): as after a failed commit, settle the one
                    # ahead, throw away what was taken since, rewind and re-read the state.
                    log.warning(
                        "poll failed; polling again from the last commit",
                        error_type=type(exc).__name__,
                    )
                    await self._abandon(inflight)
                    inflight, taken = None, _Taken()
                    self._stale = True
                    continue
            elif inflight is not None:
                await asyncio.wait([inflight.task])  # full: wait for the transaction ahead
            if self._transport.assignment_generation() != self._generation:
                await self._abandon(inflight)  # what we hold was polled before the rebalance
                inflight, taken = None, _Taken()
                self._assigned()
                continue
            if records:
                await self._take(records, taken, yielding=inflight is not None)
            if inflight is not None:
                if not inflight.task.done():
                    continue
                committed = self._settle(inflight.batch, inflight.task.result())
                inflight = None
                if not committed:
                    await self._forget()
                    taken = _Taken()
                    continue
            if len(taken.records) < self._max_batch and self._interval_left(opened) > 0:
                continue  # not full, and the last transaction began less than an interval ago
            batch = await self._close(taken)
            taken = _Taken()
            if batch is not None:
                opened = time.monotonic()
                inflight = _InFlight(batch, asyncio.create_task(self._send(batch)))
        if inflight is not None and not self._settle(inflight.batch, await inflight.task):
            return  # the records taken since are uncommitted: polled again after a restart
        if self._stale:
            return  # taken on state that may be wrong: polled again after a restart
        batch = await self._close(taken, final=True)
        if batch is not None:
            self._settle(batch, await self._send(batch))

    def _interval_left(self, opened: float) -> float:
        """Seconds until the commit interval since the last transaction was closed ends."""
        return opened + self._commit_interval_s - time.monotonic()

    async def step(self) -> int:
        """One poll-process-commit cycle, nothing overlapped; returns the number of records
        committed. Tests drive the worker with it. Stale state is re-read first (once: if
        that fails, nothing is polled and 0 is returned)."""
        if self._stale and not await self._refreshed(None):
            return 0
        records = await self._transport.poll(self._max_batch, self._poll_timeout_ms)
        if self._transport.assignment_generation() != self._generation:
            self._assigned()
            if not await self._refreshed(None):
                await self._forget()  # polled before the state could be read: poll them again
                return 0
        taken = _Taken()
        if records:
            await self._take(records, taken, yielding=False)
        batch = await self._close(taken)
        if batch is None:
            return 0
        return len(batch.records) if self._settle(batch, await self._send(batch)) else 0

    def _assigned(self) -> None:
        """A new assignment: what this worker knows of the state is stale."""
        self._generation = self._transport.assignment_generation()
        self._stale = True
        log.info("partitions assigned", count=len(self._transport.assignment()))

    async def _refreshed(self, stop: asyncio.Event | None) -> bool:
        """Re-read the shared state, after the rewind that failed before (if one did) and
        the audit chain's resync (if it is stale); True once it is fresh. A retriable failure
        (Kafka away) is logged and retried, with a growing pause, until it succeeds or
        ``stop`` is set (without ``stop``, tried once); the worker processes nothing
        meanwhile. Anything else is raised: the worker cannot go on (as at start-up)."""
        delay, longest = REFRESH_RETRY_S
        while True:
            try:
                if self._rewind_due:
                    await self._rewind()
                if self._chain is not None and self._chain.stale:
                    await self._chain.resync()
                    self._settle_doubt(self._chain)
                if self._refresh is not None:
                    await self._refresh()
            except TransportError as exc:
                self._read_failed(
                    exc, "state re-read failed; processing waits for it", retry_seconds=delay
                )
                if stop is None:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return False
                delay = min(delay * 2, longest)
                continue
            self._stale = False
            return True

    def _read_failed(self, exc: TransportError, event: str, **fields: float) -> None:
        """A read of the shared state (a re-read, the chain's resync) failed: raised if trying
        again cannot help; otherwise counted (``tiaki_state_refresh_failures_total``, which
        an alert reads) and logged as ``event``."""
        if not exc.retriable:
            raise exc
        self._metrics.state_refresh_failures.inc()
        log.warning(event, error_type=type(exc).__name__, **fields)

    def _settle_doubt(self, chain: AuditChainer) -> None:
        """After a failed commit, once the chain's head is re-read: whether that transaction
        committed all the same (a lost reply) shows in the head, which it wrote. If it did,
        the audit records of the worker's own acts it held (:meth:`Pipeline.note_policy`,
        ``note_keys``) are on the log: they must not go out again, and its records are counted
        as any committed batch's, so the metrics agree with the topics (the rewind goes to
        offsets past them: they are never processed, so never counted, again). (Everything
        else it wrote is state the re-read restores, or offsets the rewind reads.)"""
        doubt, self._in_doubt = self._in_doubt, None
        mark = None if doubt is None else doubt.chain_mark
        if doubt is None or mark is None or mark.size == 0:
            return
        head = chain.head
        if head.size == mark.size and head.head == mark.head:
            log.info("the failed transaction had committed", records=len(doubt.records))
            self._pipeline.notes_committed(doubt.mark)
            self._count(doubt.records, doubt.results, doubt.began_ms)

    async def _abandon(self, inflight: _InFlight | None) -> None:
        """Let the transaction in flight, if any, end and settle it; then throw away what was
        processed since the last commit, and rewind to it."""
        if inflight is not None:
            self._settle(inflight.batch, await inflight.task)
        await self._forget()

    async def _forget(self) -> None:
        """Throw away every record processed since the last commit, and rewind to it. If
        the rewind fails with a retriable error (Kafka away), the state is stale and its
        re-read tries the rewind again first: nothing is polled until it has worked."""
        self._pipeline.aborted()
        try:
            await self._rewind()
        except TransportError as exc:
            if not exc.retriable:
                raise
            self._stale = True
            log.warning("rewind failed; processing waits for it", error_type=type(exc).__name__)

    async def _rewind(self) -> None:
        self._rewind_due = True
        await self._transport.rewind()
        self._rewind_due = False

    async def _take(self, records: Sequence[Record], taken: _Taken, *, yielding: bool) -> None:
        """Run the pipeline over ``records``, adding them and their results to ``taken``."""
        now = self._clock()
        started = time.perf_counter()
        process = self._pipeline.process
        results, began = taken.results, taken.began_ms
        for index, record in enumerate(records):
            if yielding and index % YIELD_EVERY == 0:
                # Let the commit in flight move: first before any of this work, so it starts
                # at once, then every few records.
                await asyncio.sleep(0)
            began.append(time.time() * 1000)
            results.append(process(record, now))
        taken.records.extend(records)
        took = time.perf_counter() - started
        self._stats.process_seconds += took
        self._metrics.evaluation_seconds.observe(took / len(records))

    async def _close(self, taken: _Taken, *, final: bool = False) -> _Batch | None:
        """The transaction for what ``taken`` holds, with the escalations now due and the
        audit chain's links; None if there is nothing to commit. ``final``: the worker is
        stopping, and the chain signs every record it has not signed yet."""
        chain = self._chain
        if chain is not None and chain.stale:
            # Done by the re-read after a commit whose outcome is unknown; here only if this
            # worker closes a transaction before its first assignment. Kafka away (or a
            # read held by a pending transaction past its bound) is retried as a re-read is,
            # never fatal: throw away what was taken, and let the re-read resync first.
            try:
                await chain.resync()
            except TransportError as exc:
                self._read_failed(exc, "audit chain resync failed; processing waits for it")
                await self._forget()
                self._stale = True
                return None
        now = self._clock()
        escalations = self._pipeline.escalations(now, self._transport.assignment())
        if (
            not taken.records
            and not escalations
            and not (chain is not None and chain.due(now, final=final))
        ):
            return None
        outputs = [out for result in taken.results for out in result.outputs]
        outputs += escalations + self._pipeline.seen()
        mark = self._pipeline.mark()
        chain_mark = None
        if chain is not None:
            outputs = chain.seal(outputs, now, final=final)
            chain_mark = chain.mark()
        return _Batch(
            taken.records,
            taken.results,
            outputs,
            mark,
            taken.began_ms,
            chain_mark,
            self._generation,
        )

    async def _send(self, b: _Batch) -> TransportError | None:
        """Commit ``b``; the error if its transaction aborted. Touches no pipeline state, so
        it can run while the next batch is processed."""
        if self._transport.assignment_generation() != b.generation:
            # Partitions changed hands since the batch was made: its escalations may be for
            # requests another worker owns now (its records the transport would refuse).
            return TransportError("partitions changed hands before the commit", retriable=True)
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
            self._count(b.records, b.results, b.began_ms)
            return True
        # It may have committed all the same (a lost reply): the replay cache forgets what the
        # batch admitted and the re-read (before anything is processed again) restores what
        # the state topics hold, whichever way the transaction ended.
        self._pipeline.aborted()
        self._stale = True
        if self._chain is not None:
            self._chain.aborted()
            self._in_doubt = b
        self._stats.aborted += 1
        self._metrics.transactions.labels("aborted").inc()
        log.warning("transaction aborted", error_type=type(error).__name__, records=len(b.records))
        if not error.retriable:
            raise error
        return False

    def _count(
        self, batch: Sequence[Record], results: Sequence[Processed], began_ms: Sequence[float]
    ) -> None:
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
        observe, queued = m.end_to_end_seconds.observe, m.queued_seconds.observe
        for record, result, began in zip(batch, results, began_ms, strict=True):
            observe(max(0.0, (now_ms - record.timestamp_ms) / 1000))
            queued(max(0.0, (began - record.timestamp_ms) / 1000))
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
