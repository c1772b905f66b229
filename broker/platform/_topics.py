"""Topic, principal and consumer-group names: the conventions every component shares."""

from __future__ import annotations

INGRESS_PREFIX = "tiaki.ingress."
EGRESS_PREFIX = "tiaki.egress."
HUB_PREFIX = "tiaki.hub."
AUDIT = "tiaki.audit"
REVIEW = "tiaki.review"
DLQ = "tiaki.dlq"
STATE_CASES = "tiaki.state.cases"
STATE_REQUESTS = "tiaki.state.requests"
POLICY = "tiaki.policy"
#: Each audit chain's committed head (compacted; written with the records it covers).
STATE_CHAINS = "tiaki.state.chains"
#: The ingress events each transaction admitted past the replay check (kept for the replay
#: window), so a worker that starts or takes over partitions knows what was already accepted.
STATE_SEEN = "tiaki.state.seen"
#: Signed audit checkpoints: every agency may read them and keep them as a witness.
CHECKPOINTS = "tiaki.checkpoints"
#: De-identified counted units for the regional hubs' aggregates (compacted, kept 400 days):
#: ``tiaki hub publish`` counts them into tables under the Stats NZ output rules.
STATE_TALLIES = "tiaki.state.tallies"

#: Topics only the broker (and, for audit, compliance) may touch.
PLATFORM_TOPICS = (
    AUDIT,
    REVIEW,
    DLQ,
    STATE_CASES,
    STATE_REQUESTS,
    POLICY,
    STATE_CHAINS,
    STATE_SEEN,
    CHECKPOINTS,
    STATE_TALLIES,
)

#: Topics whose records are plain Avro rather than sealed (audit records, which hold no field
#: value, and the broker's state). The broker's producer compresses them in transit: they
#: repeat themselves (a decision's route, rules and field actions) from one event to the next,
#: whereas a sealed record is ciphertext, which does not compress.
PLAIN_TOPICS = (AUDIT, STATE_CASES, STATE_REQUESTS, STATE_CHAINS, STATE_SEEN, STATE_TALLIES)

#: Principals that belong to Tiaki itself, beside one per agency.
BROKER = "broker"
COMPLIANCE = "compliance"
ADMIN = "admin"
SERVICE_PRINCIPALS = (BROKER, COMPLIANCE, ADMIN)

#: Consumer groups and transactional ids of the broker's workers start with this.
BROKER_GROUP_PREFIX = "tiaki-broker"
#: The transactional ids of people's acts on the review and quarantine queues, one per queue
#: (broker.runtime._operator): no worker's id may start with it, or the worker would fence them.
ACT_PREFIX = f"{BROKER_GROUP_PREFIX}-act-"


def ingress(agency_id: str) -> str:
    """The topic agency ``agency_id`` writes to (and only it)."""
    return f"{INGRESS_PREFIX}{agency_id}"


def ingress_agency(topic: str) -> str | None:
    """The agency whose ingress topic ``topic`` is (:func:`ingress` reversed), or None."""
    return topic.removeprefix(INGRESS_PREFIX) if topic.startswith(INGRESS_PREFIX) else None


def egress(agency_id: str) -> str:
    """The topic agency ``agency_id`` reads from (and only it)."""
    return f"{EGRESS_PREFIX}{agency_id}"


def hub(region: str) -> str:
    """The aggregates topic of a region's hub."""
    return f"{HUB_PREFIX}{region}"


def group_prefix(principal: str) -> str:
    """Consumer groups a principal may use start with this (``police.`` for ``police``)."""
    return f"{principal}."


def user(principal: str) -> str:
    """The Kafka principal string of a SCRAM user."""
    return f"User:{principal}"
