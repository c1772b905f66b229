"""The gauges that are read rather than counted: key age and consumer lag."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry

from broker.runtime._metrics import BrokerMetrics, observe_keys, observe_lag
from tests.unit.runtime.test_intake import NOW, make_ring


def test_key_age_covers_usable_keys_only() -> None:
    metrics = BrokerMetrics(CollectorRegistry())
    ring = make_ring()
    revoked = ring.keys(owner="msd")[0]
    ring.revoke(revoked.key_id, NOW, "synthetic compromise")
    observe_keys(metrics, ring, NOW)
    samples = {
        s.labels["key_id"]: s.value
        for family in metrics.registry.collect()
        if family.name == "tiaki_key_age_seconds"
        for s in family.samples
    }
    assert revoked.key_id not in samples
    usable = [k for k in ring.keys(owner=None) if k.key_id != revoked.key_id]
    assert set(samples) == {k.key_id for k in usable}
    assert all(value == timedelta(days=1).total_seconds() for value in samples.values())


def test_lag_gauge_follows_the_assignment() -> None:
    metrics = BrokerMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    observe_lag(metrics, {("tiaki.ingress.police", 0): 12, ("tiaki.ingress.msd", 2): 0})
    labels = {"topic": "tiaki.ingress.police", "partition": "0"}
    assert value("tiaki_consumer_lag_records", labels) == 12
    observe_lag(metrics, {("tiaki.ingress.msd", 2): 3})  # police/0 went to another worker
    assert value("tiaki_consumer_lag_records", labels) is None
    assert (
        value("tiaki_consumer_lag_records", {"topic": "tiaki.ingress.msd", "partition": "2"}) == 3
    )


def test_a_fresh_worker_exports_its_transaction_series() -> None:
    """TiakiBrokerDown is absent(tiaki_transactions_total): an idle, healthy worker must export
    the series (at 0) before its first transaction, or the alert fires on it."""
    registry = CollectorRegistry()
    BrokerMetrics(registry)
    for result in ("committed", "aborted"):
        value = registry.get_sample_value("tiaki_transactions_total", {"result": result})
        assert value == 0.0


def test_every_series_an_absent_alert_watches_exists_from_the_start() -> None:
    """Any alert written as absent(metric) must find ``metric`` on a fresh worker."""
    import re
    from pathlib import Path

    alerts = Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "alerts.yml"
    watched = re.findall(r"absent\(\s*([a-z_:]+)", alerts.read_text())
    assert watched
    registry = CollectorRegistry()
    BrokerMetrics(registry)
    exported = {s.name for m in registry.collect() for s in m.samples}
    assert set(watched) <= exported


def test_alerted_series_are_exported_at_zero_before_the_first_event() -> None:
    """``increase()`` never sees a series' first sample: a quarantine reason or an
    undeliverable hold that only appeared with its first event would not raise its alert."""
    from prometheus_client import CollectorRegistry, generate_latest

    from broker.runtime._metrics import BrokerMetrics

    metrics = BrokerMetrics(CollectorRegistry())
    metrics.expect_recipients(["corrections"])
    text = generate_latest(metrics.registry).decode()
    for reason in ("tampered", "key_revoked", "wrong_topic", "wrong_kind", "header_mismatch"):
        assert f'tiaki_quarantined_total{{reason="{reason}"}} 0.0' in text
    assert 'tiaki_quarantined_total{reason="request_id_in_use"} 0.0' in text
    for reason in ("recipient_key_unusable", "output_oversized", "recipient_topic_missing"):
        held = f'tiaki_held_for_review_total{{reason="{reason}",recipient="corrections"}}'
        assert f"{held} 0.0" in text
    assert 'tiaki_egress_topic_missing{agency="corrections"} 0.0' in text


def test_an_adapter_exports_every_refusal_reason_at_zero() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from adapters._metrics import AdapterMetrics

    text = generate_latest(AdapterMetrics(CollectorRegistry()).registry).decode()
    assert 'tiaki_adapter_refused_total{reason="tampered"} 0.0' in text
    assert 'tiaki_adapter_refused_total{reason="key_mismatch"} 0.0' in text
