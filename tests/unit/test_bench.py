"""The benchmarks still run: their stand-ins keep up with the worker's interface, and the
offline pipeline run prints its figure (no Kafka; the real runs are in ``make bench``)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from prometheus_client import CollectorRegistry

from bench import broker_bench
from bench.broker_bench import Assigned, PassThrough, Phases, Timed, cpu_seconds, offline
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._service import ServiceOptions
from broker.runtime._worker import Worker
from broker.transport import InMemoryCluster
from tests.unit.runtime.test_intake import NOW, REGISTRY


async def test_the_pass_through_pipeline_drives_the_worker() -> None:
    """B0R-EOS's stand-in pipeline: what the worker asks of a pipeline, it answers (it broke
    once when the worker began asking for the batch's replay-state record)."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    outputs = ["tiaki.egress.police", "tiaki.egress.msd"]
    worker = Worker(
        cluster.worker(),
        PassThrough(outputs),  # type: ignore[arg-type]
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
    )
    async with cluster.publisher() as publisher:
        for i in range(12):
            await publisher.publish("tiaki.ingress.police", b"SYN-CASE-%d" % i, b"x%d" % i)
    async with worker:
        done = 0
        for _ in range(100):
            done += await worker.step()
            if done >= 12:
                break
    async with cluster.reader() as reader:
        for topic in outputs:
            assert sorted(r.value for r in await reader.read_all(topic)) == sorted(
                b"x%d" % i for i in range(12)
            )


def test_the_offline_pipeline_run_prints_its_figure(capsys: pytest.CaptureFixture[str]) -> None:
    offline(20, warm=5)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pipeline alone: ")
    assert "µs per event" in line
    assert "20 events" in line


async def test_the_latency_phases_account_for_each_events_whole_time() -> None:
    """The open-loop runs split each event's latency at the worker's poll and its commit;
    the stamps come from the worker's own transport, and the phases add up to the total."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    timed = Timed(cluster.worker(), stamps=True)
    worker = Worker(
        timed,
        PassThrough(["tiaki.egress.police"]),  # type: ignore[arg-type]
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
    )
    keys = [b"SYN-CASE-%03d" % i for i in range(200)]
    async with cluster.publisher() as publisher:
        for key in keys:
            await publisher.publish("tiaki.ingress.police", key, b"x")
    async with worker:
        done = 0
        for _ in range(100):
            done += await worker.step()
            if done >= len(keys):
                break
    assert timed.stamps is not None
    assert timed.committed_since_first == len(keys)
    assert timed.cpu_last[0] >= timed.cpu_first[0] > 0  # this process, from the first fetch
    assert timed.cpu_last[1] == 0.0  # no Kafka node named
    for key in keys:
        polled, began, ended = timed.stamps[key]
        assert 0 < polled <= began <= ended
    # Scheduled 1 ms before the poll; received 2 ms after the commit, 50 ms for the slowest.
    arrivals = [
        (k.decode(), timed.stamps[k][0] - 10**6, timed.stamps[k][2] + (50 if i == 0 else 2) * 10**6)
        for i, k in enumerate(keys)
    ]
    phases = Phases.of(arrivals, timed.stamps)
    assert phases is not None
    assert phases.events == len(keys)
    assert phases.p50["queued"] == pytest.approx(1.0)
    assert phases.p50["after"] == pytest.approx(2.0)
    assert phases.slowest["after"] == pytest.approx((50 + 2) / 2)  # the slowest two of 200
    for values in (phases.p50, phases.slowest):
        assert values["total"] >= values["queued"] + values["after"]
    slowest = phases.slowest
    assert slowest["total"] == pytest.approx(sum(slowest[n] for n in Phases.NAMES))
    assert "slowest 1 %" in phases.summary()
    # An event the worker never committed (or never saw) is left out, not counted as zero.
    assert Phases.of([("SYN-CASE-unknown", 0, 1)], timed.stamps) is None


def test_cpu_seconds_reads_this_process_and_a_node_by_pid() -> None:
    sum(i * i for i in range(200_000))  # some CPU to see
    assert cpu_seconds() > 0
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(2**22 + 12345) == 0.0  # no such process (above pid_max's default)


async def test_a_scale_out_worker_fetches_only_once_it_holds_its_share_and_reports_commits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The scale-out drain's workers wait for exactly their share of partitions before the
    first fetch (so no rebalance falls inside the timed window), then print one JSON line per
    commit, which the parent sums."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    inner = cluster.worker()
    await inner.start()
    held = len(inner.assignment())
    assert held > 0
    waiting = Assigned(inner, held + 1)
    with pytest.raises(TimeoutError):  # never holds more than it holds: it never fetches
        await asyncio.wait_for(waiting.poll(10, 10), 0.2)
    assert not waiting.first

    async with cluster.publisher() as publisher:
        for i in range(5):
            await publisher.publish("tiaki.ingress.police", b"SYN-CASE-%d" % i, b"x")
    sharing = Assigned(inner, held, report=True)
    records = []
    for _ in range(50):
        records += await sharing.poll(10, 10)
        if len(records) >= 5:
            break
    await sharing.commit([], records)
    await inner.close()
    progress = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert progress["committed"] == 5
    assert progress["last"] >= progress["first"] > 0
    assert progress["cpu"] >= 0


def test_a_bad_commit_interval_is_one_line_and_a_good_one_reaches_the_workers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as raised:
        broker_bench.main(["--commit-interval-ms", "-5"])
    assert raised.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("--commit-interval-ms must be from 0 to 10000")
    )
    monkeypatch.setattr(broker_bench, "commit_interval_ms", 75)
    assert broker_bench.service_options().commit_interval_ms == 75
    monkeypatch.setattr(broker_bench, "commit_interval_ms", None)
    assert broker_bench.service_options().commit_interval_ms == ServiceOptions().commit_interval_ms


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.49])
async def test_the_rate_search_closes_in_on_where_the_target_stops_holding(
    threshold: float,
) -> None:
    """p99 grows with the load and crosses the target at ``threshold``: the bisection brackets
    it within the gap left after its steps, and runs exactly that many steps."""
    tried: list[float] = []

    async def p99_at(fraction: float) -> float:
        tried.append(fraction)
        return 50.0 + 100.0 * fraction / threshold  # 150 ms exactly at the threshold

    low, high = await broker_bench.highest_meeting(p99_at, 0.0, 0.5, 150.0, 6)
    assert len(tried) == 6
    assert low <= threshold < high
    assert high - low == pytest.approx(0.5 / 2**6)
    assert max(f for f in tried if f <= threshold) == low  # the last step that met it


async def test_the_rate_search_reports_none_met_when_every_step_misses() -> None:
    async def always_missed(fraction: float) -> float:
        return 1_000.0

    low, high = await broker_bench.highest_meeting(always_missed, 0.0, 0.25, 90.0, 4)
    assert low == 0.0
    assert high == pytest.approx(0.25 / 16)
