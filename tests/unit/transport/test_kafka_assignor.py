"""Case ownership on Kafka: the consumer uses the range assignor, which gives one worker
partition p of every ingress topic (aiokafka's default, round-robin, splits them), and a
subscription whose topics differ in partition count is reported. The assignor runs offline."""

from __future__ import annotations

import pytest
import structlog
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from broker.platform import Profile, ingress
from broker.transport import InMemoryCluster
from broker.transport._kafka import KafkaTransport, copartitioning_problem
from tests.unit.runtime.test_intake import REGISTRY

PROFILE = Profile(
    bootstrap_servers="127.0.0.1:1",
    sasl_plain_username="broker",
    sasl_plain_password="synthetic-password",
    ssl_cafile="/nonexistent/ca.pem",
)


async def test_the_consumer_is_built_with_the_range_assignor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Profile, "aiokafka_kwargs", lambda self: {"bootstrap_servers": "x:1"})
    transport = KafkaTransport(PROFILE, worker_id="0", consumer_options={"fetch_max_wait_ms": 5})
    consumer = transport._new_consumer()
    assert consumer._partition_assignment_strategy == (RangePartitionAssignor,)
    await consumer.stop()  # never started: releases the client it made


def test_consumer_options_cannot_choose_another_assignor() -> None:
    with pytest.raises(ValueError, match="partition_assignment_strategy"):
        KafkaTransport(
            PROFILE, worker_id="0", consumer_options={"partition_assignment_strategy": ()}
        )
    with pytest.raises(ValueError, match="isolation_level"):
        KafkaTransport(PROFILE, worker_id="0", consumer_options={"isolation_level": "x"})


class _Metadata:
    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self._counts[topic]))


@pytest.mark.parametrize("members", [2, 3])
def test_the_range_assignor_co_partitions_the_provisioned_ingress_topics(members: int) -> None:
    counts = {
        t: n
        for t, n in InMemoryCluster.provisioned(REGISTRY.ids).topics().items()
        if t.startswith("tiaki.ingress.")
    }
    assert len(counts) == len(REGISTRY.ids)
    topics = sorted(counts)
    metadata = {f"worker-{m}": RangePartitionAssignor.metadata(topics) for m in range(members)}
    assigned = RangePartitionAssignor.assign(_Metadata(counts), metadata)
    owner: dict[tuple[str, int], str] = {}
    for member, assignment in assigned.items():
        for topic, partitions in assignment.assignment:
            for partition in partitions:
                owner[(topic, partition)] = member
    assert len(owner) == sum(counts.values())  # every partition has one owner
    for partition in range(counts[ingress("police")]):
        assert len({owner[(t, partition)] for t in topics}) == 1  # one worker per p
    assert len(set(owner.values())) == min(members, counts[ingress("police")])


def test_topics_that_differ_in_partition_count_are_named() -> None:
    assert copartitioning_problem({ingress("police"): 3, ingress("msd"): 3}) is None
    assert copartitioning_problem({}) is None
    problem = copartitioning_problem({ingress("police"): 3, ingress("msd"): 6})
    assert (
        problem
        == "ingress topics differ in partition count (3: tiaki.ingress.police; 6: tiaki.ingress.msd)"
    )


def test_an_assignment_over_unequal_topics_is_logged_and_counted_as_a_new_generation() -> None:
    transport = KafkaTransport(PROFILE, worker_id="0")

    class Consumer:
        class _client:
            cluster = _Metadata({ingress("police"): 3, ingress("msd"): 6})

        def subscription(self) -> set[str]:
            return {ingress("police"), ingress("msd")}

    transport._consumer = Consumer()  # type: ignore[assignment]
    generation = transport.assignment_generation()
    with structlog.testing.capture_logs() as logs:
        transport._assigned(frozenset({(ingress("police"), 0)}))
    assert transport.assignment_generation() == generation + 1
    assert transport.copartitioning is not None
    assert [entry["log_level"] for entry in logs] == ["error"]
    assert "co-partitioned" in str(logs[0]["event"])
    # The same partitions again: still a new generation.
    transport._assigned(frozenset({(ingress("police"), 0)}))
    assert transport.assignment_generation() == generation + 2
