"""The worker with its audit chain, over the in-memory transport: failed commits leave the
chain whole, an idle worker signs its tail, and the topic verifies."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry

from broker.audit import verify_log
from broker.audit._kafka import entry_of
from broker.envelope import KeyRing
from broker.platform import AUDIT, CHECKPOINTS, STATE_CHAINS
from broker.runtime import Outcome
from broker.runtime._chaining import AuditChainer
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._worker import Worker
from broker.transport import InMemoryCluster
from tests.unit.runtime.test_intake import NOW, REGISTRY
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider, verdict
from tests.unit.runtime.test_worker import drain, publish


class Clock:
    """One second further on each reading: time moves only when the worker looks."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


async def test_failed_commits_leave_one_whole_signed_chain(ring: KeyRing) -> None:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    cluster.create_topic(CHECKPOINTS, 1)
    cluster.create_topic(STATE_CHAINS, 1)
    harness = Harness(
        ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE), verdict("msd", Outcome.DENY)])
    )
    clock = Clock()
    transport = cluster.worker()
    chain = AuditChainer(transport.transactional_id, ring, reader=cluster.reader, every_records=8)
    worker = Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=clock,
        poll_timeout_ms=10,
        max_batch=5,
        chain=chain,
    )
    await publish(cluster, harness, good=30, bad=4)
    async with worker:
        cluster.fail_next_commit()
        await drain(worker, 10)
        cluster.fail_next_commit()
        await drain(worker, 24)
        clock.now += timedelta(seconds=30)
        await worker.step()  # idle: only the checkpoint of the unsigned tail
    async with cluster.reader() as reader:
        audit = [entry_of(r) for r in await reader.read_all(AUDIT)]
        checkpoints = [entry_of(r) for r in await reader.read_all(CHECKPOINTS)]
    report = verify_log(audit, checkpoints, ring)
    assert [(c.chain, c.size, c.signed) for c in report.chains] == [
        (transport.transactional_id, 34, 34)
    ]
    assert worker.statistics().aborted == 2


async def test_overlapped_commits_leave_one_whole_chain(ring: KeyRing) -> None:
    """serve() seals batch N+1 while N commits, and throws N+1 away when N fails: the chain
    commits exactly the committed batches' links, in order, with no gap and no fork."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    cluster.create_topic(CHECKPOINTS, 1)
    cluster.create_topic(STATE_CHAINS, 1)
    harness = Harness(
        ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE), verdict("msd", Outcome.DENY)])
    )
    transport = cluster.worker()
    chain = AuditChainer(transport.transactional_id, ring, reader=cluster.reader, every_records=9)
    worker = Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=Clock(),
        poll_timeout_ms=10,
        max_batch=7,
        chain=chain,
    )
    await publish(cluster, harness, good=60, bad=5)
    cluster.fail_next_commit()
    stop = asyncio.Event()
    failures_at = [14, 35]
    async with worker:
        task = asyncio.create_task(worker.serve(stop))
        for _ in range(2000):
            await asyncio.sleep(0)
            if failures_at and worker.statistics().records >= failures_at[0]:
                failures_at.pop(0)
                cluster.fail_next_commit()
            if worker.statistics().records >= 65 and chain.head.checkpointed == 65:
                break
        stop.set()
        await asyncio.wait_for(task, 5)
    async with cluster.reader() as reader:
        audit = [entry_of(r) for r in await reader.read_all(AUDIT)]
        checkpoints = [entry_of(r) for r in await reader.read_all(CHECKPOINTS)]
    report = verify_log(audit, checkpoints, ring)
    assert [(c.chain, c.size) for c in report.chains] == [(transport.transactional_id, 65)]
    assert worker.statistics().aborted == 3
