"""A worker looks for the topics it writes: it refuses to start without a platform topic, and
holds shares for an agency whose egress topic is missing instead of stalling every agency's
sharing behind transactions that cannot commit."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from broker._errors import ConfigError
from broker.platform import CHECKPOINTS, POLICY, STATE_CHAINS, egress
from broker.platform._topics import PLATFORM_TOPICS
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._service import (
    WRITTEN_TOPICS,
    check_topics,
    note_unreachable,
    watch_egress,
)
from broker.transport import InMemoryCluster, Unavailable
from tests.unit.adapters.conftest import eventually
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider

AGENCIES = ("police", "corrections", "msd")


def provisioned(*without: str) -> InMemoryCluster:
    cluster = InMemoryCluster.provisioned(AGENCIES)
    cluster.create_topic(STATE_CHAINS, 1)
    cluster.create_topic(CHECKPOINTS, 1)
    for topic in without:
        cluster.delete_topic(topic)
    return cluster


def missing_gauge(metrics: BrokerMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        agency: float(line.rsplit(" ", 1)[1])
        for agency in AGENCIES
        for line in text.splitlines()
        if line.startswith(f'tiaki_egress_topic_missing{{agency="{agency}"}}')
    }


async def test_the_agencies_without_an_egress_topic_are_found_at_start() -> None:
    cluster = provisioned(egress("msd"))
    assert await check_topics(cluster.reader(), AGENCIES) == {"msd"}
    assert await check_topics(provisioned().reader(), AGENCIES) == frozenset()


def test_every_platform_topic_a_worker_writes_is_looked_for() -> None:
    """The platform topics are all written by workers except ``tiaki.policy`` (the admin
    publishes it, workers read it): a topic added to the platform is looked for too."""
    assert set(WRITTEN_TOPICS) == set(PLATFORM_TOPICS) - {POLICY}


@pytest.mark.parametrize("topic", WRITTEN_TOPICS)
async def test_a_worker_refuses_to_start_without_a_topic_every_transaction_writes(
    topic: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        await check_topics(provisioned(topic, egress("msd")).reader(), AGENCIES)
    assert str(refused.value) == (
        f"Kafka has no {topic} (or the broker may not see it): run `tiaki provision`, "
        "then start the broker"
    )


async def test_the_worker_follows_egress_topics_as_they_come_and_go() -> None:
    cluster = provisioned(egress("msd"))
    pipeline = Harness(ScriptedDecider()).pipeline
    metrics = BrokerMetrics(CollectorRegistry())
    metrics.expect_recipients(AGENCIES)
    with structlog.testing.capture_logs() as logs:
        note_unreachable(pipeline, metrics, AGENCIES, frozenset({"msd"}))
    assert pipeline.unreachable == {"msd"}
    assert missing_gauge(metrics) == {"police": 0.0, "corrections": 0.0, "msd": 1.0}
    assert [(e["log_level"], e["agency"]) for e in logs] == [("error", "msd")]

    stop = asyncio.Event()
    async with cluster.worker() as transport:
        watching = asyncio.create_task(
            watch_egress(transport, pipeline, metrics, AGENCIES, stop, every=0.01)
        )
        with structlog.testing.capture_logs() as logs:
            cluster.create_topic(egress("msd"))
            await eventually(lambda: not pipeline.unreachable)
            assert missing_gauge(metrics) == {"police": 0.0, "corrections": 0.0, "msd": 0.0}

            cluster.delete_topic(egress("corrections"))
            await eventually(lambda: pipeline.unreachable == {"corrections"})
            assert missing_gauge(metrics)["corrections"] == 1.0
        stop.set()
        await asyncio.wait_for(watching, 1)
    # One line per change, naming the agencies, nothing else.
    assert [(e["log_level"], e["agency"]) for e in logs] == [
        ("info", "msd"),
        ("error", "corrections"),
    ]


async def test_the_watch_waits_out_a_transport_that_is_not_open() -> None:
    """Before the worker has started its transport (or after Kafka went away) a look fails;
    the watch keeps what it knew and looks again, rather than stopping the worker."""
    cluster = provisioned(egress("msd"))
    pipeline = Harness(ScriptedDecider()).pipeline
    pipeline.unreachable = frozenset({"msd"})
    metrics = BrokerMetrics(CollectorRegistry())
    stop = asyncio.Event()
    transport = cluster.worker()  # not started
    watching = asyncio.create_task(
        watch_egress(transport, pipeline, metrics, AGENCIES, stop, every=0.01)
    )
    await asyncio.sleep(0.05)
    assert not watching.done()
    assert pipeline.unreachable == {"msd"}
    async with transport:  # the first look that works
        await eventually(
            lambda: missing_gauge(metrics) == {"police": 0, "corrections": 0, "msd": 1}
        )
        cluster.create_topic(egress("msd"))
        await eventually(lambda: not pipeline.unreachable)
    stop.set()
    await asyncio.wait_for(watching, 1)


async def test_a_run_of_failed_looks_is_logged_once_and_changes_nothing() -> None:
    """Kafka's metadata unanswered: the agencies held stay held (the last look stands), and
    the worker says once why no `egress topics found` comes."""

    class Flaky:
        def __init__(self) -> None:
            self.answers: list[frozenset[str] | Exception] = [
                Unavailable("metadata"),
                Unavailable("metadata"),
                frozenset(),
            ]

        async def missing_topics(self, topics: object) -> frozenset[str]:
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(answer, Exception):
                raise answer
            return answer

    flaky = Flaky()
    pipeline = Harness(ScriptedDecider()).pipeline
    pipeline.unreachable = frozenset({"msd"})
    stop = asyncio.Event()
    metrics = BrokerMetrics(CollectorRegistry())
    with structlog.testing.capture_logs() as logs:
        watching = asyncio.create_task(
            watch_egress(flaky, pipeline, metrics, AGENCIES, stop, every=0.01)  # type: ignore[arg-type]
        )
        await eventually(lambda: len(flaky.answers) == 1)
        await eventually(lambda: not pipeline.unreachable)
        stop.set()
        await asyncio.wait_for(watching, 1)
    assert [(e["log_level"], e.get("error_type"), e.get("agency")) for e in logs] == [
        ("warning", "Unavailable", None),
        ("info", None, "msd"),
    ]
