"""The broker's Prometheus metrics, on an injected registry.

Every label value comes from a controlled vocabulary (agency ids, event types, outcomes, rule
ids, reason codes), never from a record, so no metric can carry personal information.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker.envelope import KeyRing, KeyState

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Every ``result`` of ``tiaki_transactions_total`` (the worker counts each).
TRANSACTION_RESULTS = ("committed", "aborted")
_EVAL_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


def quarantine_reasons() -> tuple[str, ...]:
    """Every reason code a record can be quarantined under: each refusal's
    ``quarantine_reason`` (envelope, codec, intake, membership, requests) and a policy fault's.

    Exported at 0 from the start (``BrokerMetrics``, and the adapters' refusal counter): an
    ``increase()`` alert never sees the first sample of a new series, so a counter that
    appeared with its first quarantine would miss the first forged record."""
    from broker._errors import TiakiError
    from broker.runtime import _cases, _intake, _pipeline, _requests  # noqa: F401  (the classes)

    found = {_pipeline.POLICY_ERROR}
    todo: list[type] = [TiakiError]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        reason = cls.__dict__.get("quarantine_reason")
        if isinstance(reason, str):
            found.add(reason)
    return tuple(sorted(found))


class BrokerMetrics:
    """The metrics DESIGN.md lists; one instance per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_in = Counter(
            "tiaki_events_in",
            "Ingress records admitted, by source agency and event type.",
            ["source", "event_type"],
            registry=registry,
        )
        self.events_out = Counter(
            "tiaki_events_out",
            "Records delivered to a recipient's egress topic.",
            ["recipient", "event_type"],
            registry=registry,
        )
        self.decisions = Counter(
            "tiaki_decisions",
            "Sharing decisions by outcome and deciding rule.",
            ["outcome", "rule"],
            registry=registry,
        )
        self.quarantined = Counter(
            "tiaki_quarantined",
            "Records sent to quarantine (tiaki.dlq), by reason code.",
            ["reason"],
            registry=registry,
        )
        for reason in quarantine_reasons():  # at 0 from the start (see quarantine_reasons)
            self.quarantined.labels(reason)
        self.held_for_review = Counter(
            "tiaki_held_for_review",
            "Decisions held for review by a person, by recipient and the reason it was held.",
            ["recipient", "reason"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "tiaki_consumer_lag_records",
            "Ingress records not yet consumed, per assigned partition (high watermark - position).",
            ["topic", "partition"],
            registry=registry,
        )
        self.key_age_seconds = Gauge(
            "tiaki_key_age_seconds",
            "Age of each usable key in the broker's key ring (alert when past its rotation).",
            ["owner", "purpose", "key_id"],
            registry=registry,
        )
        self.policy_version = Gauge(
            "tiaki_policy_version",
            "1 for the policy set version in force, by its hash.",
            ["policy_hash"],
            registry=registry,
        )
        self.policy_rejected = Counter(
            "tiaki_policy_rejected",
            "Policy sets refused (invalid or unsigned); the old one kept running.",
            ["reason"],
            registry=registry,
        )
        self.evaluation_seconds = Histogram(
            "tiaki_policy_evaluation_seconds",
            "Time to decide one event for all candidate recipients.",
            buckets=_EVAL_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "tiaki_commit_seconds",
            "Time to commit one transaction (outputs, offsets, end of transaction).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "tiaki_end_to_end_seconds",
            "Ingress record timestamp to the commit of its outputs.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queued_seconds = Histogram(
            "tiaki_queued_seconds",
            "Ingress record timestamp to the start of its processing: how long records wait "
            "for a worker (rising while commits stay short: the workers need more CPU, or "
            "more workers).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.transactions = Counter(
            "tiaki_transactions",
            "Kafka transactions by result (committed, aborted).",
            ["result"],
            registry=registry,
        )
        # A labelled counter exports nothing until a label value is first used, and the
        # TiakiBrokerDown alert is absent(tiaki_transactions_total): an idle, healthy worker
        # must export the series from the start (at 0), or the alert fires on it.
        for result in TRANSACTION_RESULTS:
            self.transactions.labels(result)
        self.state_refresh_failures = Counter(
            "tiaki_state_refresh_failures",
            "Failed re-reads of the state topics (after a rebalance or a failed commit); the "
            "worker processes nothing until one succeeds.",
            registry=registry,
        )
        self.key_documents_refused = Gauge(
            "tiaki_key_documents_refused",
            "1 for each key set whose public key document the last key refresh refused (its "
            "keys in force are kept, rotations and revocations in it are not taken in): alert.",
            ["agency"],
            registry=registry,
        )
        self.ingress_copartitioned = Gauge(
            "tiaki_ingress_copartitioned",
            "1 if the subscribed ingress topics all have the same partition count, 0 if not "
            "(then a case's events may reach two workers: alert).",
            registry=registry,
        )
        self.egress_topic_missing = Gauge(
            "tiaki_egress_topic_missing",
            "1 while Kafka has no egress topic for this agency (or hides it from the broker): "
            "shares for it are held, not delivered, until it is provisioned (alert).",
            ["agency"],
            registry=registry,
        )
        self.batch_records = Histogram(
            "tiaki_batch_records",
            "Ingress records per transaction.",
            buckets=(1, 10, 50, 100, 250, 500, 1000),
            registry=registry,
        )

    def expect_recipients(self, recipients: Iterable[str]) -> None:
        """Export ``tiaki_held_for_review_total`` at 0 for each of ``recipients`` (the
        registry's agencies) with the reasons a share is held undeliverable, which the
        TiakiSharesHeldUndeliverable alert watches with ``increase()``."""
        from broker.runtime._pipeline import UNDELIVERABLE

        for recipient in recipients:
            for reason in UNDELIVERABLE:
                self.held_for_review.labels(recipient, reason)
            self.egress_topic_missing.labels(recipient).set(0)


def observe_keys(metrics: BrokerMetrics, ring: KeyRing, now: datetime) -> None:
    """Set ``tiaki_key_age_seconds`` for every key the ring may still use at ``now``; keys it
    may not (revoked, expired) drop out of the gauge."""
    metrics.key_age_seconds.clear()
    for key in ring.keys(owner=None):
        if key.state_at(now) in (KeyState.ACTIVE, KeyState.RETIRING):
            metrics.key_age_seconds.labels(key.owner, key.purpose.value, key.key_id).set(
                max(0.0, (now - key.created_at).total_seconds())
            )


def observe_lag(metrics: BrokerMetrics, lag: Mapping[tuple[str, int], int]) -> None:
    """Set ``tiaki_consumer_lag_records`` to ``lag``, forgetting partitions no longer held."""
    metrics.consumer_lag.clear()
    for (topic, partition), records in lag.items():
        metrics.consumer_lag.labels(topic, str(partition)).set(records)
