"""On the demo's data: after ``tiaki demo``'s ISR day (the real broker, the reference
adapters, a reviewer approving what was held), every person's subject report, built from the
audit index through the keyed hash of their identifier, matches what the egress topics
actually carried about them, opened with each recipient's own key; and the day's log
verifies."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from broker.audit import AuditIndex
from broker.audit._kafka import verify_live
from broker.audit._report import classifier, subject_report
from broker.codec import field_classifications
from broker.envelope import KeyStore
from broker.runtime._audit import subject_ref
from broker.runtime._demo import DEMO_AGENCIES, isr_day, run_demo
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from tests.integration.broker_env import SCHEMAS, egress_received
from tests.integration.conftest import ROOT, Cluster
from tests.integration.test_demo import demo_settings


def identifiers(node: Any) -> Iterator[tuple[str, str]]:
    """Every (scheme, value) of a PersonIdentifier in an event document."""
    if isinstance(node, Mapping):
        if {"scheme", "value", "issuer"} <= set(node) and isinstance(node["value"], str):
            yield node["scheme"], node["value"]
        for child in node.values():
            yield from identifiers(child)
    elif isinstance(node, list):
        for child in node:
            yield from identifiers(child)


async def test_subject_reports_match_what_the_demo_delivered(
    cluster: Cluster, tmp_path: Path
) -> None:
    settings = await demo_settings(cluster)
    home = settings.home
    phases = isr_day(ROOT / "schemas", f"A{uuid.uuid4().hex[:5].upper()}")
    result = await run_demo(
        settings,
        Console(file=io.StringIO(), width=160),
        metrics_port=None,
        phases=phases,
        timeout_s=90,
    )
    assert result.approved >= 1  # the day includes a held item released by a reviewer
    steps = {st.event_id: st for ph in phases for st in ph.steps}

    # What the egress topics carried, opened with each recipient's key.
    principals = {a.id: a.key_ref for a in cluster.registry.agencies} | {"broker": "broker"}
    ring = KeyStore(home / "keys").load(principals, private_for=None)
    carried: set[tuple[str, str, tuple[str, ...], Any, Any, Any, tuple[str, ...]]] = set()
    for agency in DEMO_AGENCIES:
        for shared in await egress_received(cluster, ring, agency):
            event_id = shared["event_id"]
            if event_id not in steps:
                continue
            classes = dict(field_classifications(SCHEMAS.latest(shared["event_type"])))
            kept = {p for p, a in shared["field_actions"].items() if a != "drop"}
            carried.add(
                (
                    agency,
                    event_id,
                    tuple(sorted({classes.get(p, "unclassified") for p in kept})),
                    shared["legal_basis"],
                    shared["purpose"],
                    shared["route"],
                    tuple(shared["rule_ids"]),
                )
            )
    assert len(carried) >= 10

    # The day's log verifies, and every person's report matches what was carried about them.
    audit, _, report = await verify_live(cluster.profile("compliance"), ring)
    assert report.unsigned <= report.records
    key = shared_secret(secret_paths(settings)[0])
    people = {pair for st in steps.values() for pair in identifiers(st.document)}
    assert people
    compared = 0
    with AuditIndex.open(tmp_path / "index.sqlite", SCHEMAS) as index:
        index.add(audit)
        for scheme, value in sorted(people):
            about = {e for e, st in steps.items() if (scheme, value) in identifiers(st.document)}
            expected = {c for c in carried if c[1] in about}
            rows = index.about(subject_ref(key, scheme, value))
            reported = {
                (d.recipient, d.event_id, d.classes, d.legal_basis, d.purpose, d.route, d.rule_ids)
                for d in subject_report(rows, classifier(SCHEMAS))
                if d.event_id in steps
            }
            assert reported == expected, f"person {scheme}:<hidden>"
            compared += len(expected)
    assert compared >= 1
    print(
        f"\ndemo day: {len(people)} people, {compared} disclosures reconciled with "
        f"{len(carried)} deliveries, {result.approved} released by a reviewer, "
        f"{report.records} audit records in {len(report.chains)} chains verified"
    )
