"""What the cluster should look like, worked out from the registry alone (pure).

The trust model in ACLs:

- an agency writes only ``tiaki.ingress.<id>``, reads only ``tiaki.egress.<id>`` (and, for a
  regional hub, ``tiaki.hub.<region>``), and uses only consumer groups named ``<id>.*``;
- the broker reads every ingress topic and writes every egress topic, audit, quarantine,
  review and state, in transactions under ``tiaki-broker*`` ids;
- compliance reads the audit log (``tiaki.audit`` and its ``tiaki.checkpoints``) and nothing
  else; every agency may also read ``tiaki.checkpoints`` (signed hashes only) as a witness;
- admin administers topics, ACLs and credentials and may publish signed policy bundles, but
  reads and writes no agency's data.

:func:`diff` compares this with what a cluster reports and lists the changes, so
``tiaki provision --dry-run`` and the real run print the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from broker.platform import _topics as t
from broker.registry import Registry

DAY_MS = 86_400_000

#: Consumer groups of agency adapters, compliance readers, and the broker's workers.
_CLUSTER = "kafka-cluster"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW ACL. Tiaki never uses DENY (absence is denial) and grants only for any host
    (``*``); a cluster's ACL for one host is read with that host, so it can be told apart."""

    principal: str
    resource_type: str  # TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID
    resource_name: str
    pattern: str  # LITERAL or PREFIXED
    operation: str  # READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, ALTER_CONFIGS, ...
    host: str = "*"

    def __str__(self) -> str:
        star = "*" if self.pattern == "PREFIXED" else ""
        text = f"{self.principal} {self.operation} {self.resource_type.lower()} {self.resource_name}{star}"
        return text if self.host == "*" else f"{text} from {self.host}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)
    #: Records carry a key whose partition matters (a case or request id): adding partitions
    #: would move keys, so :func:`diff` never grows such a topic. Unknown means keyed.
    keyed: bool = True


@dataclass(frozen=True)
class DesiredState:
    topics: Mapping[str, TopicSpec]
    principals: frozenset[str]
    acls: frozenset[Acl]


@dataclass(frozen=True)
class TopicState:
    """An existing topic as the cluster reports it."""

    partitions: int
    #: The values of the configs a :class:`TopicSpec` sets (others are not read).
    config: Mapping[str, str]
    #: Its replication factor: the fewest replicas any of its partitions has, since that
    #: partition is where an ``acks=all`` write runs short of replicas first.
    replication: int


@dataclass(frozen=True)
class ActualState:
    """What a cluster reports: topics (partitions, tracked configs, replication), SCRAM users,
    ACLs."""

    topics: Mapping[str, TopicState]
    principals: frozenset[str]
    acls: frozenset[Acl]


@dataclass(frozen=True)
class Change:
    action: str  # create, alter, add, remove, warn
    kind: str  # topic, principal, acl
    subject: str
    detail: str = ""
    #: The ACL an ``add``/``remove acl`` change is about, for the code that applies it.
    acl: Acl | None = field(default=None, compare=False)

    def __str__(self) -> str:
        sign = {"create": "+", "add": "+", "remove": "-", "alter": "~", "warn": "!"}[self.action]
        text = f"{sign} {self.kind} {self.subject}"
        return f"{text}: {self.detail}" if self.detail else text


