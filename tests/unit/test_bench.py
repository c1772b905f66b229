"""The benchmarks still run: their stand-ins keep up with the worker's interface, and the
offline pipeline run prints its figure (no Kafka; the real runs are in ``make bench``)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from bench.broker_bench import PassThrough, offline
from broker.runtime._metrics import BrokerMetrics
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
