"""The worker over the in-memory transport: exactly once across failed commits, metrics that
agree with the topics."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from broker.envelope import Kind, Opener, ReplayCache, Sealer
from broker.platform import STATE_SEEN
from broker.runtime import Intake, Outcome, Pipeline
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._service import seen_events
from broker.runtime._worker import Worker
from broker.transport import InMemoryCluster, Outgoing, Record, TransportError
from tests.unit.runtime.test_intake import NOW, REGISTRY, SCHEMAS
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider, verdict


def setup(max_batch: int = 500) -> tuple[InMemoryCluster, Harness, Worker, BrokerMetrics]:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    harness = Harness(
        ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE), verdict("msd", Outcome.DENY)])
    )
    metrics = BrokerMetrics(CollectorRegistry())
    worker = Worker(
        cluster.worker(),
        harness.pipeline,
        metrics,
        clock=lambda: NOW,
        poll_timeout_ms=10,
        max_batch=max_batch,
    )
    return cluster, harness, worker, metrics


async def publish(cluster: InMemoryCluster, harness: Harness, good: int, bad: int) -> None:
    async with cluster.publisher() as publisher:
        for _ in range(good):
            record = harness.record()
            await publisher.publish(record.topic, record.key, record.value)
        for i in range(bad):
            await publisher.publish("tiaki.ingress.police", b"k", b"\x01garbage-%d" % i)


async def drain(worker: Worker, expected: int) -> None:
    done = 0
    for _ in range(200):
        done += await worker.step()
        if done >= expected:
            return
    raise AssertionError(f"only {done} of {expected} records committed")


async def topic_counts(cluster: InMemoryCluster) -> Counter[str]:
    counts: Counter[str] = Counter()
    async with cluster.reader() as reader:
        for topic in (
            "tiaki.egress.oranga-tamariki",
            "tiaki.egress.msd",
            "tiaki.audit",
            "tiaki.dlq",
        ):
            counts[topic] = len(await reader.read_all(topic))
    return counts


async def test_failed_commits_neither_lose_nor_duplicate() -> None:
    cluster, harness, worker, metrics = setup()
    await publish(cluster, harness, good=30, bad=4)
    async with worker:  # the test drives the steps itself
        cluster.fail_next_commit()
        cluster.fail_next_commit()
        await drain(worker, 34)
    counts = await topic_counts(cluster)
    assert counts["tiaki.egress.oranga-tamariki"] == 30
    assert counts["tiaki.egress.msd"] == 0
    assert counts["tiaki.audit"] == 30 + 4  # one decision record per good event, one per bad
    assert counts["tiaki.dlq"] == 4
    assert worker.statistics().aborted == 2
    value = metrics.registry.get_sample_value
    assert value("tiaki_quarantined_total", {"reason": "malformed_envelope"}) == 4
    assert (
        value(
            "tiaki_events_out_total",
            {"recipient": "oranga-tamariki", "event_type": "FamilyHarmEpisodeReport"},
        )
        == 30
    )
    assert value("tiaki_decisions_total", {"outcome": "deny", "rule": "R-test"}) == 30
    assert value("tiaki_transactions_total", {"result": "aborted"}) == 2


async def test_the_queue_metric_says_how_long_records_waited_for_the_worker() -> None:
    """``tiaki_queued_seconds``: ingress timestamp to the start of processing, once per
    committed record (an aborted batch's records are counted when they commit), never more
    than the end-to-end time."""
    cluster, harness, worker, metrics = setup()
    await publish(cluster, harness, good=6, bad=2)
    await asyncio.sleep(0.2)  # the records wait for the worker
    async with worker:
        cluster.fail_next_commit()
        await drain(worker, 8)
    value = metrics.registry.get_sample_value
    assert value("tiaki_queued_seconds_count") == 8
    queued = value("tiaki_queued_seconds_sum")
    assert queued is not None
    assert queued >= 8 * 0.2
    end_to_end = value("tiaki_end_to_end_seconds_sum")
    assert end_to_end is not None
    assert queued <= end_to_end
    assert value("tiaki_queued_seconds_bucket", {"le": "0.1"}) == 0


async def test_run_stops_when_told() -> None:
    cluster, harness, worker, _ = setup()
    await publish(cluster, harness, good=5, bad=0)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if worker.statistics().records == 5:
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert worker.statistics().records == 5


async def test_overlapped_commits_neither_lose_nor_duplicate() -> None:
    """serve() processes each batch while the one before commits; a failed commit throws the
    next batch away with it, and nothing is lost, duplicated or quarantined as a replay."""
    cluster, harness, worker, metrics = setup(max_batch=7)  # many batches, so many overlaps
    await publish(cluster, harness, good=60, bad=5)
    cluster.fail_next_commit()
    stop = asyncio.Event()
    failures_at = [14, 35]  # more failures once some batches have committed, mid-stream
    async with worker:
        task = asyncio.create_task(worker.serve(stop))
        for _ in range(1000):
            await asyncio.sleep(0)
            if failures_at and worker.statistics().records >= failures_at[0]:
                failures_at.pop(0)
                cluster.fail_next_commit()
            if worker.statistics().records >= 65:
                break
        stop.set()
        await asyncio.wait_for(task, 5)
    counts = await topic_counts(cluster)
    assert worker.statistics().records == 65
    assert worker.statistics().aborted == 3
    assert counts["tiaki.egress.oranga-tamariki"] == 60
    assert counts["tiaki.audit"] == 65
    assert counts["tiaki.dlq"] == 5
    value = metrics.registry.get_sample_value
    assert value("tiaki_quarantined_total", {"reason": "malformed_envelope"}) == 5
    assert value("tiaki_quarantined_total", {"reason": "replayed"}) == 0  # exported from the start
    assert worker.statistics().batches >= 65 // 7


async def test_records_taken_while_a_commit_fails_are_processed_again_once() -> None:
    """Records keep arriving while transactions commit; every few commits one fails. Those
    processed meanwhile, including any polled after the failed commit rewound, are thrown away
    and come again: each event is delivered and audited exactly once, none as a replay."""
    cluster, harness, worker, metrics = setup()
    cluster.delay_commits(0.003)  # as Kafka's round trips take, so polls overlap each commit
    stop = asyncio.Event()

    async def trickle() -> None:
        for _ in range(90):
            await publish(cluster, harness, good=1, bad=0)
            await asyncio.sleep(0.0005)

    async with worker:
        serving = asyncio.create_task(worker.serve(stop))
        publishing = asyncio.create_task(trickle())
        failures = 0
        for _ in range(5000):
            await asyncio.sleep(0.001)
            if worker.statistics().aborted == failures and failures < 6:
                failures += 1
                cluster.fail_next_commit()
            if worker.statistics().records >= 90 and publishing.done():
                break
        stop.set()
        await asyncio.wait_for(serving, 5)
    counts = await topic_counts(cluster)
    assert worker.statistics().aborted == 6
    assert worker.statistics().records == 90
    assert counts["tiaki.egress.oranga-tamariki"] == 90
    assert counts["tiaki.audit"] == 90
    assert metrics.registry.get_sample_value("tiaki_quarantined_total", {"reason": "replayed"}) == 0


def second_worker(
    cluster: InMemoryCluster, harness: Harness, seen: list[tuple[str, str, int]] | None
) -> tuple[Worker, BrokerMetrics]:
    """Another worker (a restart, or a scale-out peer): same keys, its own replay cache,
    seeded from ``seen`` as ``tiaki broker run`` seeds it from ``tiaki.state.seen``."""
    replay = ReplayCache()
    if seen is not None:
        replay.seed(seen, NOW)
    pipeline = Pipeline(
        intake=Intake(
            registry=REGISTRY, schemas=SCHEMAS, opener=Opener("broker", harness.ring, replay=replay)
        ),
        decider=ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE)]),
        sealer=Sealer("broker", harness.ring),
        schemas=SCHEMAS,
        subject_key=b"synthetic-test-audit-key-000000",
    )
    metrics = BrokerMetrics(CollectorRegistry())
    return Worker(
        cluster.worker(), pipeline, metrics, clock=lambda: NOW, poll_timeout_ms=10
    ), metrics


async def test_a_replay_after_a_restart_is_quarantined_not_delivered_again() -> None:
    """What one worker admitted is on tiaki.state.seen, in the same transactions; a worker
    seeded from it (after a restart, or taking the partitions over) refuses a copy of any of
    those records as a replay, where an unseeded cache would deliver it a second time."""
    cluster, harness, worker, _ = setup()
    originals = [harness.record() for _ in range(6)]
    async with cluster.publisher() as publisher:
        for record in originals:
            await publisher.publish(record.topic, record.key, record.value)
    async with worker:
        cluster.fail_next_commit()  # an aborted transaction leaves nothing on the seen topic
        await drain(worker, 6)
    async with cluster.reader() as reader:
        seen = seen_events(await reader.read_all(STATE_SEEN), SCHEMAS)
    assert sorted(e for _, e, _ in seen) == sorted(_event_id(harness, r) for r in originals)
    assert len(seen) == 6  # once each, though one transaction aborted and was redone

    async with cluster.publisher() as publisher:  # the same six records, written again
        for record in originals:
            await publisher.publish(record.topic, record.key, record.value)
    restarted, metrics = second_worker(cluster, harness, seen)
    async with restarted:
        await drain(restarted, 6)
    counts = await topic_counts(cluster)
    assert counts["tiaki.egress.oranga-tamariki"] == 6  # the first worker's deliveries only
    assert counts["tiaki.dlq"] == 6
    assert metrics.registry.get_sample_value("tiaki_quarantined_total", {"reason": "replayed"}) == 6


async def test_an_unseeded_cache_would_deliver_the_copies_again() -> None:
    """The control for the test above: the failure it guards against is real."""
    cluster, harness, worker, _ = setup()
    original = harness.record()
    async with cluster.publisher() as publisher:
        await publisher.publish(original.topic, original.key, original.value)
    async with worker:
        await drain(worker, 1)
    async with cluster.publisher() as publisher:
        await publisher.publish(original.topic, original.key, original.value)
    restarted, _ = second_worker(cluster, harness, None)
    async with restarted:
        await drain(restarted, 1)
    assert (await topic_counts(cluster))["tiaki.egress.oranga-tamariki"] == 2


def _event_id(harness: Harness, record: Record) -> str:
    return str(
        Opener("broker", harness.ring)
        .open(record.value, topic=record.topic, now=NOW, kind=Kind.INGRESS, source="police")
        .event_id
    )


async def test_state_is_rebuilt_with_only_the_seen_events_written_since_a_time() -> None:
    """``tiaki.state.seen`` keeps two days; a start reads it from the replay cache's horizon
    (less a margin for workers' clocks), and everything else whole."""
    from broker.codec import encode
    from broker.runtime._service import rebuild_state
    from broker.transport import Outgoing

    stamp = [1_000_000]
    cluster = InMemoryCluster(clock_ms=lambda: stamp[0])
    cluster.create_topic(STATE_SEEN, 1)
    for name in ("tiaki.state.cases", "tiaki.state.requests"):
        cluster.create_topic(name)
    schema = SCHEMAS.latest("SeenEvents")
    async with cluster.worker() as writer:
        for at, event in ((1_000_000, "old"), (2_000_000, "edge"), (3_000_000, "new")):
            stamp[0] = at
            value = encode(
                schema, {"events": [{"source": "police", "event_id": event, "sealed_at_ms": at}]}
            )
            await writer.commit([Outgoing(STATE_SEEN, None, value)], [])
    since = await rebuild_state(cluster.reader(), SCHEMAS, seen_since_ms=2_000_000)
    assert [e for _, e, _ in since.seen] == ["edge", "new"]
    whole = await rebuild_state(cluster.reader(), SCHEMAS)
    assert [e for _, e, _ in whole.seen] == ["old", "edge", "new"]
    later = await rebuild_state(cluster.reader(), SCHEMAS, seen_since_ms=9_000_000)
    assert later.seen == []
    cache = ReplayCache()
    assert cache.horizon_ms(NOW) == int(NOW.timestamp() * 1000) - (24 * 60 + 5) * 60_000


def paced(
    max_batch: int, interval_ms: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[InMemoryCluster, Harness, Worker, list[tuple[float, int]]]:
    """A worker with a commit interval; the returned list gets (start time, records) of every
    transaction the worker begins."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    harness = Harness(ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE)]))
    transport = cluster.worker()
    began: list[tuple[float, int]] = []
    commit = transport.commit

    async def timed(outputs: Sequence[Outgoing], consumed: Sequence[Record]) -> None:
        began.append((time.monotonic(), len(consumed)))
        await commit(outputs, consumed)

    monkeypatch.setattr(transport, "commit", timed)
    worker = Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
        max_batch=max_batch,
        commit_interval_ms=interval_ms,
    )
    return cluster, harness, worker, began


async def serve_until(worker: Worker, records: int, feed: Awaitable[None]) -> None:
    stop = asyncio.Event()
    async with worker:
        serving = asyncio.create_task(worker.serve(stop))
        await feed
        for _ in range(500):
            if worker.statistics().records >= records:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(serving, 5)


async def test_transactions_begin_at_most_once_per_commit_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A steady stream is committed in transactions at least the interval apart, each holding
    what arrived meanwhile; nothing is lost or committed twice."""
    cluster, harness, worker, began = paced(500, 60, monkeypatch)

    span: list[float] = []

    async def trickle() -> None:
        span.append(time.monotonic())
        for _ in range(60):
            await publish(cluster, harness, good=1, bad=0)
            await asyncio.sleep(0.005)
        span.append(time.monotonic())

    await serve_until(worker, 60, trickle())
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(began)]
    assert min(gaps) >= 0.055, gaps  # the clock's granularity aside
    # One transaction per 60 ms of arrivals (about 0.3 s of them on a quiet machine, longer
    # on a busy one), plus the ends: not one per record.
    assert len(began) <= math.ceil((span[1] - span[0]) / 0.060) + 3, (len(began), span)
    assert sum(n for _, n in began) == 60
    assert (await topic_counts(cluster))["tiaki.egress.oranga-tamariki"] == 60


async def test_a_record_after_a_quiet_interval_and_a_full_batch_do_not_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interval only spaces transactions: a record arriving long after the last one is
    committed at once, and a full batch goes without waiting for the interval to end."""
    cluster, harness, worker, began = paced(5, 2_000, monkeypatch)
    published: list[float] = []

    async def feed() -> None:
        await asyncio.sleep(0.05)  # the worker has joined and polled nothing yet
        published.append(time.monotonic())
        await publish(cluster, harness, good=1, bad=0)
        for _ in range(100):  # until it has begun that record's transaction
            if began:
                break
            await asyncio.sleep(0.01)
        published.append(time.monotonic())
        await publish(cluster, harness, good=15, bad=0)  # three full batches

    await serve_until(worker, 16, feed())
    assert began[0][0] - published[0] < 0.5  # not held for the 2 s interval
    assert [n for _, n in began] == [1, 5, 5, 5]
    assert began[-1][0] - published[1] < 1.0  # full batches: no interval between them


async def test_a_failed_poll_is_survived_and_loses_or_repeats_nothing() -> None:
    """A poll that fails with a retriable error (a seek that ran out of time, Kafka away)
    does not stop the worker: what it took since the last commit is thrown away and polled
    again, and each event is delivered and audited once, none quarantined as a replay."""
    cluster, harness, worker, metrics = setup(max_batch=5)
    cluster.delay_commits(0.003)  # so some polls fail while a commit is in flight
    await publish(cluster, harness, good=40, bad=0)
    stop = asyncio.Event()
    async with worker:
        serving = asyncio.create_task(worker.serve(stop))
        failures = 0
        for _ in range(3000):
            await asyncio.sleep(0.001)
            records = worker.statistics().records
            if failures < 4 and records >= failures * 8:
                failures += 1
                cluster.fail_next_poll()
            if records >= 40:
                break
        stop.set()
        await asyncio.wait_for(serving, 5)
    counts = await topic_counts(cluster)
    assert failures == 4
    assert worker.statistics().records == 40
    assert counts["tiaki.egress.oranga-tamariki"] == 40
    assert counts["tiaki.audit"] == 40
    value = metrics.registry.get_sample_value
    assert value("tiaki_quarantined_total", {"reason": "replayed"}) == 0  # exported from the start


async def test_a_poll_that_cannot_be_retried_stops_the_worker() -> None:
    cluster, _, worker, _ = setup()
    cluster.fail_next_poll(TransportError("refused", retriable=False))
    async with worker:
        with pytest.raises(TransportError, match="refused"):
            await asyncio.wait_for(worker.serve(asyncio.Event()), 5)
