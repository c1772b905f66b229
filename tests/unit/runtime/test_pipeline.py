"""The pipeline turns each ingress record into exactly the records its verdicts call for."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import decode, encode, from_json
from broker.envelope import Algorithm, EnvelopeError, Kind, Opener, ReplayCache, Sealer
from broker.platform import egress, ingress
from broker.runtime import Accepted, Decider, Intake, Outcome, Pipeline, Verdict
from broker.runtime._audit import audited_pairs, grounds_ref
from broker.runtime._pipeline import (
    DEADLINE_HEADER,
    REASON_HEADER,
    RECIPIENT_HEADER,
    REVIEW_ID_HEADER,
    REVIEW_KIND_HEADER,
    SUBJECTS_HEADER,
    Processed,
    body_json,
)
from broker.transport import Record
from tests.unit.runtime.test_intake import (
    EPISODE,
    NOW,
    REGISTRY,
    ROOT,
    SCHEMAS,
    TOPIC,
    episode,
    make_ring,
)

SHARED = SCHEMAS.latest("SharedEvent")
AUDIT = SCHEMAS.latest("AuditRecord")
QUARANTINED = SCHEMAS.latest("QuarantinedRecord")


class ScriptedDecider:
    """A decider for tests: fixed verdicts per recipient, or an error."""

    policy_hash = "cd" * 32

    def __init__(self, verdicts: Sequence[Verdict] = (), error: Exception | None = None) -> None:
        self.verdicts = verdicts
        self.error = error

    def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
        if self.error is not None:
            raise self.error
        return self.verdicts


def minimised(accepted_event: dict[str, Any]) -> dict[str, Any]:
    return {"header": {"case_id": accepted_event["header"]["case_id"]}}


class Harness:
    def __init__(self, decider: Decider) -> None:
        self.ring = make_ring()
        self.police = Sealer("police", self.ring)
        intake = Intake(
            registry=REGISTRY,
            schemas=SCHEMAS,
            opener=Opener("broker", self.ring, replay=ReplayCache()),
        )
        self.pipeline = Pipeline(
            intake=intake,
            decider=decider,
            sealer=Sealer("broker", self.ring),
            schemas=SCHEMAS,
            subject_key=b"synthetic-test-audit-key-000000",
        )
        self.offset = 0

    def record(self, value: bytes | None = None) -> Record:
        event_id = str(uuid.uuid4())
        if value is None:
            value = self.police.seal(
                encode(EPISODE, episode(event_id)),
                kind=Kind.INGRESS,
                topic=TOPIC,
                recipient="broker",
                event_id=event_id,
                schema_fingerprint=EPISODE.fingerprint,
                now=NOW,
            )
        self.offset += 1
        return Record(TOPIC, 0, self.offset, b"SYN-CASE-0001", value, (), 0)

    def open_for(self, principal: str, topic: str, value: bytes) -> dict[str, Any]:
        kind = Kind.HOLD if principal == "broker" else Kind.EGRESS
        opened = Opener(principal, self.ring).open(
            value, topic=topic, now=NOW, kind=kind, source="broker"
        )
        schema = SCHEMAS.by_fingerprint(opened.schema_fingerprint)
        return decode(opened.payload, schema)


BODY = {"header": {"case_id": "SYN-CASE-0001"}}


def verdict(recipient: str, outcome: Outcome) -> Verdict:
    return Verdict(
        recipient=recipient,
        outcome=outcome,
        rule_ids=("R-test",),
        reason_codes=("test",),
        route="fva_s20",
        legal_basis="FVA s20",
        purpose="fv_risk_needs_assessment",
        field_actions={"header.case_id": "keep", "narrative": "drop"},
        body=None if outcome is Outcome.DENY else BODY,
        policy_hash="cd" * 32,
    )


def test_share_review_and_deny() -> None:
    harness = Harness(
        ScriptedDecider(
            [
                verdict("oranga-tamariki", Outcome.SHARE),
                verdict("msd", Outcome.REVIEW),
                verdict("corrections", Outcome.DENY),
            ]
        )
    )
    processed = harness.pipeline.process(harness.record(), NOW)
    outputs = processed.outputs
    topics = [o.topic for o in outputs]
    assert sorted(topics) == sorted(
        [
            "tiaki.state.tallies",  # the episode, counted for the hubs
            "tiaki.audit",
            "tiaki.egress.oranga-tamariki",
            "tiaki.review",
        ]
    )
    egress = next(o for o in outputs if o.topic == "tiaki.egress.oranga-tamariki")
    shared = harness.open_for("oranga-tamariki", egress.topic, egress.value)
    assert json.loads(shared["body_json"]) == BODY
    assert shared["field_actions"] == {"header.case_id": "keep", "narrative": "drop"}
    assert egress.key == b"SYN-CASE-0001"

    held = next(o for o in outputs if o.topic == "tiaki.review")
    assert dict(held.headers)[RECIPIENT_HEADER] == b"msd"
    assert REVIEW_KIND_HEADER not in dict(held.headers)  # held: nothing was delivered
    assert (
        harness.open_for("broker", "tiaki.review", held.value)["event_type"]
        == "FamilyHarmEpisodeReport"
    )
    with pytest.raises(Exception, match=r"."):
        harness.open_for("msd", "tiaki.review", held.value)  # held items are sealed to the broker

    (audit,) = [decode(o.value, AUDIT) for o in outputs if o.topic == "tiaki.audit"]
    assert audit["action"] == "decision"
    assert (audit["recipient"], audit["outcome"]) == (None, None)
    assert [(d["recipient"], d["outcome"], d["rule_ids"]) for d in audit["decisions"]] == [
        ("oranga-tamariki", "share", ["R-test"]),
        ("msd", "review", ["R-test"]),
        ("corrections", "deny", ["R-test"]),
    ]
    assert audit["decisions"][0]["field_actions"] == {"header.case_id": "keep", "narrative": "drop"}
    key, sharing = (
        b"synthetic-test-audit-key-000000",
        episode(str(uuid.uuid4()))["header"]["sharing"],
    )
    assert (audit["justification_ref"], audit["accountable_ref"]) == (  # FVA-07
        grounds_ref(key, "justification", sharing["justification"]),
        grounds_ref(key, "accountable", sharing["accountable_role"]),
    )
    assert list(audited_pairs(audit)) == [
        ("oranga-tamariki", "share"),
        ("msd", "review"),
        ("corrections", "deny"),
    ]
    assert [v.outcome for v in processed.verdicts] == [Outcome.SHARE, Outcome.REVIEW, Outcome.DENY]
    assert processed.quarantine_reason is None


def test_rejected_record_goes_to_quarantine_whole() -> None:
    harness = Harness(ScriptedDecider())
    bad = harness.record(b"\x01garbage")
    processed = harness.pipeline.process(bad, NOW)
    outputs = processed.outputs
    assert [o.topic for o in outputs] == ["tiaki.dlq", "tiaki.audit", "tiaki.egress.police"]
    dlq = outputs[0]
    assert dict(dlq.headers)[REASON_HEADER] == b"malformed_envelope"
    kept = harness.open_for("broker", "tiaki.dlq", dlq.value)
    assert (kept["value"], kept["offset"], kept["reason"]) == (
        b"\x01garbage",
        bad.offset,
        "malformed_envelope",
    )
    assert decode(outputs[1].value, AUDIT)["reason_codes"] == ["malformed_envelope"]
    assert processed.quarantine_reason == "malformed_envelope"
    # The agency that wrote it (its ingress topic says who) is told where and why, unkeyed
    # (its key is not trusted either), and nothing of the content.
    notice = harness.open_for("police", "tiaki.egress.police", outputs[2].value)
    assert notice == {
        "topic": bad.topic,
        "partition": bad.partition,
        "offset": bad.offset,
        "reason": "malformed_envelope",
        "detail": decode(outputs[1].value, AUDIT)["detail"],
        "event_id": None,
        "event_type": None,
        "refused_at": NOW,
    }
    assert outputs[2].key is None


def test_policy_error_fails_closed_and_loses_nothing() -> None:
    harness = Harness(ScriptedDecider(error=RuntimeError("rule exploded")))
    record = harness.record()
    processed = harness.pipeline.process(record, NOW)
    outputs = processed.outputs
    assert processed.quarantine_reason == "policy_error"
    # Nothing of the event is shared: the only egress record is the source's refusal notice.
    # (The episode happened: it is counted for the hubs, as its state changes are kept.)
    assert [o.topic for o in outputs] == [
        "tiaki.state.tallies",
        "tiaki.dlq",
        "tiaki.audit",
        "tiaki.egress.police",
    ]
    notice = harness.open_for("police", "tiaki.egress.police", outputs[3].value)
    assert set(notice) == {f.path for f in SCHEMAS.latest("RefusalNotice").fields}
    assert notice["reason"] == "policy_error"
    assert harness.open_for("broker", "tiaki.dlq", outputs[1].value)["value"] == record.value


def test_allocation_updates_case_state_before_deciding() -> None:
    allocation = SCHEMAS.latest("CaseAllocation")
    doc = json.loads((ROOT / "schemas" / "examples" / "CaseAllocation.json").read_text())
    event_id = str(uuid.uuid4())
    doc["header"] |= {"event_id": event_id, "source_agency": "police"}
    seen: list[bool] = []

    class Recording(ScriptedDecider):
        def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
            seen.append(harness.pipeline.cases.participates("SYN-CASE-0001", "oranga-tamariki"))
            return []

    harness = Harness(Recording())
    value = harness.police.seal(
        encode(allocation, from_json(allocation, doc)),
        kind=Kind.INGRESS,
        topic=TOPIC,
        recipient="broker",
        event_id=event_id,
        schema_fingerprint=allocation.fingerprint,
        now=NOW,
    )
    processed = harness.pipeline.process(harness.record(value), NOW)
    assert seen == [True]
    (state,) = [o for o in processed.outputs if o.topic == "tiaki.state.cases"]
    assert state.key == b"SYN-CASE-0001"
    decoded = decode(state.value, SCHEMAS.latest("CaseMembership"))
    assert decoded["members"] == {"oranga-tamariki": ["allocation:participant"]}


def test_parts_reused_across_events_carry_each_event_own_facts() -> None:
    """Decision parts are cached between events; every record still names its own event."""
    harness = Harness(
        ScriptedDecider(
            [
                verdict("oranga-tamariki", Outcome.SHARE),
                verdict("corrections", Outcome.SHARE),
                verdict("msd", Outcome.DENY),
            ]
        )
    )
    seen = []
    for _ in range(3):
        record = harness.record()
        outputs = harness.pipeline.process(record, NOW).outputs
        (audit,) = [decode(o.value, AUDIT) for o in outputs if o.topic == "tiaki.audit"]
        shared = [
            harness.open_for(o.topic.removeprefix("tiaki.egress."), o.topic, o.value)
            for o in outputs
            if o.topic.startswith("tiaki.egress.")
        ]
        assert len(shared) == 2
        assert {str(s["event_id"]) for s in shared} == {audit["event_id"]}
        assert all(s["rule_ids"] == ["R-test"] and s["purpose"] for s in shared)
        assert [d["recipient"] for d in audit["decisions"]] == [
            "oranga-tamariki",
            "corrections",
            "msd",
        ]
        (audit_out,) = [o for o in outputs if o.topic == "tiaki.audit"]
        assert audit_out.key == audit["case_ref"].encode()  # the keyed hash, not the case id
        assert b"SYN-CASE" not in (audit_out.key or b"")
        # What a whole-record encode of the same values gives, byte for byte.
        assert encode(AUDIT, audit) == next(o.value for o in outputs if o.topic == "tiaki.audit")
        seen.append(audit["event_id"])
    assert len(set(seen)) == 3


KEYED = ("police", "msd", "oranga-tamariki", "corrections")  # agencies make_ring gives keys
_HARNESS: list[Harness] = []


def _harness() -> Harness:
    if not _HARNESS:  # one ring for every example: key generation is the slow part
        _HARNESS.append(Harness(ScriptedDecider()))
    return _HARNESS[0]


@st.composite
def refused_records(draw: st.DrawFn) -> Record:
    """A record the intake must refuse, on some agency's ingress topic (or a stray one):
    random bytes, or a sealed event with one byte changed or cut short."""
    harness = _harness()
    strays = ["tiaki.stray", ingress("not-in-the-registry")]  # no egress topic to tell
    topic = draw(st.sampled_from([ingress(a.id) for a in REGISTRY.agencies] + strays))
    sealed = harness.record().value
    value = draw(
        st.one_of(
            st.binary(max_size=300),
            st.integers(0, len(sealed) - 1).map(
                lambda i: sealed[:i] + bytes([sealed[i] ^ 0x5A]) + sealed[i + 1 :]
            ),
            st.integers(1, len(sealed) - 1).map(lambda n: sealed[:n]),
        )
    )
    key = draw(st.one_of(st.none(), st.binary(max_size=20)))
    return Record(topic, draw(st.integers(0, 5)), draw(st.integers(0, 10**9)), key, value, (), 0)


@settings(max_examples=150, deadline=None)
@given(refused_records())
def test_any_refused_record_is_kept_whole_audited_and_reported_to_its_writer_only(
    record: Record,
) -> None:
    harness = _harness()
    processed = harness.pipeline.process(record, NOW)  # never raises
    reason = processed.quarantine_reason
    assert reason is not None
    dlq, audit, *notice = processed.outputs
    assert dlq.topic == "tiaki.dlq"
    assert dict(dlq.headers)[REASON_HEADER] == reason.encode()
    assert harness.open_for("broker", "tiaki.dlq", dlq.value)["value"] == record.value
    assert decode(audit.value, AUDIT)["reason_codes"] == [reason]
    writer = record.topic.removeprefix("tiaki.ingress.")
    if writer not in KEYED:  # no key to seal to (or no agency): DLQ and audit only
        assert notice == []
        return
    (out,) = notice
    assert (out.topic, out.key) == (f"tiaki.egress.{writer}", None)
    told = harness.open_for(writer, out.topic, out.value)
    assert (told["topic"], told["partition"], told["offset"], told["reason"]) == (
        record.topic,
        record.partition,
        record.offset,
        reason,
    )
    for other in KEYED:
        if other != writer:  # sealed to the writer alone
            with pytest.raises(EnvelopeError):
                harness.open_for(other, out.topic, out.value)
    if len(record.value) >= 8:  # nothing of the refused bytes comes back
        assert record.value not in encode(SCHEMAS.latest("RefusalNotice"), told)


def test_no_notice_for_a_topic_of_no_registered_agency_even_with_a_key() -> None:
    """A stray ``tiaki.ingress.<x>`` (made by hand) has no egress topic: a notice there would
    abort every transaction that carried it. The quarantine and audit record still happen."""
    harness = Harness(ScriptedDecider())
    for algorithm in Algorithm:
        harness.ring.generate("not-in-the-registry", algorithm, NOW - timedelta(days=1), os.urandom)
    stray = Record(ingress("not-in-the-registry"), 0, 1, None, b"\x01garbage", (), 0)
    processed = harness.pipeline.process(stray, NOW)
    assert [o.topic for o in processed.outputs] == ["tiaki.dlq", "tiaki.audit"]
    assert processed.quarantine_reason == "unknown_agency"


def sealed_example(
    harness: Harness, event_type: str, source: str, event_id: str | None = None, **fields: Any
) -> Record:
    """The schema example of ``event_type``, changed by ``fields``, sealed by ``source`` on its
    own ingress topic (``make_ring`` gives police, msd, oranga-tamariki, corrections keys),
    under ``event_id`` (a fresh one if None)."""
    schema = SCHEMAS.latest(event_type)
    doc = json.loads((ROOT / "schemas" / "examples" / f"{event_type}.json").read_text())
    event_id = event_id or str(uuid.uuid4())
    doc["header"] |= {"event_id": event_id, "source_agency": source}
    doc |= fields
    value = Sealer(source, harness.ring).seal(
        encode(schema, from_json(schema, doc)),
        kind=Kind.INGRESS,
        topic=ingress(source),
        recipient="broker",
        event_id=event_id,
        schema_fingerprint=schema.fingerprint,
        now=NOW,
    )
    harness.offset += 1
    return Record(ingress(source), 0, harness.offset, b"SYN-CASE-0001", value, (), 0)


def refused_and_told(
    harness: Harness, processed: Processed, reason: str, sender: str
) -> dict[str, Any]:
    """Assert ``processed`` is an admitted event refused for ``reason``: kept whole in
    quarantine, audited as a quarantine from ``sender``, and ``sender`` told on its egress
    topic; return the refusal notice, opened."""
    assert processed.quarantine_reason == reason
    assert [o.topic for o in processed.outputs] == ["tiaki.dlq", "tiaki.audit", egress(sender)]
    assert dict(processed.outputs[0].headers)[REASON_HEADER] == reason.encode()
    audit = decode(processed.outputs[1].value, AUDIT)
    assert (audit["action"], audit["reason_codes"]) == ("quarantine", [reason])
    assert audit["source_agency"] == sender
    notice = harness.open_for(sender, egress(sender), processed.outputs[2].value)
    assert notice["reason"] == reason
    return notice


def test_an_unauthorised_membership_event_is_quarantined_and_changes_nothing() -> None:
    """Corrections allocating itself to a case (review-policy s3 (b)) is refused: quarantined
    with its own reason, audited, reported to Corrections, never decided or shared, and it
    does not make Corrections a participant."""
    decided: list[str] = []

    class Recording(ScriptedDecider):
        def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
            decided.append(accepted.event_type)
            return [verdict("oranga-tamariki", Outcome.SHARE)]

    harness = Harness(Recording())
    forged = sealed_example(
        harness, "CaseAllocation", "corrections", agency={"agency_id": "corrections"}
    )
    processed = harness.pipeline.process(forged, NOW)
    notice = refused_and_told(harness, processed, "unauthorised_membership", "corrections")
    assert "only a coordinating agency" in notice["detail"]
    assert decided == []
    assert not harness.pipeline.cases.participates("SYN-CASE-0001", "corrections")

    # The same allocation from Police, which coordinates cases, is admitted and decided.
    allowed = sealed_example(
        harness, "CaseAllocation", "police", agency={"agency_id": "corrections"}
    )
    processed = harness.pipeline.process(allowed, NOW)
    assert processed.quarantine_reason is None
    assert "tiaki.state.cases" in [o.topic for o in processed.outputs]
    assert decided == ["CaseAllocation"]
    assert harness.pipeline.cases.participates("SYN-CASE-0001", "corrections")


def test_a_meeting_outcome_from_another_agency_leaves_the_risk_tier() -> None:
    """MSD's meeting outcome rating the case high (review-policy s3 (c)) is quarantined."""
    harness = Harness(ScriptedDecider())
    record = sealed_example(
        harness,
        "SafetyAssessmentMeetingOutcome",
        "msd",
        risk_tier="high",
        lead_agency={"agency_id": "msd"},
    )
    processed = harness.pipeline.process(record, NOW)
    assert processed.quarantine_reason == "unauthorised_membership"
    assert harness.pipeline.cases.risk("SYN-CASE-0001") == "unknown"
    assert not harness.pipeline.cases.participates("SYN-CASE-0001", "msd")


