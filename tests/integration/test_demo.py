"""``tiaki demo``'s ISR day on the session's real Kafka, played once for the module: the
tables it prints are exactly what the shipped policy permits, worked out here from the policy
engine and the script's events (never from the demo's own output); and every person's subject
report from the audit index matches what the egress topics carried about them."""

from __future__ import annotations

import datetime as dt
import io
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console

from broker._settings import Settings
from broker.audit import AuditIndex
from broker.audit._kafka import verify_live
from broker.audit._report import classified_path, classifier, subject_report
from broker.codec import field_classifications, from_json
from broker.envelope import KeyStore
from broker.platform import egress
from broker.policy import Pseudonymiser, compile_policy, load_policy_set
from broker.registry import load_registry
from broker.runtime import Accepted, Outcome
from broker.runtime._audit import subject_ref
from broker.runtime._cases import CaseMembership
from broker.runtime._demo import DEMO_AGENCIES, DemoResult, Phase, Row, isr_day, run_demo
from broker.runtime._policy import PolicyDecider
from broker.runtime._requests import RequestBook
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from tests.integration.broker_env import SCHEMAS, egress_received_by
from tests.integration.conftest import ROOT, Cluster


def expected_tables(phases: list[Phase]) -> tuple[dict[str, Counter[Row]], int, int]:
    """Per agency, the rows the policy lets it receive; how many decisions are held for
    review (the demo's reviewer approves those, so they arrive too); and how many shares go at
    once with a review afterwards (review_within_24h: the reviewer upholds those)."""
    engine = compile_policy(load_policy_set(ROOT / "policies"))
    registry = load_registry(ROOT / "policies" / "agencies.yaml")
    cases, requests = CaseMembership(), RequestBook()
    decider = PolicyDecider(lambda: engine, Pseudonymiser(b"\0" * 32), cases, requests)
    now = dt.datetime.now(dt.UTC)
    out: dict[str, Counter[Row]] = {a: Counter() for a in DEMO_AGENCIES}
    delivered: set[tuple[str, str]] = set()
    held = after = 0
    for phase in phases:
        for step in phase.steps:
            if step.after is not None and step.after not in delivered:
                continue
            schema = SCHEMAS.latest(step.event_type)
            event = from_json(schema, step.document)
            source = registry.get(step.source)
            assert source is not None
            cases.apply(step.event_type, event, now, sender=source)
            requests.apply(step.event_type, event)
            for verdict in decider.decide(Accepted(source, schema, event, opened=None), now):  # type: ignore[arg-type]
                if verdict.outcome is Outcome.DENY:
                    continue
                held += verdict.outcome is Outcome.REVIEW
                after += (
                    verdict.outcome is Outcome.SHARE and "review_within_24h" in verdict.obligations
                )
                if verdict.outcome is Outcome.SHARE:
                    delivered.add((verdict.recipient, step.event_id))
                dropped = sum(a == "drop" for a in verdict.field_actions.values())
                # The day involves only agencies with a reference adapter in the demo.
                assert verdict.recipient in out, verdict.recipient
                if verdict.recipient in out:
                    out[verdict.recipient][
                        Row(
                            step.event_id,
                            step.event_type,
                            step.source,
                            verdict.route or "-",
                            verdict.legal_basis or "-",
                            len(verdict.field_actions) - dropped,
                            dropped,
                        )
                    ] += 1
    return out, held, after


