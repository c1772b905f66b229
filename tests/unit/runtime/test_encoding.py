"""Shared events joined from cached and directly written parts are, byte for byte, the records
written whole, whatever order events, batches and rulings come in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import encode
from broker.runtime import Outcome, Verdict
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
