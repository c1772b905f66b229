"""The worker survives Kafka being away for the steps that follow a failed commit (the rewind
to the last commit, the audit chain's resync): it retries them as it retries the state
re-read, and loses or repeats nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from broker.platform import CHECKPOINTS, STATE_CHAINS
from broker.runtime import Outcome
from broker.runtime import _worker as worker_module
from broker.runtime._chaining import AuditChainer
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._worker import Worker
from broker.transport import (
    InMemoryCluster,
    InMemoryReader,
    InMemoryTransport,
    Reader,
    Record,
    Unavailable,
)
from tests.unit.audit.conftest import make_ring
from tests.unit.runtime.test_intake import NOW, REGISTRY
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider, verdict
from tests.unit.runtime.test_worker import publish, topic_counts


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "REFRESH_RETRY_S", (0.01, 0.02))


def setup() -> tuple[InMemoryCluster, Harness]:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    cluster.create_topic(CHECKPOINTS, 1)
    cluster.create_topic(STATE_CHAINS, 1)
    return cluster, Harness(ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE)]))


async def serve_until(worker: Worker, records: int) -> None:
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    for _ in range(5000):
        await asyncio.sleep(0.001)
        if serving.done() or worker.statistics().records >= records:
            break
    stop.set()
    await asyncio.wait_for(serving, 5)


class ChainReads:
    """Readers of the in-memory cluster for the audit chain's resync, counting its reads of
    ``tiaki.state.chains``; the ``fail_on``-th raises :class:`Unavailable` (Kafka away)."""

    def __init__(self, cluster: InMemoryCluster, *, fail_on: int) -> None:
        self.cluster, self.fail_on, self.count = cluster, fail_on, 0

    def reader(self) -> _Reader:
        return _Reader(self)


class _Reader:
    def __init__(self, reads: ChainReads) -> None:
        self.reads = reads
        self.inner: InMemoryReader = reads.cluster.reader()

    async def __aenter__(self) -> _Reader:
        await self.inner.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.close()

    async def read_all(self, topic: str) -> list[Record]:
        self.reads.count += 1
        if self.reads.count == self.reads.fail_on:
            raise Unavailable("timed out waiting for Kafka")
        return await self.inner.read_all(topic)


def quick_worker(
    transport: InMemoryTransport,
    harness: Harness,
    *,
    chain_reader: Callable[[], Reader] | None = None,
    **options: int,
) -> Worker:
    """A worker on ``harness``'s pipeline that polls for 10 ms, with ``options`` (such as
    ``max_batch``), and, given ``chain_reader``, an audit chain whose resyncs read through
    it."""
    chain = None
    if chain_reader is not None:
        chain = AuditChainer(transport.transactional_id, make_ring(), reader=chain_reader)
    return Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
        chain=chain,
        **options,
    )


async def test_a_chain_resync_that_fails_once_is_retried() -> None:
    cluster, harness = setup()
    reads = ChainReads(cluster, fail_on=2)  # Kafka away for the second read
    transport = cluster.worker()
    worker = quick_worker(transport, harness, chain_reader=reads.reader, max_batch=5)
    await publish(cluster, harness, good=10, bad=0)
    cluster.fail_next_commit()
    async with worker:
        await serve_until(worker, 10)
    assert reads.count >= 3  # failed once, then read again
    assert worker.statistics().aborted == 1
    assert worker.statistics().records == 10
    counts = await topic_counts(cluster)
    assert counts["tiaki.egress.oranga-tamariki"] == 10
    assert counts["tiaki.audit"] == 10


async def test_a_rewind_that_fails_once_is_retried_before_anything_is_polled() -> None:
    cluster, harness = setup()
    transport = cluster.worker()
    rewind = transport.rewind
    rewinds = 0

    async def flaky_rewind() -> None:
        nonlocal rewinds
        rewinds += 1
        if rewinds == 2:  # the first is at the assignment, the second after the abort
            raise Unavailable("KafkaConnectionError: injected")
        await rewind()

    transport.rewind = flaky_rewind  # type: ignore[method-assign]
    worker = quick_worker(transport, harness, max_batch=5)
    await publish(cluster, harness, good=10, bad=0)
    cluster.fail_next_commit()
    async with worker:
        await serve_until(worker, 10)
    assert rewinds == 3
    assert worker.statistics().aborted == 1
    assert worker.statistics().records == 10
    counts = await topic_counts(cluster)
    assert counts["tiaki.egress.oranga-tamariki"] == 10
    assert counts["tiaki.audit"] == 10


async def test_a_chain_resync_before_the_first_assignment_that_fails_is_retried() -> None:
    # Before its first assignment a worker closes (empty) transactions, and the first of them
    # resyncs the chain; Kafka away then must be retried as a re-read is, not end the worker.
    cluster, harness = setup()
    reads = ChainReads(cluster, fail_on=1)
    transport = cluster.worker()
    generation = transport.assignment_generation
    looks = 0

    def assignment_late() -> int:  # the group's first assignment comes after a few polls
        nonlocal looks
        looks += 1
        return 0 if looks <= 3 else generation()

    transport.assignment_generation = assignment_late  # type: ignore[method-assign]
    worker = quick_worker(transport, harness, chain_reader=reads.reader, max_batch=5)
    await publish(cluster, harness, good=10, bad=0)
    async with worker:
        await serve_until(worker, 10)
    assert reads.count >= 2  # failed once, then read again
    # ... and counted, as a failed re-read is (the refresh-failure alert reads it).
    failures = worker._metrics.registry.get_sample_value("tiaki_state_refresh_failures_total")
    assert failures == 1
    assert worker.statistics().records == 10
    counts = await topic_counts(cluster)
    assert counts["tiaki.egress.oranga-tamariki"] == 10
    assert counts["tiaki.audit"] == 10