async def start_groups_at_end(cluster: Cluster, agencies: tuple[str, ...]) -> None:
    """Commit each demo adapter's group at the end of its egress topic, as on a fresh node:
    earlier modules (the broker and adapter tests) left deliveries the day is not about."""
    for agency in agencies:
        consumer = AIOKafkaConsumer(
            **cluster.profile(agency).aiokafka_kwargs(),
            group_id=f"{agency}.adapter",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            metadata = await consumer._client.fetch_all_metadata()
            parts = [
                TopicPartition(egress(agency), p)
                for p in metadata.partitions_for_topic(egress(agency)) or ()
            ]
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            await consumer.commit({tp: offset for tp, offset in ends.items()})
        finally:
            await consumer.stop()


async def demo_settings(cluster: Cluster) -> Settings:
    """Settings for a demo on the session's cluster, with the adapters' groups at the end."""
    await start_groups_at_end(cluster, DEMO_AGENCIES)
    return Settings(
        home=cluster.profiles_dir.parent,
        registry=ROOT / "policies" / "agencies.yaml",
        schemas_dir=ROOT / "schemas",
        policies_dir=ROOT / "policies",
    )


@dataclass(frozen=True)
class DemoDay:
    """One run of the demo's ISR day on the session's cluster, which both tests of this module
    read (one run for both: it takes about half a minute)."""

    settings: Settings
    phases: list[Phase]
    result: DemoResult
    output: str
    took: float


async def play_demo_day(cluster: Cluster) -> DemoDay:
    settings = await demo_settings(cluster)
    phases = isr_day(ROOT / "schemas", f"T{uuid.uuid4().hex[:5].upper()}")
    output = io.StringIO()
    started = time.monotonic()
    result = await run_demo(
        settings, Console(file=output, width=160), metrics_port=None, phases=phases, timeout_s=90
    )
    return DemoDay(settings, phases, result, output.getvalue(), time.monotonic() - started)


@pytest.fixture(scope="module")
async def demo_day(cluster: Cluster) -> DemoDay:
    """The day, played once for both tests below."""
    return await play_demo_day(cluster)


async def test_demo_tables_are_what_the_policy_permits(demo_day: DemoDay) -> None:
    phases, result = demo_day.phases, demo_day.result
    expected, held, after = expected_tables(phases)
    # The script exercises every part of the day the issue asks for.
    assert sum(map(sum, (c.values() for c in expected.values()))) >= 10
    assert held >= 1
    actual = {agency: Counter(rows) for agency, rows in result.received.items()}
    assert actual == expected
    # The broker's request book: MSD's request to Police, answered by Police (FVA s24).
    (request,) = [st for ph in phases for st in ph.steps if st.event_type == "InformationRequest"]
    assert result.requests == {request.document["request_id"]: ("police",)}
    assert result.held == held
    assert result.approved == held
    assert result.after_disclosure == after
    assert result.upheld == after
    # The garbage record written to Police's ingress by hand: quarantined, and Police told.
    assert result.refused == 1
    text = demo_day.output
    flowing = " ".join(text.split())  # the console wraps long lines
    assert (
        "quarantined it (malformed_envelope) and police's adapter reported the refusal" in flowing
    )
    for agency in DEMO_AGENCIES:
        assert f"({agency}) received" in text
    assert "where to look next" in text
    print(
        f"\ndemo day: {sum(len(r) for r in result.received.values())} deliveries, {held} held and approved, {demo_day.took:.1f}s"
    )


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
    cluster: Cluster, demo_day: DemoDay, tmp_path: Path
) -> None:
    """After the day (the real broker, the reference adapters, a reviewer approving what was
    held), every person's subject report, built from the audit index through the keyed hash
    of their identifier, matches what the egress topics actually carried about them, opened
    with each recipient's own key; and the day's log verifies."""
    settings, phases, result = demo_day.settings, demo_day.phases, demo_day.result
    home = settings.home
    assert result.approved >= 1  # the day includes a held item released by a reviewer
    steps = {st.event_id: st for ph in phases for st in ph.steps}

    # What the egress topics carried, opened with each recipient's key.
    principals = {a.id: a.key_ref for a in cluster.registry.agencies} | {"broker": "broker"}
    ring = KeyStore(home / "keys").load(principals, private_for=None)
    carried: set[tuple[str, str, tuple[str, ...], Any, Any, Any, tuple[str, ...]]] = set()
    for agency, received in (await egress_received_by(cluster, ring, DEMO_AGENCIES)).items():
        for shared in received:
            event_id = shared["event_id"]
            if event_id not in steps:
                continue
            classes = dict(field_classifications(SCHEMAS.latest(shared["event_type"])))
            kept = {p for p, a in shared["field_actions"].items() if a != "drop"}
            carried.add(
                (
                    agency,
                    event_id,
                    tuple(sorted({classes.get(classified_path(p), "unclassified") for p in kept})),
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
