"""The audit log's topics are stamped by Kafka, not by whoever writes them: ``tiaki audit
verify`` tells from a record's append time how long it has gone without a checkpoint
(docs/compliance.md, "Limits")."""

from __future__ import annotations

from broker.platform import AUDIT, CHECKPOINTS, ActualState, TopicState, desired_state, diff
from tests.unit.platform.test_plan import REGISTRY, as_actual

STAMP = "message.timestamp.type"


def test_the_audit_topics_carry_the_time_kafka_appended_each_record() -> None:
    topics = desired_state(REGISTRY, brokers=3).topics
    assert {n for n, s in topics.items() if STAMP in s.config} == {AUDIT, CHECKPOINTS}
    assert topics[AUDIT].config[STAMP] == topics[CHECKPOINTS].config[STAMP] == "LogAppendTime"


def test_provision_sets_it_on_audit_topics_made_before() -> None:
    state = desired_state(REGISTRY, brokers=1)
    actual = as_actual(state)
    topics = dict(actual.topics)
    for name in (AUDIT, CHECKPOINTS):
        old = topics[name]
        config = {**old.config, STAMP: "CreateTime"}  # Kafka's default
        topics[name] = TopicState(old.partitions, config, old.replication)
    changes = [str(c) for c in diff(state, ActualState(topics, actual.principals, actual.acls))]
    assert changes == [
        f"~ topic {AUDIT}: {STAMP} CreateTime -> LogAppendTime",
        f"~ topic {CHECKPOINTS}: {STAMP} CreateTime -> LogAppendTime",
    ]
