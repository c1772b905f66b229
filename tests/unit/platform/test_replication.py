"""A cluster grown after its topics were made: provisioning never asks an existing topic for
more in-sync replicas than it has, and says which topics have fewer replicas than the
cluster's size calls for, and how to raise them.

Kafka accepts ``min.insync.replicas`` above a topic's replication factor and then refuses
every ``acks=all`` write to it with ``NOT_ENOUGH_REPLICAS``: provisioned on one broker (one
replica, min ISR 1), grown to three and provisioned again, every broker transaction would
fail and the broker would stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from broker.platform import (
    AUDIT,
    CHECKPOINTS,
    ActualState,
    DesiredState,
    TopicState,
    desired_state,
    diff,
    provision,
)
from tests.unit.platform.test_plan import REGISTRY, as_actual
from tests.unit.platform.test_provision import ADMIN, FakeAdmin, done, fake_cluster

MIN_ISR = "min.insync.replicas"


def with_replication(state: DesiredState, replication: int, **config: str) -> ActualState:
    """``state`` as a cluster holds it, every topic with ``replication`` replicas and the
    ``config`` given (``min_isr`` for ``min.insync.replicas``) over its own."""
    actual = as_actual(state)
    extra = {MIN_ISR: config["min_isr"]} if "min_isr" in config else {}
    topics = {
        name: TopicState(topic.partitions, {**topic.config, **extra}, replication)
        for name, topic in actual.topics.items()
    }
    return ActualState(topics, actual.principals, actual.acls)


def test_a_grown_cluster_never_raises_min_isr_above_a_topics_replicas() -> None:
    made_on_one = with_replication(desired_state(REGISTRY, brokers=1), 1)
    changes = diff(desired_state(REGISTRY, brokers=3), made_on_one)
    assert not [c for c in changes if MIN_ISR in c.detail and c.action != "warn"]
    assert not [c for c in changes if c.action != "warn"]
    warned = {c.subject: c.detail for c in changes if c.action == "warn"}
    assert set(warned) == set(made_on_one.topics)  # every topic, none left out
    audit = warned[AUDIT]
    assert audit.startswith(
        "replication 1, below the 3 this cluster calls for; min.insync.replicas held at 1 "
        "until then. Raise it by partition reassignment (provision does not): "
        "kafka-reassign-partitions.sh --bootstrap-server "
    )
    assert "each of its 3 partitions 3 replicas" in audit
    assert "each of its 1 partitions 3 replicas" in warned[CHECKPOINTS]


def test_a_topic_already_asking_too_much_is_brought_back_within_its_replicas() -> None:
    # A cluster the old provisioning left stalled: one replica, min ISR 2.
    stalled = with_replication(desired_state(REGISTRY, brokers=1), 1, min_isr="2")
    changes = [str(c) for c in diff(desired_state(REGISTRY, brokers=3), stalled)]
    assert f"~ topic {AUDIT}: {MIN_ISR} 2 -> 1" in changes


def test_min_isr_rises_once_the_replicas_are_there() -> None:
    raised = with_replication(desired_state(REGISTRY, brokers=1), 3)
    changes = diff(desired_state(REGISTRY, brokers=3), raised)
    assert not [c for c in changes if c.action == "warn"]
    assert f"~ topic {AUDIT}: {MIN_ISR} 1 -> 2" in [str(c) for c in changes]


def test_two_replicas_on_three_brokers_are_reported_but_hold_min_isr_two() -> None:
    two = with_replication(desired_state(REGISTRY, brokers=2), 2)
    changes = diff(desired_state(REGISTRY, brokers=3), two)
    assert not [c for c in changes if c.action != "warn"]
    detail = {c.subject: c.detail for c in changes}[AUDIT]
    assert detail.startswith("replication 2, below the 3 this cluster calls for. Raise it by ")
    assert "held at" not in detail


def test_a_topic_with_the_replicas_the_cluster_calls_for_is_not_reported() -> None:
    state = desired_state(REGISTRY, brokers=5)
    assert diff(state, with_replication(state, 3)) == []


class GrownCluster(FakeAdmin):
    """Provisioned on one broker; now three brokers, the topics still one replica each."""

    def __init__(self, extra: Iterable[Any] = ()) -> None:
        super().__init__(extra)
        self.altered: dict[str, dict[str, str]] = {}

    def describe_cluster(self, request_timeout: float) -> Future[Any]:
        return done(SimpleNamespace(nodes=[1, 2, 3]))

    def incremental_alter_configs(self, resources: list[Any]) -> dict[Any, Future[Any]]:
        for resource in resources:
            config = {e.name: e.value for e in resource.incremental_configs}
            self.altered[resource.name] = config
        return {r: done(None) for r in resources}


def test_provisioning_a_grown_cluster_sets_no_min_isr_its_topics_cannot_meet(
    tmp_path: Path,
) -> None:
    fake = GrownCluster()
    planned = provision(REGISTRY, ADMIN, tmp_path, dry_run=True, admin=fake_cluster(fake))
    topics = [c for c in planned.changes if c.kind == "topic"]
    assert len(topics) == len(fake.state.topics)
    assert {c.action for c in topics} == {"warn"}  # the dry run says so, and changes nothing
    assert all("kafka-reassign-partitions.sh" in c.detail for c in topics)
    provision(REGISTRY, ADMIN, tmp_path, admin=fake_cluster(fake))
    assert all(config.get(MIN_ISR) in (None, "1") for config in fake.altered.values())
    assert fake.altered == {}  # the rest matches already


def test_a_topics_replication_is_read_from_its_partitions_replicas() -> None:
    fake = FakeAdmin([])
    uneven = SimpleNamespace(
        partitions={
            0: SimpleNamespace(replicas=[1, 2, 3]),
            1: SimpleNamespace(replicas=[2]),  # a reassignment left half done
            2: SimpleNamespace(replicas=[3, 1, 2]),
        }
    )
    listed = fake.list_topics(1.0)
    listed.topics[AUDIT] = uneven
    fake.list_topics = lambda timeout: listed  # type: ignore[method-assign]
    state = fake_cluster(fake).read_state({})
    assert state.topics[AUDIT].replication == 1
    assert state.topics[AUDIT].partitions == 3
    assert state.topics[CHECKPOINTS].replication == 1
