"""The trust model as ACLs, checked without Kafka (the integration tests check it with)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from broker.platform import (
    AUDIT,
    CHECKPOINTS,
    DLQ,
    REVIEW,
    STATE_CASES,
    STATE_REQUESTS,
    STATE_SEEN,
    STATE_TALLIES,
    ActualState,
    DesiredState,
    TopicSpec,
    TopicState,
    desired_state,
    diff,
    egress,
    ingress,
)
from broker.platform._plan import Acl
from broker.registry import Registry, load_registry

ROOT = Path(__file__).resolve().parents[3]
REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")


def as_actual(state: DesiredState) -> ActualState:
    return ActualState(
        {
            n: TopicState(s.partitions, dict(s.config), s.replication)
            for n, s in state.topics.items()
        },
        state.principals,
        state.acls,
    )


def acls_of(state: DesiredState, name: str) -> set[Acl]:
    return {a for a in state.acls if a.principal == f"User:{name}"}


def test_agency_acls_are_exactly_its_ingress_egress_and_groups() -> None:
    state = desired_state(REGISTRY, brokers=1)
    for agency in REGISTRY.agencies:
        expected = {
            Acl(f"User:{agency.id}", "TOPIC", ingress(agency.id), "LITERAL", "WRITE"),
            Acl(f"User:{agency.id}", "TOPIC", egress(agency.id), "LITERAL", "READ"),
            Acl(f"User:{agency.id}", "GROUP", f"{agency.id}.", "PREFIXED", "READ"),
            # every agency witnesses the audit log's signed checkpoints (hashes only)
            Acl(f"User:{agency.id}", "TOPIC", CHECKPOINTS, "LITERAL", "READ"),
        }
        if agency.kind.value == "regional_hub":
            expected.add(
                Acl(f"User:{agency.id}", "TOPIC", f"tiaki.hub.{agency.region}", "LITERAL", "READ")
            )
        assert acls_of(state, agency.id) == expected


def test_compliance_reads_audit_and_its_groups_only() -> None:
    state = desired_state(REGISTRY, brokers=1)
    assert acls_of(state, "compliance") == {
        Acl("User:compliance", "TOPIC", AUDIT, "LITERAL", "READ"),
        Acl("User:compliance", "TOPIC", CHECKPOINTS, "LITERAL", "READ"),
        Acl("User:compliance", "GROUP", "compliance.", "PREFIXED", "READ"),
    }


def test_admin_never_reads_or_writes_agency_topics() -> None:
    state = desired_state(REGISTRY, brokers=1)
    data_ops = {a for a in acls_of(state, "admin") if a.operation in {"READ", "WRITE"}}
    assert data_ops == {Acl("User:admin", "TOPIC", "tiaki.policy", "LITERAL", "WRITE")}


def test_only_the_broker_reads_more_than_one_agency() -> None:
    state = desired_state(REGISTRY, brokers=1)
    wide = {
        a.principal
        for a in state.acls
        if a.pattern == "PREFIXED" and a.resource_type == "TOPIC" and a.operation == "READ"
    }
    assert wide == {"User:broker"}


def test_replication_and_min_isr_follow_cluster_size() -> None:
    one = desired_state(REGISTRY, brokers=1).topics[AUDIT]
    five = desired_state(REGISTRY, brokers=5).topics[AUDIT]
    assert (one.replication, one.config["min.insync.replicas"]) == (1, "1")
    assert (five.replication, five.config["min.insync.replicas"]) == (3, "2")


def test_state_and_policy_topics_are_compacted() -> None:
    topics = desired_state(REGISTRY, brokers=1).topics
    assert topics["tiaki.state.cases"].config["cleanup.policy"] == "compact"
    assert topics["tiaki.policy"].config["cleanup.policy"] == "compact"
    assert int(topics[AUDIT].config["retention.ms"]) >= 7 * 365 * 86_400_000


def test_only_time_removes_records_from_delete_topics() -> None:
    """A cluster's log.retention.bytes must not cut the audit log (or unread records) short."""
    topics = desired_state(REGISTRY, brokers=1).topics
    deleting = [t for t in topics.values() if t.config["cleanup.policy"] == "delete"]
    assert AUDIT in {t.name for t in deleting}
    assert {t.config.get("retention.bytes") for t in deleting} == {"-1"}


def test_diff_of_a_matching_cluster_is_empty() -> None:
    state = desired_state(REGISTRY, brokers=1)
    assert diff(state, as_actual(state)) == []


