"""Shared events joined from cached and directly written parts are, byte for byte, the records
written whole, whatever order events, batches and rulings come in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import InvalidRecord, encode
from broker.runtime import Outcome, Verdict
from broker.runtime._audit import AuditContext, audit_base
from broker.runtime._encoding import RecordParts
from tests.unit.runtime.test_intake import SCHEMAS

SHARED = SCHEMAS.latest("SharedEvent")
AUDIT = SCHEMAS.latest("AuditRecord")
T0 = datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=UTC)
#: Batch times: one instant written in two zones, times under a millisecond apart, one before
#: the epoch.
TIMES = [
    T0,
    T0.astimezone(timezone(timedelta(hours=13))),
    T0 + timedelta(milliseconds=1),
    T0 + timedelta(microseconds=999),
    datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC),
]

verdicts = st.builds(
    Verdict,
    recipient=st.sampled_from(["police", "corrections"]),
    outcome=st.just(Outcome.SHARE),
    rule_ids=st.sampled_from([("R-a",), ("R-a", "R-b")]),
    reason_codes=st.just(()),
    route=st.sampled_from([None, "fva_s20"]),
    legal_basis=st.sampled_from([None, "FVA s20"]),
    purpose=st.sampled_from([None, "fv_plan_or_response"]),
    obligations=st.sampled_from([(), ("review_within_24h",)]),
    field_actions=st.just({"header.case_id": "keep"}),
    policy_hash=st.sampled_from([None, "ab" * 32]),
)
events = st.tuples(
    st.one_of(st.uuids().map(str), st.uuids()),
    st.sampled_from(["nz.tiaki.SafetyPlanUpdate", "nz.tiaki.TaskEvent"]),
    st.sampled_from(["safe-whanau", "police"]),
    st.sampled_from(["cd" * 32, "ef" * 32]),
    st.sampled_from(TIMES),
    verdicts,
    st.text(max_size=40),
)


@settings(max_examples=200)
@given(st.lists(events, min_size=1, max_size=6))
def test_shared_events_from_parts_are_the_whole_record(
    run: list[tuple[str | uuid.UUID, str, str, str, datetime, Verdict, str]],
) -> None:
    parts = RecordParts(AUDIT, SHARED)
    for event_id, event_type, source, schema, at, v, body in run:
        head = parts.shared_head(
            event_id=event_id,  # type: ignore[arg-type]  # a UUID is written as its text
            event_type=event_type,
            source_agency=source,
            source_schema=schema,
            shared_at=at,
        )
        whole = {
            "event_id": event_id,
            "event_type": event_type,
            "source_agency": source,
            "source_schema": schema,
            "shared_at": at,
            "decided_at": at,  # shared as decided (only a release from review differs)
            "route": v.route,
            "legal_basis": v.legal_basis,
            "purpose": v.purpose,
            "obligations": list(v.obligations),
            "rule_ids": list(v.rule_ids),
            "field_actions": dict(v.field_actions),
            "policy_hash": v.policy_hash,
            "body_json": body,
        }
        assert parts.shared_event(head, v, parts.body(body)) == encode(SHARED, whole)


texts = st.one_of(st.none(), st.text(max_size=12))
audit_records = st.fixed_dictionaries(
    {
        "audit_id": st.one_of(st.uuids(), st.uuids().map(str)),
        "recorded_at": st.sampled_from(TIMES),
        "action": st.sampled_from(["decision", "quarantine", "escalation"]),
        "event_id": texts,
        "event_type": st.sampled_from([None, "SafetyPlanUpdate"]),
        "schema_fingerprint": st.sampled_from([None, "ab" * 32]),
        "case_ref": texts,
        "actor": st.sampled_from(["broker", "reviewer"]),
        "source_agency": st.sampled_from([None, "safe-whanau"]),
        "recipient": st.sampled_from([None, "police"]),
        "outcome": st.sampled_from([None, "deny"]),
        "route": st.none(),
        "legal_basis": st.none(),
        "purpose": st.sampled_from([None, "fv_plan_or_response"]),
        "consent": st.sampled_from([None, "given", "refused"]),
        "person_told": st.sampled_from([None, "when_safe"]),
        "rule_ids": st.lists(st.sampled_from(["R-a", "R-b"]), max_size=2),
        "reason_codes": st.lists(st.sampled_from(["x", "y"]), max_size=2),
        "obligations": st.lists(st.just("review_within_24h"), max_size=1),
        "field_actions": st.dictionaries(
            st.sampled_from(["a", "b", "c"]), st.sampled_from(["keep", "drop"]), max_size=3
        ),
        "subject_refs": st.lists(st.text(max_size=8), max_size=3),
        "policy_hash": st.sampled_from([None, "cd" * 32]),
        "detail": texts,
    }
)


@settings(max_examples=300)
@given(st.lists(audit_records, min_size=1, max_size=6))
def test_decision_heads_from_parts_are_the_whole_record(run: list[dict[str, object]]) -> None:
    parts = RecordParts(AUDIT, SHARED)
    for record in run:
        assert parts.decision_record(record, []) == encode(AUDIT, record | {"decisions": []})


def test_a_decision_head_of_the_wrong_types_is_refused_as_a_whole_encode_refuses_it() -> None:
    parts = RecordParts(AUDIT, SHARED)
    good: dict[str, object] = {
        "audit_id": uuid.UUID(int=1),
        "recorded_at": T0,
        "action": "decision",
        "event_id": "e",
        "event_type": None,
        "schema_fingerprint": None,
        "case_ref": None,
        "actor": "broker",
        "source_agency": None,
        "recipient": None,
        "outcome": None,
        "route": None,
        "legal_basis": None,
        "purpose": None,
        "consent": None,
        "person_told": None,
        "rule_ids": [],
        "reason_codes": [],
        "obligations": [],
        "field_actions": {},
        "subject_refs": [],
        "policy_hash": None,
        "detail": None,
    }
    assert parts.decision_record(good, []) == encode(AUDIT, good | {"decisions": []})
    for name, bad in [("event_id", 3), ("subject_refs", [b"x"]), ("consent", 1), ("actor", None)]:
        with pytest.raises(InvalidRecord):
            encode(AUDIT, good | {name: bad, "decisions": []})
        with pytest.raises(InvalidRecord):
            parts.decision_record(good | {name: bad}, [])


all_verdicts = st.builds(
    Verdict,
    recipient=st.sampled_from(["police", "msd"]),
    outcome=st.sampled_from(list(Outcome)),
    rule_ids=st.sampled_from([("R-a",), ("default-deny",)]),
    reason_codes=st.sampled_from([(), ("no_permit",)]),
    route=st.sampled_from([None, "fva_s20"]),
    legal_basis=st.sampled_from([None, "FVA s20"]),
    purpose=st.sampled_from([None, "fv_plan_or_response"]),
    obligations=st.sampled_from([(), ("tell_victim_when_safe",)]),
    field_actions=st.sampled_from([{}, {"header.case_id": "keep", "plan_id": "drop"}]),
    body=st.sampled_from([None, {"plan_id": "p"}]),
)
decisions = st.fixed_dictionaries(
    {
        "audit_id": st.uuids(),
        "recorded_at": st.sampled_from(TIMES),
        "event_id": st.text(max_size=40),
        "event_type": st.sampled_from(["SafetyPlanUpdate", "TaskEvent"]),
        "schema_fingerprint": st.sampled_from(["ab" * 32, "cd" * 32]),
        "case_ref": st.text(max_size=70),
        "actor": st.sampled_from(["broker", "reviewer"]),
        "source_agency": st.sampled_from(["safe-whanau", "police"]),
        "consent": st.sampled_from([None, "given", "refused"]),
        "subject_refs": st.lists(st.text(max_size=70), max_size=3),
        "policy_hash": st.sampled_from([None, "cd" * 32]),
        "justification_ref": st.one_of(st.none(), st.text(max_size=70)),
        "accountable_ref": st.one_of(st.none(), st.text(max_size=70)),
    }
)


@settings(max_examples=300)
@given(st.lists(st.tuples(decisions, st.lists(all_verdicts, max_size=4)), min_size=1, max_size=6))
def test_decision_records_written_directly_are_the_record_built_whole(
    run: list[tuple[dict[str, Any], list[Verdict]]],
) -> None:
    """RecordParts.decision, which the pipeline calls with decision_audit's values, writes
    what decision_record writes for decision_audit's record (its other fields empty), with
    the caches the two share in any state."""
    parts = RecordParts(AUDIT, SHARED)
    for values, verdicts in run:
        context = AuditContext(b"k" * 32, values["policy_hash"], values["actor"])
        record = audit_base(context, "decision", values["recorded_at"], values["audit_id"])
        record |= {k: v for k, v in values.items() if k not in ("audit_id", "recorded_at")}
        expected = parts.decision_record(record, verdicts)
        assert parts.decision(verdicts, **values) == expected
        assert parts.decision([], **values) == encode(AUDIT, record)