def _topic_classes(retention_days: Mapping[str, int]) -> dict[str, dict[str, str]]:
    def delete(days: int) -> dict[str, str]:
        # Time alone removes records: a cluster-wide log.retention.bytes must not cut the
        # audit log (or anything not yet read) short, so the size limit is pinned off.
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(days * DAY_MS),
            "retention.bytes": "-1",
        }

    return {
        "ingress": delete(retention_days["ingress"]) | {"max.message.bytes": "1048576"},
        "egress": delete(retention_days["egress"]) | {"max.message.bytes": "1048576"},
        # A record's timestamp is the time Kafka appended it, not one its writer chose, so
        # `tiaki audit verify` can tell how long a record has gone without a checkpoint: one
        # appended by someone else who can write the topic is not signed within a minute.
        "audit": delete(retention_days["audit"]) | {"message.timestamp.type": "LogAppendTime"},
        "review": delete(retention_days["review"]),
        "dlq": delete(retention_days["dlq"]) | {"max.message.bytes": "2097152"},
        "hub": delete(retention_days["hub"]),
        "seen": delete(retention_days["seen"]),
        "compacted": {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        # One record per counted unit (its key), for as long as a hub may ask for its month.
        "tallies": delete(retention_days["tallies"])
        | {"cleanup.policy": "compact,delete", "min.compaction.lag.ms": "60000"},
    }


#: Retention per topic class, in days (documented in docs/operations.md). Ingress, review
#: and quarantine hold sealed data only briefly (IPP 9); the audit log is kept seven years so
#: that good-faith disclosures (FVA s25) can be shown long after.
RETENTION_DAYS: Mapping[str, int] = {
    "ingress": 7,
    "egress": 14,
    "review": 30,
    "dlq": 30,
    "hub": 400,
    "tallies": 400,
    "audit": 2557,
    # The replay window is 24 hours: what was admitted before that is refused as stale anyway.
    "seen": 2,
}


#: The config that says how many replicas must have an ``acks=all`` write before it succeeds.
MIN_ISR = "min.insync.replicas"


def desired_state(registry: Registry, brokers: int, partitions: int = 3) -> DesiredState:
    """The topics, principals and ACLs the registry calls for on a cluster of ``brokers``."""
    replication = min(3, max(1, brokers))
    min_isr = str(min(2, replication))
    classes = _topic_classes(RETENTION_DAYS)

    topics: dict[str, TopicSpec] = {}

    def topic(name: str, cls: str, count: int = partitions, keyed: bool = True) -> None:
        config = dict(classes[cls]) | {MIN_ISR: min_isr}
        topics[name] = TopicSpec(name, count, replication, config, keyed)

    for agency in registry.agencies:
        topic(t.ingress(agency.id), "ingress")
        topic(t.egress(agency.id), "egress")
    for region in registry.hub_regions:
        topic(t.hub(region), "hub", 1)
    topic(t.AUDIT, "audit")
    topic(t.REVIEW, "review")
    topic(t.DLQ, "dlq")
    topic(t.STATE_CASES, "compacted")
    topic(t.STATE_REQUESTS, "compacted")
    topic(t.POLICY, "compacted", 1)
    topic(t.STATE_CHAINS, "compacted", 1)
    # Ingress, egress, review, quarantine and audit records are keyed by case (or request) so
    # that one case stays in order on one partition; the state topics by case or request id.
    # Only these two are not: seen records carry no key, checkpoints one per writer (chain).
    topic(t.STATE_SEEN, "seen", 1, keyed=False)
    # Checkpoints are the witnesses' copy of the audit log's heads: kept as long as the log.
    topic(t.CHECKPOINTS, "audit", 1, keyed=False)
    # Keyed by a keyed hash of the counted unit, not by case: one partition, read whole.
    topic(t.STATE_TALLIES, "tallies", 1, keyed=False)

    acls: set[Acl] = set()

    def allow(
        principal: str, rtype: str, name: str, ops: Iterable[str], pattern: str = "LITERAL"
    ) -> None:
        acls.update(Acl(t.user(principal), rtype, name, pattern, op) for op in ops)

    for agency in registry.agencies:
        allow(agency.id, "TOPIC", t.ingress(agency.id), ["WRITE"])
        allow(agency.id, "TOPIC", t.egress(agency.id), ["READ"])
        allow(agency.id, "GROUP", t.group_prefix(agency.id), ["READ"], "PREFIXED")
        if agency.kind.value == "regional_hub":
            allow(agency.id, "TOPIC", t.hub(agency.region), ["READ"])
        # Every agency is a witness of the audit log (checkpoints hold hashes only).
        allow(agency.id, "TOPIC", t.CHECKPOINTS, ["READ"])

    allow(t.BROKER, "TOPIC", t.INGRESS_PREFIX, ["READ"], "PREFIXED")
    allow(t.BROKER, "TOPIC", t.EGRESS_PREFIX, ["WRITE"], "PREFIXED")
    allow(t.BROKER, "TOPIC", t.HUB_PREFIX, ["WRITE"], "PREFIXED")
    allow(t.BROKER, "TOPIC", t.AUDIT, ["WRITE"])
    for name in (
        t.REVIEW,
        t.DLQ,
        t.STATE_CASES,
        t.STATE_REQUESTS,
        t.STATE_CHAINS,
        t.STATE_SEEN,
        t.STATE_TALLIES,
    ):
        allow(t.BROKER, "TOPIC", name, ["READ", "WRITE"])
    # Read too: `tiaki audit countersign` (the broker's principal) re-signs checkpoints.
    allow(t.BROKER, "TOPIC", t.CHECKPOINTS, ["READ", "WRITE"])
    allow(t.BROKER, "TOPIC", t.POLICY, ["READ"])
    allow(t.BROKER, "GROUP", t.BROKER_GROUP_PREFIX, ["READ"], "PREFIXED")
    allow(t.BROKER, "TRANSACTIONAL_ID", t.BROKER_GROUP_PREFIX, ["WRITE"], "PREFIXED")

    allow(t.COMPLIANCE, "TOPIC", t.AUDIT, ["READ"])
    allow(t.COMPLIANCE, "TOPIC", t.CHECKPOINTS, ["READ"])
    allow(t.COMPLIANCE, "GROUP", t.group_prefix(t.COMPLIANCE), ["READ"], "PREFIXED")

    acls.update(admin_acls())

    principals = frozenset(registry.ids) | frozenset(t.SERVICE_PRINCIPALS)
    return DesiredState(topics, principals, frozenset(acls))


def admin_acls() -> frozenset[Acl]:
    """The admin principal's rights: administration, and publishing signed policy bundles."""
    admin = t.user(t.ADMIN)
    cluster_ops = ("ALTER", "DESCRIBE", "CREATE", "ALTER_CONFIGS", "DESCRIBE_CONFIGS")
    topic_ops = ("CREATE", "DELETE", "ALTER", "DESCRIBE", "ALTER_CONFIGS", "DESCRIBE_CONFIGS")
    return frozenset(
        [Acl(admin, "CLUSTER", _CLUSTER, "LITERAL", op) for op in cluster_ops]
        + [Acl(admin, "TOPIC", "tiaki.", "PREFIXED", op) for op in topic_ops]
        + [Acl(admin, "TOPIC", t.POLICY, "LITERAL", "WRITE")]
    )


def _why_not_grown(spec: TopicSpec) -> str | None:
    """Why adding partitions to ``spec``'s topic would corrupt it, or None if it would not.

    A record's partition is its key's hash modulo the count, so a new count moves most keys.
    Compaction works per partition: a moved key keeps its last record on the old partition
    for ever, and a rebuild (partition by partition, last wins) can apply that stale record
    over the newer one, giving a removed agency back its membership or reopening a closed
    case. On a keyed topic a case's later records would land on another partition than its
    earlier ones, and be read out of order.
    """
    if "compact" in spec.config.get("cleanup.policy", ""):
        return "compacted, and a key moved to a new partition would leave its stale record behind"
    if spec.keyed:
        return (
            "keyed by case or request, and new partitions would split a case's records out of order"
        )
    return None


def topic_config(spec: TopicSpec, replication: int) -> dict[str, str]:
    """The configs to set on an existing topic of ``spec`` that has ``replication`` replicas:
    ``spec``'s, with ``min.insync.replicas`` no higher than ``replication``.

    Kafka accepts a min ISR above a topic's replication factor and then refuses every
    ``acks=all`` write to it (``NOT_ENOUGH_REPLICAS``): every broker transaction writing it
    fails, and the broker stops. A cluster grown from one broker to three calls for min ISR 2
    on topics still made with one replica each, so the min ISR follows the replicas the topic
    has; it rises once they are raised (see :func:`_under_replicated`).
    """
    config = dict(spec.config)
    wanted = config.get(MIN_ISR)
    if wanted is not None and int(wanted) > replication:
        config[MIN_ISR] = str(max(1, replication))
    return config


def _under_replicated(spec: TopicSpec, actual: TopicState) -> str:
    """The warning for an existing topic with fewer replicas than ``spec``: what holds, and
    how an operator raises them. Provisioning does not: a reassignment copies every partition
    to other brokers, a long, heavy operation an operator schedules and watches."""
    held = ""
    if int(spec.config.get(MIN_ISR, "1")) > actual.replication:
        held = f"; {MIN_ISR} held at {max(1, actual.replication)} until then"
    return (
        f"replication {actual.replication}, below the {spec.replication} this cluster calls "
        f"for{held}. Raise it by partition reassignment (provision does not): "
        "kafka-reassign-partitions.sh --bootstrap-server HOST:PORT --command-config "
        f"ADMIN.properties --reassignment-json-file FILE --execute, FILE giving each of its "
        f"{actual.partitions} partitions {spec.replication} replicas; then provision again "
        '(docs/operations.md, "Growing the cluster")'
    )


def diff(desired: DesiredState, actual: ActualState, protected: Iterable[str] = ()) -> list[Change]:
    """Changes that take ``actual`` to ``desired``. ``protected`` users are never removed.

    Topics are created, grown and reconfigured but never deleted or shrunk: they hold data,
    so an unexpected one is reported for a person to decide. A compacted or keyed topic is
    not grown either (see :func:`_why_not_grown`); that too is reported. Nor is a topic's
    replication raised: one with fewer replicas than the cluster calls for is reported, and
    its ``min.insync.replicas`` kept within the replicas it has (see :func:`topic_config`).
    """
    changes: list[Change] = []
    for name, spec in sorted(desired.topics.items()):
        if name not in actual.topics:
            changes.append(
                Change(
                    "create",
                    "topic",
                    name,
                    f"{spec.partitions} partitions, replication {spec.replication}",
                )
            )
            continue
        existing = actual.topics[name]
        count, config = existing.partitions, existing.config
        refusal = _why_not_grown(spec)
        if count < spec.partitions and refusal:
            changes.append(
                Change(
                    "warn",
                    "topic",
                    name,
                    f"has {count} partitions, fewer than {spec.partitions}; not grown: {refusal}",
                )
            )
        elif count < spec.partitions:
            changes.append(
                Change("alter", "topic", name, f"partitions {count} -> {spec.partitions}")
            )
        elif count > spec.partitions:
            changes.append(
                Change(
                    "warn",
                    "topic",
                    name,
                    f"has {count} partitions, more than {spec.partitions}; left as is",
                )
            )
        if existing.replication < spec.replication:
            changes.append(Change("warn", "topic", name, _under_replicated(spec, existing)))
        for key, value in sorted(topic_config(spec, existing.replication).items()):
            if config.get(key) != value:
                changes.append(
                    Change("alter", "topic", name, f"{key} {config.get(key)} -> {value}")
                )
    for name in sorted(set(actual.topics) - set(desired.topics)):
        if name.startswith("tiaki."):
            changes.append(
                Change("warn", "topic", name, "not in the registry; holds data, so not deleted")
            )

    keep = set(protected)
    for name in sorted(desired.principals - actual.principals):
        changes.append(Change("add", "principal", name))
    for name in sorted(actual.principals - desired.principals - keep):
        changes.append(Change("remove", "principal", name, "no longer in the registry"))

    for acl in sorted(desired.acls - actual.acls):
        changes.append(Change("add", "acl", str(acl), acl=acl))
    for acl in sorted(actual.acls - desired.acls):
        changes.append(Change("remove", "acl", str(acl), "not granted by the registry", acl=acl))
    return changes
