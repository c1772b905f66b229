"""The worker survives Kafka being away for the steps that follow a failed commit (the rewind
to the last commit, the audit chain's resync): it retries them as it retries the state
re-read, and loses or repeats nothing."""

from __future__ import annotations

import asyncio
from types import TracebackType

import pytest
from prometheus_client import CollectorRegistry

from broker.platform import CHECKPOINTS, STATE_CHAINS
from broker.runtime import Outcome
from broker.runtime import _worker as worker_module
from broker.runtime._chaining import AuditChainer
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._worker import Worker
from broker.transport import InMemoryCluster, InMemoryReader, Record, Unavailable
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


async def test_a_chain_resync_that_fails_once_is_retried() -> None:
    cluster, harness = setup()
    reads = 0

    class FlakyReader:  # Kafka away for the second read of tiaki.state.chains
        def __init__(self) -> None:
            self.inner: InMemoryReader = cluster.reader()

        async def __aenter__(self) -> FlakyReader:
            await self.inner.start()
            return self

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            await self.inner.close()

        async def read_all(self, topic: str) -> list[Record]:
            nonlocal reads
            reads += 1
            if reads == 2:
                raise Unavailable("KafkaConnectionError: injected")
            return await self.inner.read_all(topic)

    transport = cluster.worker()
    chain = AuditChainer(transport.transactional_id, make_ring(), reader=FlakyReader)
    worker = Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
        max_batch=5,
        chain=chain,
    )
    await publish(cluster, harness, good=10, bad=0)
    cluster.fail_next_commit()
    async with worker:
        await serve_until(worker, 10)
    assert reads >= 3  # failed once, then read again
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
    worker = Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
        max_batch=5,
    )
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
