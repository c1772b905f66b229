"""Prometheus metrics of one adapter, on an injected registry (never the global one).

Labels are event types and reason codes only: never a case, a person or an event id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AdapterMetrics:
    """Counters an operator watches: is the outbox draining, is the handler failing?"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.accepted = Counter(
            "tiaki_adapter_accepted_total",
            "Events accepted into the outbox.",
            ["event_type"],
            registry=registry,
        )
        self.sent = Counter(
            "tiaki_adapter_sent_total",
            "Events Kafka acknowledged.",
            ["event_type"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "tiaki_adapter_outbox_pending", "Events waiting in the outbox.", registry=registry
        )
        self.send_failures = Counter(
            "tiaki_adapter_send_failures_total",
            "Send attempts that failed (Kafka unreachable).",
            registry=registry,
        )
        self.received = Counter(
            "tiaki_adapter_received_total",
            "Events received and opened.",
            ["event_type"],
            registry=registry,
        )
        self.handled = Counter(
            "tiaki_adapter_handled_total",
            "Events the handler applied.",
            ["event_type"],
            registry=registry,
        )
        self.handler_failures = Counter(
            "tiaki_adapter_handler_failures_total",
            "Handler attempts that raised.",
            ["event_type"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "tiaki_adapter_dead_lettered_total",
            "Events moved to the dead-letter folder.",
            registry=registry,
        )
        self.refused = Counter(
            "tiaki_adapter_refused_total",
            "Records this agency sent that the broker refused (its refusal notices), by reason.",
            ["reason"],
            registry=registry,
        )
        # At 0 from the start: TiakiAdapterRecordsRefused is an increase() alert, which never
        # sees a series' first sample, so the first refusal of a kind would go unnoticed.
        from broker.runtime._metrics import quarantine_reasons

        for reason in quarantine_reasons():
            self.refused.labels(reason)