def imminent_share(recipient: str) -> Verdict:
    return replace(
        verdict(recipient, Outcome.SHARE),
        obligations=("review_within_24h", "tell_victim_when_safe"),
    )


def test_a_share_to_be_reviewed_afterwards_goes_at_once_and_to_the_review_queue() -> None:
    """LAW.md: in imminent danger a minimal disclosure to Police goes at once and a review
    follows within 24 hours (review-policy s8). A share without the obligation has no copy."""
    harness = Harness(
        ScriptedDecider([imminent_share("police"), verdict("oranga-tamariki", Outcome.SHARE)])
    )
    processed = harness.pipeline.process(harness.record(), NOW)
    topics = sorted(o.topic for o in processed.outputs)
    assert topics == [
        "tiaki.audit",
        "tiaki.egress.oranga-tamariki",
        "tiaki.egress.police",
        "tiaki.review",
        "tiaki.state.tallies",
    ]
    delivered = next(o for o in processed.outputs if o.topic == "tiaki.egress.police")
    shared = harness.open_for("police", delivered.topic, delivered.value)
    (copy,) = [o for o in processed.outputs if o.topic == "tiaki.review"]
    assert copy.key == delivered.key == b"SYN-CASE-0001"
    held = harness.open_for("broker", "tiaki.review", copy.value)  # sealed to the broker
    assert held == shared
    with pytest.raises(EnvelopeError):
        harness.open_for("police", "tiaki.review", copy.value)
    headers = dict(copy.headers)
    (audit,) = [decode(o.value, AUDIT) for o in processed.outputs if o.topic == "tiaki.audit"]
    assert headers[RECIPIENT_HEADER] == b"police"
    assert headers[REVIEW_ID_HEADER] == f"police/{audit['event_id']}/police".encode()
    assert int(headers[DEADLINE_HEADER]) == int((NOW + timedelta(hours=24)).timestamp() * 1000)
    assert headers[SUBJECTS_HEADER].decode().split(",") == audit["subject_refs"]
    assert headers[REVIEW_KIND_HEADER] == b"after_disclosure"


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.uuids(),
)


