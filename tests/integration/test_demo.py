"""``tiaki demo``'s ISR day on the session's real Kafka: the tables it prints are exactly what
the shipped policy permits, worked out here from the policy engine and the script's events
(never from the demo's own output)."""

from __future__ import annotations

import datetime as dt
import io
import time
import uuid
from collections import Counter

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console

from broker._settings import Settings
from broker.codec import from_json
from broker.platform import egress
from broker.policy import Pseudonymiser, compile_policy, load_policy_set
from broker.registry import load_registry
from broker.runtime import Accepted, Outcome
from broker.runtime._cases import CaseMembership
from broker.runtime._demo import DEMO_AGENCIES, Phase, Row, isr_day, run_demo
from broker.runtime._policy import PolicyDecider
from broker.runtime._requests import RequestBook
from tests.integration.broker_env import SCHEMAS
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
    earlier modules (the 20,000-event crash test) left deliveries the day is not about."""
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


async def test_demo_tables_are_what_the_policy_permits(cluster: Cluster) -> None:
    settings = await demo_settings(cluster)
    phases = isr_day(ROOT / "schemas", f"T{uuid.uuid4().hex[:5].upper()}")
    expected, held, after = expected_tables(phases)
    # The script exercises every part of the day the issue asks for.
    assert sum(map(sum, (c.values() for c in expected.values()))) >= 10
    assert held >= 1
    output = io.StringIO()
    started = time.monotonic()
    result = await run_demo(
        settings, Console(file=output, width=160), metrics_port=None, phases=phases, timeout_s=90
    )
    took = time.monotonic() - started
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
    text = output.getvalue()
    flowing = " ".join(text.split())  # the console wraps long lines
    assert (
        "quarantined it (malformed_envelope) and police's adapter reported the refusal" in flowing
    )
    for agency in DEMO_AGENCIES:
        assert f"({agency}) received" in text
    assert "where to look next" in text
    print(
        f"\ndemo day: {sum(len(r) for r in result.received.values())} deliveries, {held} held and approved, {took:.1f}s"
    )
