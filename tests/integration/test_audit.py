"""The tamper-evident audit log on real Kafka (issue 7).

A real broker process chains its audit records and signs checkpoints; these tests read the
log as the compliance principal and check that

- the whole log verifies (``tiaki audit verify`` exits 0), also after the broker restarts and
  continues its chain from ``tiaki.state.chains``, and an agency's saved checkpoints (its
  witness copy from ``tiaki.checkpoints``) are consistent with it;
- the subject report for a person, built from the audit index, matches what the egress topics
  actually carried, opened with the recipients' own keys: same recipients, events, legal
  basis, purpose, route, rule ids and field classes;
- compliance reads the audit log (records and checkpoints) and nothing else, every agency may
  read the checkpoints, and nobody but the broker writes them or the chain heads.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker._cli import main
from broker._settings import Settings
from broker.audit import AuditIndex, LogEntry, Query, VerifyReport, verify_log
from broker.audit._kafka import read_log, verify_live
from broker.audit._report import classified_path, classifier, subject_report
from broker.codec import field_classifications
from broker.envelope import KeyStore
from broker.platform import AUDIT, CHECKPOINTS, STATE_CHAINS, egress, ingress
from broker.runtime._audit import subject_ref
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from tests.integration.broker_env import SCHEMAS, BrokerEnv, example
from tests.integration.conftest import Cluster
from tests.integration.kafka_probe import ALLOWED, DENIED, probe_reads, probe_writes

CHAIN = "tiaki-broker-0"


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[BrokerEnv]:
    with BrokerEnv.running(cluster) as environment:
        yield environment


def story(case: str, person: str) -> list[tuple[str, dict[str, Any]]]:
    """Police allocate Corrections, set risk high, then report an episode about ``person``."""
    allocation = example("CaseAllocation", case_id=case, source_agency="police")
    allocation["agency"]["agency_id"] = "corrections"
    meeting = example("SafetyAssessmentMeetingOutcome", case_id=case, source_agency="police")
    meeting["lead_agency"]["agency_id"] = "safe-whanau"
    meeting["risk_tier"] = "high"
    episode = example("FamilyHarmEpisodeReport", case_id=case, source_agency="police")
    episode["header"]["sharing"]["purpose"] = "fv_plan_or_response"
    episode["people"][0]["person"]["identifiers"][0]["value"] = person
    return [
        ("CaseAllocation", allocation),
        ("SafetyAssessmentMeetingOutcome", meeting),
        ("FamilyHarmEpisodeReport", episode),
    ]


async def wait_for_log(
    env: BrokerEnv, *, event_ids: set[str], within: float = 60
) -> tuple[list[LogEntry], list[LogEntry], VerifyReport]:
    """The log once it holds every event's decision and every record is signed (the broker
    signs within its cadence, ``CHECKPOINT_SECONDS`` here); verified on every look."""
    deadline = time.monotonic() + within
    ring = env.ring
    while True:
        audit, checkpoints, report = await verify_live(env.cluster.profile("compliance"), ring)
        seen = {event_id_of(e) for e in audit}
        if (event_ids <= seen and report.unsigned == 0) or time.monotonic() > deadline:
            return audit, checkpoints, report
        await asyncio.sleep(1)


def event_id_of(entry: LogEntry) -> str | None:
    schema = SCHEMAS.by_fingerprint(bytes.fromhex((entry.header("tiaki-schema") or b"").decode()))
    return SCHEMAS.decode(entry.value, schema.fingerprint).get("event_id")


async def test_the_log_on_kafka_verifies_and_the_report_matches_the_egress_topics(
    env: BrokerEnv, tmp_path: Path
) -> None:
    person = f"SYN-{uuid.uuid4().hex[:10].upper()}"
    items = story(f"SYN-CASE-{uuid.uuid4().hex[:8]}", person)
    await env.publish("police", items)
    ids = {doc["header"]["event_id"] for _, doc in items}
    audit, _, report = await wait_for_log(env, event_ids=ids)
    assert CHAIN in {c.chain for c in report.chains}
    assert report.unsigned == 0
    assert report.checkpoints >= 1

    # What the egress topics carried about the person, opened with the recipients' keys.
    episode_id = items[2][1]["header"]["event_id"]
    classes = dict(field_classifications(SCHEMAS.latest("FamilyHarmEpisodeReport")))
    carried = set()
    for agency, received in (await env.received_by()).items():
        for shared in received:
            if shared["event_id"] != episode_id:
                continue
            kept = {p for p, a in shared["field_actions"].items() if a != "drop"}
            carried.add(
                (
                    agency,
                    shared["event_id"],
                    tuple(sorted({classes.get(classified_path(p), "unclassified") for p in kept})),
                    shared["legal_basis"],
                    shared["purpose"],
                    shared["route"],
                    tuple(shared["rule_ids"]),
                )
            )
    assert carried, "the story shares the episode with Corrections"

    # What the subject report says, from the audit index, looked up by the keyed hash.
    key = shared_secret(secret_paths(Settings(home=env.home))[0])
    with AuditIndex.open(tmp_path / "index.sqlite", SCHEMAS) as index:
        index.add(audit)
        rows = index.query(Query(subject_ref=subject_ref(key, "synthetic", person)))
    reported = {
        (d.recipient, d.event_id, d.classes, d.legal_basis, d.purpose, d.route, d.rule_ids)
        for d in subject_report(rows, classifier(SCHEMAS))
    }
    assert reported == carried
    assert {r.event_id for r in rows} == {episode_id}  # the other events do not name the person


def test_audit_verify_on_kafka_and_after_a_restart_with_a_witness(
    env: BrokerEnv,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(env.home))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(env.release.parent / "schemas"))
    monkeypatch.setenv("TIAKI_OPERATOR", "SYN-officer")
    witness = tmp_path / "police-witness.jsonl"
    assert main(["audit", "witness", "--profile", "police", "--out", str(witness)]) == 0
    saved = witness.read_text().splitlines()
    assert saved

    # Restart the broker: the same worker id continues the same chain from its stored head.
    env.stop_all()
    before = asyncio.run(read_log(env.cluster.profile("compliance")))
    size_before = {c.chain: c.size for c in verify_log(*before, env.ring).chains}[CHAIN]
    env.start()
    items = story(f"SYN-CASE-{uuid.uuid4().hex[:8]}", "SYN-RESTART")
    asyncio.run(env.publish("police", items))
    ids = {doc["header"]["event_id"] for _, doc in items}
    _, _, report = asyncio.run(wait_for_log(env, event_ids=ids))
    after = {c.chain: c for c in report.chains}[CHAIN]
    assert after.size > size_before
    assert after.signed == after.size

    capsys.readouterr()
    assert main(["audit", "verify", "--witness", str(witness)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit log verifies:")
    assert f"{len(saved)} witness checkpoints" in out
    assert main(["audit", "export", "--out", str(tmp_path / "log.jsonl")]) == 0
    assert main(["audit", "verify", "--file", str(tmp_path / "log.jsonl")]) == 0
    # the broker's public keys are all verification needs
    assert KeyStore(env.home / "keys").load({"broker": "broker"}, private_for=[])


def test_compliance_reads_the_audit_log_and_nothing_else(cluster: Cluster) -> None:
    registry = cluster.registry
    every = (
        [ingress(a) for a in registry.ids]
        + [egress(a) for a in registry.ids]
        + [
            AUDIT,
            CHECKPOINTS,
            STATE_CHAINS,
            "tiaki.review",
            "tiaki.dlq",
            "tiaki.state.cases",
            "tiaki.state.requests",
            "tiaki.policy",
        ]
    )
    results = probe_reads(cluster.profile("compliance"), every)
    assert {t for t, outcome in results.items() if outcome == ALLOWED} == {AUDIT, CHECKPOINTS}
    for agency in ("police", "corrections"):
        reads = probe_reads(cluster.profile(agency), [CHECKPOINTS, STATE_CHAINS, AUDIT])
        assert reads == {CHECKPOINTS: ALLOWED, STATE_CHAINS: DENIED, AUDIT: DENIED}


async def test_nobody_but_the_broker_writes_checkpoints_or_chain_heads(cluster: Cluster) -> None:
    for principal in ("compliance", "police", "health-nz", "admin"):
        results = await probe_writes(cluster.profile(principal), [CHECKPOINTS, STATE_CHAINS, AUDIT])
        assert set(results.values()) == {DENIED}, principal


async def test_indexing_from_kafka_reads_on_from_where_the_index_stands(
    env: BrokerEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tiaki audit index`` from Kafka: a first run indexes the whole log (in chunks), a
    second adds nothing, and after new events exactly their records are added; the index
    then holds every record of the topic once."""
    import broker.audit._kafka as live

    monkeypatch.setattr(live, "INDEX_CHUNK", 7)  # many chunks, each resuming after the last
    profile = env.cluster.profile("compliance")
    before = story(f"SYN-CASE-{uuid.uuid4().hex[:8]}", "SYN-NOBODY")
    await env.publish("police", before)
    await wait_for_log(env, event_ids={d["header"]["event_id"] for _, d in before})
    with AuditIndex.open(tmp_path / "index.sqlite", SCHEMAS) as index:
        first = await live.index_live(profile, index)
        assert await live.index_live(profile, index) == 0
        items = story(f"SYN-CASE-{uuid.uuid4().hex[:8]}", "SYN-NOBODY")
        await env.publish("police", items)
        audit, _, _ = await wait_for_log(env, event_ids={d["header"]["event_id"] for _, d in items})
        added = await live.index_live(profile, index)
        records, _, _ = index.count()
    assert first > 0
    assert added > 0
    assert records == first + added == len(audit)
