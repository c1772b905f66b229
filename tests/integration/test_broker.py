"""The broker on real Kafka: policy-exact delivery, quarantine, and a clean stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from broker._settings import Settings
from broker.codec import decode, from_json
from broker.envelope import Algorithm, KeyStore, Kind, Opener, Purpose, Sealer
from broker.platform import AUDIT, DLQ, POLICY, REVIEW, STATE_REQUESTS
from broker.policy import PolicyStore, Pseudonymiser, load_roster
from broker.runtime import MAX_RECORD_BYTES, Accepted, Outcome
from broker.runtime._audit import AuditContext, audited_pairs
from broker.runtime._cases import CaseMembership
from broker.runtime._operator import ActInterrupted, OperatorAct
from broker.runtime._pipeline import body_json, broker_opener
from broker.runtime._policy import PolicyDecider
from broker.runtime._quarantine import RESOLUTION_HEADER
from broker.runtime._release import bundle
from broker.runtime._requests import request_key
from broker.runtime._review import ReviewError, decide, read_queue
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from broker.transport import KafkaPublisher, Outgoing, Record
from tests.integration.broker_env import SCHEMAS, TIAKI, BrokerEnv, egress_refusals, example
from tests.integration.conftest import ROOT, Cluster
from tests.unit.runtime.test_audit import CANARIES, with_canaries


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[BrokerEnv]:
    with BrokerEnv.running(cluster) as environment:
        yield environment
    assert environment.exit_codes == [0]  # SIGTERM: a graceful stop


def case_story(case: str) -> list[tuple[str, dict[str, Any]]]:
    """Police allocate Corrections, the meeting sets risk high with the NGO leading, and a new
    family-harm episode is reported for the case."""
    allocation = example("CaseAllocation", case_id=case, source_agency="police")
    allocation["agency"]["agency_id"] = "corrections"
    meeting = example("SafetyAssessmentMeetingOutcome", case_id=case, source_agency="police")
    meeting["lead_agency"]["agency_id"] = "safe-whanau"
    meeting["risk_tier"] = "high"
    episode = example("FamilyHarmEpisodeReport", case_id=case, source_agency="police")
    episode["header"]["sharing"]["purpose"] = "fv_plan_or_response"
    return [
        ("CaseAllocation", allocation),
        ("SafetyAssessmentMeetingOutcome", meeting),
        ("FamilyHarmEpisodeReport", episode),
    ]


def expected_deliveries(
    env: BrokerEnv, items: list[tuple[str, dict[str, Any]]]
) -> dict[str, set[tuple[str, str]]]:
    """What the policy permits, worked out independently of the broker process."""
    engine = PolicyStore(load_roster(env.roster)).load(env.release)
    settings = Settings(home=env.home)
    pseudonyms = Pseudonymiser(shared_secret(secret_paths(settings)[1]))
    cases = CaseMembership()
    decider = PolicyDecider(lambda: engine, pseudonyms, cases)
    now = dt.datetime.now(dt.UTC)
    out: dict[str, set[tuple[str, str]]] = {a: set() for a in env.cluster.registry.ids}
    for event_type, doc in items:
        schema = SCHEMAS.latest(event_type)
        event = from_json(schema, doc)
        source = env.cluster.registry.get(doc["header"]["source_agency"])
        assert source is not None
        cases.apply(event_type, event, now, sender=source)
        for verdict in decider.decide(Accepted(source, schema, event, opened=None), now):  # type: ignore[arg-type]
            if verdict.outcome is Outcome.SHARE and verdict.body is not None:
                out[verdict.recipient].add(
                    (
                        doc["header"]["event_id"],
                        json.dumps(json.loads(body_json(verdict.body)), sort_keys=True),
                    )
                )
    return out


async def delivered(
    env: BrokerEnv, event_ids: set[str], expected: int, within: float = 60
) -> dict[str, set[tuple[str, str]]]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        out = {
            agency: {
                (r["event_id"], json.dumps(r["body"], sort_keys=True))
                for r in records
                if r["event_id"] in event_ids
            }
            for agency, records in (await env.received_by()).items()
        }
        if (
            sum(len(v) for v in out.values()) >= expected
            or asyncio.get_running_loop().time() > deadline
        ):
            return out
        await asyncio.sleep(1)


async def test_police_event_reaches_exactly_the_permitted_recipients(env: BrokerEnv) -> None:
    items = case_story(f"SYN-CASE-{uuid.uuid4().hex[:8]}")
    await env.publish("police", items)
    expected = expected_deliveries(env, items)
    assert expected["corrections"], "the story shares the episode with Corrections"
    actual = await delivered(
        env, {doc["header"]["event_id"] for _, doc in items}, sum(map(len, expected.values()))
    )
    # Each recipient holds exactly what the policy permits, body for body; everyone else nothing.
    assert actual == expected
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    ids = {doc["header"]["event_id"] for _, doc in items}
    audited = {
        (a["event_id"], recipient)
        for a in audit
        if a["event_id"] in ids
        for recipient, _ in audited_pairs(a)
    }
    assert {(e, r) for r, pairs in expected.items() for e, _ in pairs} <= audited


async def test_bad_inputs_land_in_quarantine_with_their_reasons(env: BrokerEnv) -> None:
    def fresh() -> dict[str, Any]:
        return example("FamilyHarmEpisodeReport", source_agency="police")

    good = example("FamilyHarmEpisodeReport", source_agency="police")
    sealed = env.seal("police", "FamilyHarmEpisodeReport", good)
    flipped = bytearray(
        env.seal(
            "police",
            "FamilyHarmEpisodeReport",
            example("FamilyHarmEpisodeReport", source_agency="police"),
        )
    )
    flipped[-3] ^= 0x10
    wrong_source = example("FamilyHarmEpisodeReport", source_agency="msd")
    relabelled = bytearray(env.seal("police", "FamilyHarmEpisodeReport", fresh()))
    relabelled[1] = 0x02  # the kind byte (envelope wire format): egress

    bad = [
        b"\x01not an envelope",
        b"\x7f" + sealed[1:],
        bytes(flipped),
        env.seal("police", "FamilyHarmEpisodeReport", wrong_source),
        sealed,
        sealed,  # the same record again: a replay
        env.seal("police", "FamilyHarmEpisodeReport", fresh(), fingerprint=bytes(32)),
        env.seal("police", "FamilyHarmEpisodeReport", fresh(), payload=b"\xff\xfe not avro"),
        env.seal(
            "police",
            "FamilyHarmEpisodeReport",
            fresh(),
            fingerprint=SCHEMAS.latest("Address").fingerprint,
        ),
        env.seal("police", "FamilyHarmEpisodeReport", fresh(), topic="tiaki.ingress.msd"),
        # Marked as an egress envelope (broker to recipient) on an ingress topic.
        bytes(relabelled),
        # Sealed a day ahead of the broker's clock: it cannot be shown fresh.
        env.seal(
            "police",
            "FamilyHarmEpisodeReport",
            fresh(),
            sealed_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
        ),
        # A good record not keyed by its case id (every other one here is keyed SYN-RAW but
        # fails an earlier check): the worker that gets it does not own the case.
        env.seal("police", "FamilyHarmEpisodeReport", fresh()),
    ]
    expected = [
        "malformed_envelope",
        "bad_version",
        "tampered",
        "header_mismatch",
        "replayed",
        "unknown_schema",
        "malformed_avro",
        "not_an_event",
        "wrong_topic",
        "wrong_kind",
        "stale",
        "key_mismatch",
    ]
    metric_before = quarantined_total(env.metrics())
    # Positions, not a count: the topic has several partitions, and read_all lists them one
    # after another, so new records do not all come after the old ones.
    before = {(r.partition, r.offset) for r in await quarantine_records(env)}
    # The good record (and its replay) keyed by its case id, as an adapter keys it.
    await env.publish_raw("police", bad, keys={sealed: good["header"]["case_id"].encode()})
    # The broker may still be quarantining what earlier modules left on the shared ingress
    # topics (an adapter test's deliberate duplicate, say), so this test's records are picked
    # out of the quarantine by the bytes they keep.
    sent = set(bad)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        window = [r for r in await quarantine_records(env) if (r.partition, r.offset) not in before]
        ours = [r for r in window if quarantined_value(env, r) in sent]
        if len(ours) >= len(expected) or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    reasons = [reason_of(r) for r in ours]
    assert sorted(reasons) == sorted(expected)  # twelve kinds, each with its own reason code
    # The quarantine metric agrees with the topic: counted per reason, once per record, for
    # everything this broker quarantined since (read until both have caught up).
    while True:
        window = [r for r in await quarantine_records(env) if (r.partition, r.offset) not in before]
        counted = quarantined_total(env.metrics()) - metric_before
        if counted == Counter(map(reason_of, window)) or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    assert counted == Counter(map(reason_of, window))

    # The operator's listing (`tiaki quarantine list`) shows each of them, reason and origin,
    # and none of the content.
    listed = await asyncio.to_thread(
        subprocess.run,
        [str(TIAKI), "quarantine", "list", "--format", "json"],
        env=env.environment(),
        check=True,
        capture_output=True,
        text=True,
    )
    entries = {(e["partition"], e["offset"]): e for e in json.loads(listed.stdout)}
    for record in ours:
        entry = entries[(record.partition, record.offset)]
        assert entry["reason"] == reason_of(record)
        assert entry["source_topic"] == "tiaki.ingress.police"
        assert entry["kept_bytes"] == len(quarantined_value(env, record))

    # Police, who wrote them, are told on their egress topic: where each was and why, in the
    # same transaction as its quarantine.
    notices = {
        (n["partition"], n["offset"]): n
        for n in await egress_refusals(env.cluster, env.ring, "police")
        if n["topic"] == "tiaki.ingress.police"
    }
    for record in ours:
        kept = entries[(record.partition, record.offset)]
        notice = notices[(kept["source_partition"], kept["source_offset"])]
        assert notice["reason"] == reason_of(record)


async def test_the_largest_record_an_ingress_topic_takes_is_quarantined_whole(
    env: BrokerEnv,
) -> None:
    """The quarantine wraps what it keeps (reason, origin, the broker's envelope), so the
    largest record Kafka accepts on an ingress topic makes a larger record on ``tiaki.dlq``
    (which takes 2 MiB). It lands there whole and the stream goes on: a refusal here would
    stop the worker on the same record after every restart."""
    garbage = b"\x01" + os.urandom(MAX_RECORD_BYTES - 200)  # what the ingress topic takes
    follower = example("FamilyHarmEpisodeReport", source_agency="police")
    before = {(r.partition, r.offset) for r in await quarantine_records(env)}
    await env.publish_raw("police", [garbage], key=b"SYN-LARGEST")
    await env.publish("police", [("FamilyHarmEpisodeReport", follower)])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        new = [r for r in await quarantine_records(env) if (r.partition, r.offset) not in before]
        kept = [r for r in new if quarantined_value(env, r) == garbage]
        audit = [
            decode(r.value, SCHEMAS.latest("AuditRecord"))
            for r in await env.read("compliance", AUDIT)
        ]
        decided = [a for a in audit if a["event_id"] == follower["header"]["event_id"]]
        if (kept and decided) or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    (record,) = kept
    assert reason_of(record) == "malformed_envelope"
    assert len(record.value) > MAX_RECORD_BYTES  # larger than any ingress or egress record
    assert decided, "the event after it was decided: the worker went on"
    assert env.processes[0].poll() is None


async def test_a_request_id_another_agency_holds_is_refused(env: BrokerEnv) -> None:
    """Request ids are their requester's: a second agency's request under an id in the book
    is quarantined as ``request_id_in_use`` and its sender told, on real Kafka too."""
    case, request_id = f"SYN-CASE-{uuid.uuid4().hex[:8]}", f"SYN-REQ-{uuid.uuid4().hex[:8]}"
    first = example("InformationRequest", case_id=case, source_agency="msd")
    first["request_id"] = request_id
    await env.publish("msd", [("InformationRequest", first)])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    key = request_key(request_id, case).encode()  # its id and its case
    while key not in {r.key for r in await env.read("broker", STATE_REQUESTS)}:
        assert loop.time() < deadline, "the first request never reached the request book"
        await asyncio.sleep(1)

    second = example("InformationRequest", case_id=case, source_agency="oranga-tamariki")
    second["request_id"] = request_id
    await env.publish("oranga-tamariki", [("InformationRequest", second)])
    event_id = second["header"]["event_id"]
    while True:
        notices = [
            n
            for n in await egress_refusals(env.cluster, env.ring, "oranga-tamariki")
            if n["event_id"] == event_id
        ]
        if notices or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    assert [n["reason"] for n in notices] == ["request_id_in_use"]
    # The book still names the first requester: its record was not overwritten.
    states = [
        decode(r.value, SCHEMAS.latest("RequestState"))
        for r in await env.read("broker", STATE_REQUESTS)
        if r.key == key and r.value
    ]
    assert states  # the request, then its escalation (the example's respond_by is past)
    assert {s["requester"] for s in states} == {"msd"}


async def quarantine_records(env: BrokerEnv) -> list[Record]:
    """The quarantined records on ``tiaki.dlq`` (not the operators' resolutions of them)."""
    return [r for r in await env.read("broker", DLQ) if RESOLUTION_HEADER not in dict(r.headers)]


def reason_of(record: Record) -> str:
    return dict(record.headers)["tiaki-reason"].decode()


def quarantined_value(env: BrokerEnv, record: Record) -> bytes:
    """The ingress bytes a quarantine record keeps (it is sealed to the broker)."""
    opened = broker_opener(env.ring).open(  # as the quarantine tools open it
        record.value, topic=DLQ, now=dt.datetime.now(dt.UTC), kind=Kind.HOLD, source="broker"
    )
    kept: bytes = decode(opened.payload, SCHEMAS.latest("QuarantinedRecord"))["value"]
    return kept


def quarantined_total(exposition: str) -> Counter[str]:
    """``tiaki_quarantined_total`` per reason, from a Prometheus exposition."""
    counts: Counter[str] = Counter()
    for line in exposition.splitlines():
        if line.startswith("tiaki_quarantined_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = int(float(line.rsplit(" ", 1)[1]))
    return counts


async def test_invalid_policy_mid_stream_is_refused_and_no_canary_escapes(env: BrokerEnv) -> None:
    # An invalid (tampered) policy release published mid-stream is refused.
    tampered = bundle(env.release.parent).replace(
        b"required_approvals: 2", b"required_approvals: 1"
    )
    async with KafkaPublisher(env.cluster.profile("admin")) as publisher:
        await publisher.publish(POLICY, b"policy", tampered)
    deadline = asyncio.get_running_loop().time() + 30
    while not any("policy rejected" in line for line in env.log_lines()):
        assert asyncio.get_running_loop().time() < deadline, (
            "the broker never considered the bundle"
        )
        await asyncio.sleep(0.5)
    assert 'tiaki_policy_rejected_total{reason="ApprovalError"} 1.0' in env.metrics()

    # Events keep flowing under the old version, canary names and identifiers among them.
    items = case_story(f"SYN-CASE-{uuid.uuid4().hex[:8]}")
    for _, doc in items:
        with_canaries(doc)
    await env.publish("police", items)
    expected = expected_deliveries(env, items)
    actual = await delivered(
        env, {doc["header"]["event_id"] for _, doc in items}, sum(map(len, expected.values()))
    )
    assert actual == expected
    # Corrections' plan keeps family names: the canary went through the broker's hands.
    assert any(CANARIES[0] in body for _, body in actual["corrections"])

    logs = "\n".join(env.log_lines())
    metrics = env.metrics()
    for canary in CANARIES:
        assert canary not in logs
        assert canary not in metrics
    old_hash = expected_hash(env)
    assert f'tiaki_policy_version{{policy_hash="{old_hash}"}} 1.0' in metrics
    # The refusal is on the audit log too, under the policy kept (the earlier events' commits
    # carried it: the worker's next transaction after the refusal).
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    refusals = [a for a in audit if a["action"] == "policy_change" and a["outcome"] == "reject"]
    # (One per worker that refused it: each worker audits its own.)
    assert refusals
    assert {(tuple(a["reason_codes"]), a["policy_hash"]) for a in refusals} == {
        (("policy_rejected", "ApprovalError"), old_hash)
    }


def expected_hash(env: BrokerEnv) -> str:
    engine = PolicyStore(load_roster(env.roster)).load(env.release)
    return engine.policy_hash


async def test_held_decision_is_released_by_a_named_reviewer(env: BrokerEnv) -> None:
    # Strangulation signs make the screening's minimal facts Police's (LAW.md scenario 4), but
    # the screening is flagged privileged, and privileged material always goes to a person
    # first (FVA-08).
    case = f"SYN-CASE-{uuid.uuid4().hex[:8]}"
    screening = example("HealthScreeningOutcome", case_id=case, source_agency="health-nz")
    screening["header"]["sharing"]["privileged"] = True
    await env.publish("health-nz", [("HealthScreeningOutcome", screening)])
    review_id = f"health-nz/{screening['header']['event_id']}/police"
    cli = [str(TIAKI), "review"]
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        listing = await asyncio.to_thread(
            subprocess.run,
            [*cli, "list"],
            env=env.environment(),
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        if review_id in listing.stdout:  # listed whole: a reviewer types it
            break
        assert asyncio.get_running_loop().time() < deadline, listing.stdout + listing.stderr
        await asyncio.sleep(1)
    assert screening["header"]["event_id"] not in {
        r["event_id"] for r in await env.received("police")
    }

    approve = [
        *cli,
        "approve",
        review_id,
        "--reviewer",
        "Reviewer One (synthetic)",
        "--justification",
        "strangulation risk; police must act",
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        approve,
        env=env.environment(),
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    again = await asyncio.to_thread(
        subprocess.run,
        approve,
        env=env.environment(),
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert again.returncode == 1
    assert "is released; it cannot be approved" in again.stderr

    released = [
        r for r in await env.received("police") if r["event_id"] == screening["header"]["event_id"]
    ]
    assert len(released) == 1
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    review = [
        a
        for a in audit
        if a["event_id"] == screening["header"]["event_id"] and a["action"] == "review"
    ]
    assert [(a["outcome"], a["recipient"]) for a in review] == [("approve", "police")]
    # The audit record names the reviewer and keeps the reasons.
    assert (review[0]["actor"], review[0]["detail"]) == (
        "Reviewer One (synthetic)",
        "strangulation risk; police must act",
    )


async def test_two_reviewers_approving_one_item_at_once_release_it_once(env: BrokerEnv) -> None:
    """Both reviewers read the queue and find the item held; the one who started second fenced
    the first, whose commit fails with nothing written; the recipient gets one release."""
    case = f"SYN-CASE-{uuid.uuid4().hex[:8]}"
    screening = example("HealthScreeningOutcome", case_id=case, source_agency="health-nz")
    screening["header"]["sharing"]["privileged"] = True  # held for a person (FVA-08)
    await env.publish("health-nz", [("HealthScreeningOutcome", screening)])
    event_id = screening["header"]["event_id"]
    review_id = f"health-nz/{event_id}/police"
    profile = env.cluster.profile("broker")
    context = AuditContext(
        subject_key=shared_secret(secret_paths(Settings(home=env.home))[0]), policy_hash=None
    )
    opener, sealer = Opener("broker", env.ring), Sealer("broker", env.ring)

    async def approval(act: OperatorAct, reviewer: str) -> list[Outgoing]:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            now = dt.datetime.now(dt.UTC)
            item = read_queue(await act.read(REVIEW), opener, SCHEMAS, now).items.get(review_id)
            if item is not None:
                break
            assert asyncio.get_running_loop().time() < deadline, "the item was never held"
            await asyncio.sleep(0.5)
        return decide(
            item,
            "approve",
            reviewer=reviewer,
            justification="synthetic: risk confirmed",
            now=now,
            sealer=sealer,
            schemas=SCHEMAS,
            context=context,
        )

    async with OperatorAct(profile, env.ring, queue="review") as first:
        first_outputs = await approval(first, "Reviewer One (synthetic)")
        async with OperatorAct(profile, env.ring, queue="review") as second:
            second_outputs = await approval(second, "Reviewer Two (synthetic)")
            with pytest.raises(ActInterrupted, match="nothing of this one was written"):
                await first.commit(first_outputs, dt.datetime.now(dt.UTC))
            await second.commit(second_outputs, dt.datetime.now(dt.UTC))
    async with OperatorAct(profile, env.ring, queue="review") as third:
        with pytest.raises(ReviewError, match="is released; it cannot be approved"):
            await approval(third, "Reviewer Three (synthetic)")

    released = [r for r in await env.received("police") if r["event_id"] == event_id]
    assert len(released) == 1
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    assert [a["actor"] for a in audit if a["event_id"] == event_id and a["action"] == "review"] == [
        "Reviewer Two (synthetic)"
    ]


async def test_two_workers_share_the_stream_and_deliver_once(env: BrokerEnv) -> None:
    second = env.start("1")  # joins worker 0's consumer group; partitions are shared between them
    try:
        env.wait_for_log("1", "partitions assigned", second)
        stories = [case_story(f"SYN-SCALE-{uuid.uuid4().hex[:8]}") for _ in range(12)]
        items = [item for story in stories for item in story]
        await env.publish("police", items)
        expected = expected_deliveries(env, items)
        ids = {doc["header"]["event_id"] for _, doc in items}
        actual = await delivered(env, ids, sum(map(len, expected.values())))
        assert actual == expected
        counts: dict[str, int] = {}
        for shared in await env.received("corrections"):
            if shared["event_id"] in ids:
                counts[shared["event_id"]] = counts.get(shared["event_id"], 0) + 1
        assert set(counts.values()) == {1}
        assert any("batch committed" in line for line in env.log_lines("1")), "worker 1 took part"
    finally:
        second.terminate()
        assert second.wait(timeout=60) == 0
        env.processes.remove(second)


async def test_a_replay_after_a_broker_restart_is_quarantined_not_delivered_twice(
    env: BrokerEnv,
) -> None:
    """The replay cache survives a restart: the restarted broker seeds it from
    ``tiaki.state.seen`` (written in the transactions that admitted each record), so a copy
    of a record it already delivered goes to quarantine as ``replayed``."""
    items = case_story(f"SYN-CASE-{uuid.uuid4().hex[:8]}")
    expected = expected_deliveries(env, items)
    ids = {doc["header"]["event_id"] for _, doc in items}
    sealed = [env.seal("police", event_type, doc) for event_type, doc in items]
    before = {(r.partition, r.offset) for r in await quarantine_records(env)}
    case_key = items[0][1]["header"]["case_id"].encode()
    await env.publish_raw("police", sealed, key=case_key)
    assert await delivered(env, ids, sum(map(len, expected.values()))) == expected

    assert env.stop_all() == [0]
    starts = sum("worker started" in line for line in env.log_lines())
    restarted = dt.datetime.now(dt.UTC)
    process = env.start(wait=False)
    deadline = asyncio.get_running_loop().time() + 60
    while sum("worker started" in line for line in env.log_lines()) == starts:
        assert process.poll() is None, env.log_lines()[-5:]
        assert asyncio.get_running_loop().time() < deadline, "the broker did not restart"
        await asyncio.sleep(0.2)

    await env.publish_raw("police", sealed, key=case_key)  # the same three records again
    copies = set(sealed)
    while True:
        window = [r for r in await quarantine_records(env) if (r.partition, r.offset) not in before]
        ours = [r for r in window if quarantined_value(env, r) in copies]
        if len(ours) >= len(sealed) or asyncio.get_running_loop().time() > deadline + 60:
            break
        await asyncio.sleep(1)
    assert sorted(reason_of(r) for r in ours) == ["replayed"] * len(sealed)
    again = await delivered(env, ids, sum(map(len, expected.values())), within=1)
    assert again == expected  # still once each: the copies reached no recipient
    counts: Counter[str] = Counter()
    for records in (await env.received_by()).values():
        counts.update(r["event_id"] for r in records if r["event_id"] in ids)
    assert counts == Counter(e for pairs in expected.values() for e, _ in pairs)

    # The restart recorded every key as it found it (so a key revoked while no worker ran
    # would show here as revoked): police's signing key among them, active.
    signing = env.ring.current("police", Purpose.SIGNING, Algorithm.ED25519, restarted).key_id
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    found = {
        (a["detail"].split()[1], a["outcome"])
        for a in audit
        if a["action"] == "key_operation"
        and "worker_started" in a["reason_codes"]
        and a["recorded_at"] >= restarted
    }
    assert (signing, "active") in found


async def test_a_key_revoked_while_the_broker_runs_is_refused_without_a_restart(
    env: BrokerEnv,
) -> None:
    """Police rotate their signing key and revoke the old one (``tiaki keys rotate | revoke``)
    while the broker runs: within seconds it quarantines a record signed with the revoked key
    as ``key_revoked`` and accepts one signed with the new key, with no restart. (Last in the
    module: it leaves police with a new signing key, which later modules load afresh.)"""
    now = dt.datetime.now(dt.UTC)
    old = env.ring.current("police", Purpose.SIGNING, Algorithm.ED25519, now).key_id
    starts = sum("worker started" in line for line in env.log_lines())
    for argv in (["rotate", "police", "--purpose", "signing"], ["revoke", old, "--reason", "test"]):
        await asyncio.to_thread(
            subprocess.run,
            [str(TIAKI), "keys", *argv],
            env=env.environment(),
            check=True,
            capture_output=True,
        )
    deadline = asyncio.get_running_loop().time() + 30
    while not any("key updated" in ln and old in ln and "revoked" in ln for ln in env.log_lines()):
        assert asyncio.get_running_loop().time() < deadline, "the broker never read the revocation"
        await asyncio.sleep(0.5)

    before = {(r.partition, r.offset) for r in await quarantine_records(env)}
    stale_signed = env.seal(
        "police",
        "FamilyHarmEpisodeReport",
        example("FamilyHarmEpisodeReport", source_agency="police"),
    )
    await env.publish_raw("police", [stale_signed])  # env.ring still holds the old key as active
    while True:
        window = [r for r in await quarantine_records(env) if (r.partition, r.offset) not in before]
        ours = [r for r in window if quarantined_value(env, r) == stale_signed]
        if ours or asyncio.get_running_loop().time() > deadline + 30:
            break
        await asyncio.sleep(1)
    assert [reason_of(r) for r in ours] == ["key_revoked"]

    env.ring = KeyStore(env.home / "keys").load(env.ring.principals, private_for=None)
    items = case_story(f"SYN-CASE-{uuid.uuid4().hex[:8]}")  # signed with the new key
    await env.publish("police", items)
    expected = expected_deliveries(env, items)
    ids = {doc["header"]["event_id"] for _, doc in items}
    assert await delivered(env, ids, sum(map(len, expected.values()))) == expected
    assert sum("worker started" in line for line in env.log_lines()) == starts  # no restart
    # Both key operations are on the audit log, as the broker took them in.
    later = dt.datetime.now(dt.UTC)
    new = env.ring.current("police", Purpose.SIGNING, Algorithm.ED25519, later).key_id
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    operations = {
        (a["detail"].split()[1], a["outcome"], "worker_started" in a["reason_codes"])
        for a in audit
        if a["action"] == "key_operation" and a["source_agency"] == "police"
    }
    assert {(new, "active", False), (old, "revoked", False)} <= operations


async def test_an_operator_resolves_a_quarantined_record_once_under_an_audit_record(
    env: BrokerEnv,
) -> None:
    """Draining the quarantine: `tiaki quarantine resolve` closes a record with the operator's
    name and reasons; the listing shows it resolved, the audit log names the operator, and a
    second resolution is refused."""
    before = {(r.partition, r.offset) for r in await quarantine_records(env)}
    garbage = b"\x01SYN-garbage-" + uuid.uuid4().hex.encode()
    await env.publish_raw("police", [garbage])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    ours: list[Record] = []
    while not ours and loop.time() < deadline:
        await asyncio.sleep(0.5)
        window = [r for r in await quarantine_records(env) if (r.partition, r.offset) not in before]
        ours = [r for r in window if quarantined_value(env, r) == garbage]
    (record,) = ours
    position = f"{record.partition}:{record.offset}"

    def tiaki(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TIAKI), "quarantine", *args],
            env=env.environment(),
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )

    def listed(*flags: str) -> dict[str, dict[str, Any]]:
        out = tiaki("list", "--format", "json", *flags)
        assert out.returncode == 0, out.stderr
        return {f"{e['partition']}:{e['offset']}": e for e in json.loads(out.stdout)}

    assert (await asyncio.to_thread(listed))[position]["state"] == "open"
    resolve = [
        "resolve",
        position,
        "--outcome",
        "dismissed",
        "--operator",
        "Operator One (synthetic)",
        "--justification",
        "synthetic garbage from the test suite",
    ]
    done = await asyncio.to_thread(tiaki, *resolve)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{position}: dismissed by Operator One (synthetic)"
    assert position not in await asyncio.to_thread(listed)  # the default view: open records
    everything = await asyncio.to_thread(listed, "--all")
    assert everything[position]["state"] == "dismissed"
    assert everything[position]["resolved_by"] == "Operator One (synthetic)"
    again = await asyncio.to_thread(tiaki, *resolve)
    assert again.returncode == 1
    assert f"{position} is already dismissed" in again.stderr
    assert again.stderr.count("\n") == 1

    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await env.read("compliance", AUDIT)
    ]
    resolutions = [a for a in audit if a["action"] == "quarantine" and a["outcome"] == "dismissed"]
    mine = [a for a in resolutions if str(a["detail"]).startswith(f"dlq {position}: ")]
    assert [(a["actor"], a["reason_codes"], a["source_agency"]) for a in mine] == [
        ("Operator One (synthetic)", ["malformed_envelope"], "police")
    ]