def test_an_acl_for_one_host_is_told_apart_and_named_with_its_host() -> None:
    state = desired_state(REGISTRY, brokers=1)
    granted = Acl("User:police", "TOPIC", egress("police"), "LITERAL", "READ")
    assert granted in state.acls
    one_host = Acl("User:police", "TOPIC", egress("police"), "LITERAL", "READ", "10.0.0.5")
    actual = as_actual(state)
    changes = diff(state, ActualState(actual.topics, actual.principals, actual.acls | {one_host}))
    assert [str(c) for c in changes] == [
        f"- acl User:police READ topic {egress('police')} from 10.0.0.5: not granted by the registry"
    ]


def test_diff_removes_extras_but_keeps_protected_users_and_never_deletes_topics() -> None:
    state = desired_state(REGISTRY, brokers=1)
    extra = Acl("User:police", "TOPIC", egress("msd"), "LITERAL", "READ")
    actual = as_actual(state)
    actual = ActualState(
        dict(actual.topics) | {"tiaki.ingress.gone": TopicState(3, {}, 1)},
        actual.principals | {"internal", "gone"},
        actual.acls | {extra},
    )
    changes = [str(c) for c in diff(state, actual, protected=["internal"])]
    assert changes == [
        "! topic tiaki.ingress.gone: not in the registry; holds data, so not deleted",
        "- principal gone: no longer in the registry",
        f"- acl {extra}: not granted by the registry",
    ]


def test_diff_reports_config_drift_and_grows_an_unkeyed_topic() -> None:
    state = desired_state(REGISTRY, brokers=1)
    unkeyed = TopicSpec("tiaki.unkeyed", 3, 1, {"cleanup.policy": "delete"}, keyed=False)
    state = DesiredState(dict(state.topics) | {unkeyed.name: unkeyed}, state.principals, state.acls)
    actual = as_actual(state)
    topics = dict(actual.topics)
    topics[AUDIT] = TopicState(3, {**topics[AUDIT].config, "retention.ms": "1000"}, 1)
    topics[unkeyed.name] = TopicState(1, dict(unkeyed.config), 1)
    changes = [str(c) for c in diff(state, ActualState(topics, actual.principals, actual.acls))]
    assert "~ topic tiaki.unkeyed: partitions 1 -> 3" in changes
    assert any(c.startswith("~ topic tiaki.audit: retention.ms 1000 -> ") for c in changes)


def test_only_unkeyed_topics_are_marked_so() -> None:
    topics = desired_state(REGISTRY, brokers=1).topics
    assert {n for n, s in topics.items() if not s.keyed} == {STATE_SEEN, CHECKPOINTS, STATE_TALLIES}


def test_diff_never_grows_a_compacted_or_keyed_topic() -> None:
    # Provisioned with 3 partitions, then `tiaki provision --partitions 4`: a case key would
    # move partition, leaving a stale compacted record (a removed member, an open case) behind
    # or splitting a case's ingress records out of order.
    actual = as_actual(desired_state(REGISTRY, brokers=1, partitions=3))
    changes = diff(desired_state(REGISTRY, brokers=1, partitions=4), actual)
    assert not [c for c in changes if c.action != "warn"]
    refused = {c.subject: c.detail for c in changes}
    for name in (STATE_CASES, STATE_REQUESTS):
        assert refused[name].startswith("has 3 partitions, fewer than 4; not grown: compacted")
    for name in (ingress("police"), egress("msd"), REVIEW, DLQ, AUDIT):
        assert refused[name].startswith("has 3 partitions, fewer than 4; not grown: keyed by case")


@given(st.sets(st.sampled_from(REGISTRY.ids), min_size=1))
def test_no_agency_is_granted_another_agencys_topic(ids: set[str]) -> None:
    registry = Registry(
        version=1, regions=REGISTRY.regions, agencies=[a for a in REGISTRY.agencies if a.id in ids]
    )
    state = desired_state(registry, brokers=3)
    for agency in registry.agencies:
        for acl in acls_of(state, agency.id):
            if acl.resource_type == "TOPIC" and acl.resource_name.startswith(
                ("tiaki.ingress.", "tiaki.egress.")
            ):
                assert acl.resource_name.rsplit(".", 1)[1] == agency.id
            assert acl.pattern == "LITERAL" or acl.resource_type == "GROUP"


def test_the_broker_reads_and_writes_the_checkpoints_it_countersigns() -> None:
    """``tiaki audit countersign`` runs as the broker: it reads every checkpoint, then writes
    the new key's (docs/compliance.md, "Countersigning at rotation time")."""
    state = desired_state(REGISTRY, brokers=1)
    assert {a.operation for a in acls_of(state, "broker") if a.resource_name == CHECKPOINTS} == {
        "READ",
        "WRITE",
    }