@given(
    st.recursive(
        JSON_LEAVES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_body_json_is_json_dumps_with_the_broker_options(body: Any) -> None:
    """The encoder made once writes what json.dumps made per call wrote."""

    def hook(value: Any) -> Any:
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, uuid.UUID):
            return str(value)
        raise TypeError(type(value).__name__)

    expected = json.dumps(
        body, default=hook, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert body_json(body) == expected


def test_an_event_no_rule_could_send_anywhere_still_has_its_decision_audited() -> None:
    """No candidate recipients is a decision too (to share with nobody): every admitted event
    has its decision audit record, with the event's case and subjects, so compliance finds it."""
    harness = Harness(ScriptedDecider([]))
    processed = harness.pipeline.process(harness.record(), NOW)
    assert [o.topic for o in processed.outputs] == ["tiaki.state.tallies", "tiaki.audit"]
    audit = decode(processed.outputs[1].value, AUDIT)
    assert (audit["action"], audit["decisions"]) == ("decision", [])
    assert audit["event_type"] == "FamilyHarmEpisodeReport"
    assert audit["case_ref"] is not None
    assert audit["subject_refs"]
    assert (processed.verdicts, processed.quarantine_reason) == ((), None)


def test_events_of_one_case_decided_in_one_batch_never_tie() -> None:
    """A recipient orders a case's events by ``decided_at`` (a held one arrives when released,
    after later ones): two events of one case in one batch (one ``now``) must not tie, and a
    held item keeps its place when released (test_review)."""
    harness = Harness(ScriptedDecider([verdict("oranga-tamariki", Outcome.SHARE)]))

    def decided(when: datetime) -> datetime:
        (out,) = [
            o
            for o in harness.pipeline.process(harness.record(), when).outputs
            if o.topic == "tiaki.egress.oranga-tamariki"
        ]
        shared = harness.open_for("oranga-tamariki", out.topic, out.value)
        assert shared["shared_at"] == shared["decided_at"]  # shared as decided
        return shared["decided_at"]

    tick = timedelta(milliseconds=1)
    assert [decided(NOW) for _ in range(3)] == [NOW, NOW + tick, NOW + 2 * tick]
    assert decided(NOW + tick) == NOW + 3 * tick  # a next batch in the same millisecond
    assert decided(NOW + timedelta(seconds=1)) == NOW + timedelta(seconds=1)
