"""Kafka is the first line of isolation between agencies (DESIGN.md, "Trust model").

For every ordered pair of agencies (A, B) these tests ask the real, provisioned Kafka: A may
write only ``tiaki.ingress.A``, read only ``tiaki.egress.A`` (a regional hub also its hub
topic), and use only its own consumer groups. Compliance reads ``tiaki.audit`` only.
"""

from __future__ import annotations

import pytest

from broker.platform import (
    AUDIT,
    DLQ,
    POLICY,
    REVIEW,
    STATE_CASES,
    STATE_REQUESTS,
    egress,
    hub,
    ingress,
)
from broker.registry import AgencyKind, load_registry
from tests.integration.conftest import ROOT, Cluster
from tests.integration.kafka_probe import ALLOWED, DENIED, probe_group, probe_reads, probe_writes

REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")
AGENCIES = REGISTRY.ids
PLATFORM = [AUDIT, REVIEW, DLQ, STATE_CASES, STATE_REQUESTS, POLICY]
EVERY_TOPIC = (
    [ingress(a) for a in AGENCIES]
    + [egress(a) for a in AGENCIES]
    + [hub(r) for r in REGISTRY.hub_regions]
    + PLATFORM
)


def readable_by(agency_id: str) -> set[str]:
    agency = REGISTRY.get(agency_id)
    assert agency is not None
    extra = {hub(agency.region)} if agency.kind is AgencyKind.REGIONAL_HUB else set()
    return {egress(agency_id)} | extra


@pytest.mark.parametrize("agency", AGENCIES)
def test_agency_reads_only_its_egress(cluster: Cluster, agency: str) -> None:
    results = probe_reads(cluster.profile(agency), EVERY_TOPIC)
    allowed = {topic for topic, outcome in results.items() if outcome == ALLOWED}
    assert allowed == readable_by(agency)
    assert all(results[t] == DENIED for t in EVERY_TOPIC if t not in allowed)


@pytest.mark.parametrize("agency", AGENCIES)
async def test_agency_writes_only_its_ingress(cluster: Cluster, agency: str) -> None:
    results = await probe_writes(cluster.profile(agency), EVERY_TOPIC)
    assert {t for t, outcome in results.items() if outcome == ALLOWED} == {ingress(agency)}
    assert sum(outcome == DENIED for outcome in results.values()) == len(EVERY_TOPIC) - 1


@pytest.mark.parametrize("agency", AGENCIES)
async def test_agency_uses_only_its_own_consumer_groups(cluster: Cluster, agency: str) -> None:
    profile = cluster.profile(agency)
    assert await probe_group(profile, f"{agency}.adapter", egress(agency)) == ALLOWED
    for other in AGENCIES:
        if other != agency:
            assert await probe_group(profile, f"{other}.adapter", egress(agency)) == DENIED, other


def test_compliance_reads_audit_only(cluster: Cluster) -> None:
    results = probe_reads(cluster.profile("compliance"), EVERY_TOPIC)
    assert {t for t, outcome in results.items() if outcome == ALLOWED} == {AUDIT}


async def test_compliance_writes_nothing(cluster: Cluster) -> None:
    results = await probe_writes(cluster.profile("compliance"), EVERY_TOPIC)
    assert set(results.values()) == {DENIED}


def test_admin_reads_no_agency_data(cluster: Cluster) -> None:
    results = probe_reads(cluster.profile("admin"), EVERY_TOPIC)
    assert set(results.values()) == {DENIED}
