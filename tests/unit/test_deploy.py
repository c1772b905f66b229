"""deploy/: the alert rules name only metrics Tiaki exports, so they cannot drift silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from ruamel.yaml import YAML

from adapters._metrics import AdapterMetrics
from broker.runtime._metrics import BrokerMetrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tiaki-overview.json"


def exported() -> set[str]:
    """Every sample name the broker's and the adapters' registries can expose."""
    registry = CollectorRegistry()
    BrokerMetrics(registry)
    AdapterMetrics(registry)
    names = set()
    for family in registry.collect():
        base = family.name
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def test_alert_rules_name_exported_metrics() -> None:
    rules = YAML(typ="safe").load(ALERTS.read_text())
    known = exported()
    seen = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "annotations"} <= set(rule), rule.get("alert")
            for name in re.findall(r"\btiaki_[a-z_]+", rule["expr"]):
                assert name in known, f"{rule['alert']} uses {name}, which nothing exports"
                seen += 1
    assert seen >= 10


def test_dashboard_panels_name_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = re.findall(r"\btiaki_[a-z_]+", target["expr"])
            assert names, panel["title"]
            assert set(names) <= known, panel["title"]
