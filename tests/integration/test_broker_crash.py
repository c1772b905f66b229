"""Exactly once under crashes: a stream of 20,000 events, the broker killed with SIGKILL at
random moments at least five times and restarted; afterwards every permitted (event,
recipient) pair was delivered exactly once, no forbidden pair ever, and every event has its
audit records."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from broker.codec import decode, encode, from_json
from broker.envelope import Kind, Sealer
from broker.platform import AUDIT, ingress
from broker.runtime._audit import audited_pairs
from broker.transport import KafkaPublisher
from tests.integration.broker_env import SCHEMAS, BrokerEnv, example
from tests.integration.conftest import Cluster
from tests.integration.test_broker import expected_deliveries

EVENTS = 20_000
CASES = 20
KILLS = 5


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[BrokerEnv]:
    with BrokerEnv.running(cluster, start=False, stop_signal=signal.SIGKILL) as environment:
        yield environment


def stream(run: str) -> list[tuple[str, dict[str, Any]]]:
    """Per case: Corrections allocated and the meeting held, then family-harm episodes."""
    items: list[tuple[str, dict[str, Any]]] = []
    cases = [f"SYN-EOS-{run}-{i:02d}" for i in range(CASES)]
    for case in cases:
        allocation = example("CaseAllocation", case_id=case, source_agency="police")
        allocation["agency"]["agency_id"] = "corrections"
        meeting = example("SafetyAssessmentMeetingOutcome", case_id=case, source_agency="police")
        meeting["lead_agency"]["agency_id"] = "safe-whanau"
        meeting["risk_tier"] = "high"
        items += [("CaseAllocation", allocation), ("SafetyAssessmentMeetingOutcome", meeting)]
    template = example("FamilyHarmEpisodeReport", source_agency="police")
    template["header"]["sharing"]["purpose"] = "fv_plan_or_response"
    for n in range(EVENTS - len(items)):
        doc = {
            **template,
            "header": {
                **template["header"],
                "event_id": str(uuid.uuid4()),
                "case_id": cases[n % CASES],
            },
        }
        items.append(("FamilyHarmEpisodeReport", doc))
    return items


async def publish_all(env: BrokerEnv, items: list[tuple[str, dict[str, Any]]]) -> None:
    sealer = Sealer("police", env.ring)
    now = dt.datetime.now(dt.UTC)
    async with KafkaPublisher(env.cluster.profile("police"), linger_ms=5) as publisher:
        for start in range(0, len(items), 500):
            batch = []
            for event_type, doc in items[start : start + 500]:
                schema = SCHEMAS.latest(event_type)
                value = sealer.seal(
                    encode(schema, from_json(schema, doc)),
                    kind=Kind.INGRESS,
                    topic=ingress("police"),
                    recipient="broker",
                    event_id=doc["header"]["event_id"],
                    schema_fingerprint=schema.fingerprint,
                    now=now,
                )
                batch.append(
                    publisher.publish(ingress("police"), doc["header"]["case_id"].encode(), value)
                )
            await asyncio.gather(*batch)


async def test_exactly_once_under_sigkill(env: BrokerEnv) -> None:
    items = stream(uuid.uuid4().hex[:6])
    ids = {doc["header"]["event_id"] for _, doc in items}
    expected = expected_deliveries(env, items)
    wanted = Counter({(e, r) for r, pairs in expected.items() for e, _ in pairs})
    assert len(wanted) >= EVENTS - 2 * CASES, "every episode goes somewhere"

    rng = random.Random(20261123)
    env.start("eos")
    publishing = asyncio.create_task(publish_all(env, items))
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        (process,) = [p for p in env.processes if p.poll() is None]
        process.send_signal(signal.SIGKILL)
        process.wait()
        env.processes.remove(process)
        env.start("eos", wait=False)
    await publishing

    deadline = asyncio.get_running_loop().time() + 300
    while True:
        got: Counter[tuple[str, str]] = Counter()
        for agency, received in (await env.received_by()).items():
            for shared in received:
                if shared["event_id"] in ids:
                    got[(shared["event_id"], agency)] += 1
        if (
            sum(got.values()) >= sum(wanted.values())
            or asyncio.get_running_loop().time() > deadline
        ):
            break
        await asyncio.sleep(3)
    assert env.stop_all() == [0]

    duplicates = {pair: n for pair, n in got.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} pairs delivered more than once"
    assert set(got) - set(wanted) == set(), "a pair the policy did not permit was delivered"
    assert set(wanted) - set(got) == set(), f"{len(set(wanted) - set(got))} permitted pairs missing"

    audit: Counter[tuple[str, str | None]] = Counter()
    for record in await env.read("compliance", AUDIT):
        entry = decode(record.value, SCHEMAS.latest("AuditRecord"))
        if entry["event_id"] in ids:
            for recipient, _ in audited_pairs(entry):
                audit[(entry["event_id"], recipient)] += 1
    assert {event_id for event_id, _ in audit} == ids, "an event has no audit record"
    assert max(audit.values()) == 1, "a decision was audited twice"
    assert set(wanted) <= set(audit), "a delivery has no audit record"
