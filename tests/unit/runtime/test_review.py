"""The review queue: held items are released or declined by a named person with reasons, and
escalate when overdue; nothing leaves the queue silently."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.codec import decode
from broker.envelope import Kind, Opener
from broker.runtime import Outcome
from broker.runtime._audit import AuditContext
from broker.runtime._review import ReviewError, decide, read_queue
from broker.transport import Outgoing, Record
from tests.unit.runtime.test_intake import NOW, SCHEMAS
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider, verdict

CONTEXT = AuditContext(subject_key=b"synthetic-test-audit-key-000000", policy_hash=None)


def as_records(outputs: list[Outgoing]) -> list[Record]:
    return [Record(o.topic, 0, i, o.key, o.value, o.headers, 0) for i, o in enumerate(outputs)]


def held() -> tuple[Harness, list[Record]]:
    harness = Harness(ScriptedDecider([verdict("msd", Outcome.REVIEW)]))
    processed = harness.pipeline.process(harness.record(), NOW)
    return harness, as_records([o for o in processed.outputs if o.topic == "tiaki.review"])


def queue(harness: Harness, records: list[Record], later: timedelta = timedelta(0)):  # type: ignore[no-untyped-def]
    return read_queue(records, Opener("broker", harness.ring), SCHEMAS, NOW + later)


def carry_out(
    harness: Harness,
    records: list[Record],
    verdict_: str,
    justification: str = "risk confirmed by SYN reviewer",
    later: timedelta = timedelta(0),
) -> list[Outgoing]:
    (item,) = queue(harness, records, later).values()
    return decide(
        item,
        verdict_,
        reviewer="Reviewer One (synthetic)",
        justification=justification,
        now=NOW + later,
        sealer=harness.pipeline._sealer,
        schemas=SCHEMAS,
        context=CONTEXT,
    )


def test_approval_releases_to_the_recipient_once() -> None:
    harness, records = held()
    (item,) = queue(harness, records).values()
    assert (item.state, item.recipient) == ("held", "msd")
    outputs = carry_out(harness, records, "approve")
    assert sorted(o.topic for o in outputs) == ["tiaki.audit", "tiaki.egress.msd", "tiaki.review"]
    released = next(o for o in outputs if o.topic == "tiaki.egress.msd")
    opened = Opener("msd", harness.ring).open(
        released.value, topic=released.topic, now=NOW, kind=Kind.EGRESS, source="broker"
    )
    assert (
        decode(opened.payload, SCHEMAS.latest("SharedEvent"))["event_type"]
        == "FamilyHarmEpisodeReport"
    )
    audit = decode(
        next(o for o in outputs if o.topic == "tiaki.audit").value, SCHEMAS.latest("AuditRecord")
    )
    # The reviewer's identity is on the audit record (the actor), the reasons in its detail.
    assert (audit["action"], audit["outcome"]) == ("review", "approve")
    assert (audit["actor"], audit["detail"]) == (
        "Reviewer One (synthetic)",
        "risk confirmed by SYN reviewer",
    )
    records += as_records([o for o in outputs if o.topic == "tiaki.review"])
    (item,) = queue(harness, records).values()
    assert item.state == "released"
    with pytest.raises(ReviewError, match="is released; it cannot be declined"):
        carry_out(harness, records, "decline")


def test_each_review_action_names_the_people_the_holding_decision_named() -> None:
    """The held body is minimised and may name nobody, so the held item carries its event's
    subject references; approve, decline and escalate records name exactly those people,
    and a person query of the audit index finds them without going through the decision."""
    harness = Harness(ScriptedDecider([verdict("msd", Outcome.REVIEW)]))
    processed = harness.pipeline.process(harness.record(), NOW)
    (decision,) = [
        decode(o.value, SCHEMAS.latest("AuditRecord"))
        for o in processed.outputs
        if o.topic == "tiaki.audit"
    ]
    assert decision["subject_refs"]
    records = as_records([o for o in processed.outputs if o.topic == "tiaki.review"])
    for verdict_, later in (("approve", timedelta(0)), ("decline", timedelta(0))):
        outputs = carry_out(harness, records, verdict_, later=later)
        (audit,) = [
            decode(o.value, SCHEMAS.latest("AuditRecord"))
            for o in outputs
            if o.topic == "tiaki.audit"
        ]
        assert audit["subject_refs"] == decision["subject_refs"], verdict_
    escalated = carry_out(harness, records, "escalate", later=timedelta(hours=25))
    (audit,) = [
        decode(o.value, SCHEMAS.latest("AuditRecord"))
        for o in escalated
        if o.topic == "tiaki.audit"
    ]
    assert audit["subject_refs"] == decision["subject_refs"]


def test_an_item_held_before_subjects_were_recorded_gives_actions_naming_nobody() -> None:
    harness, records = held()
    old = [
        Record(
            r.topic,
            r.partition,
            r.offset,
            r.key,
            r.value,
            tuple((k, v) for k, v in r.headers if k != "tiaki-subjects"),
            r.timestamp_ms,
        )
        for r in records
    ]
    (audit,) = [
        decode(o.value, SCHEMAS.latest("AuditRecord"))
        for o in carry_out(harness, old, "approve")
        if o.topic == "tiaki.audit"
    ]
    assert audit["subject_refs"] == []


def test_decline_needs_reasons_and_releases_nothing() -> None:
    harness, records = held()
    with pytest.raises(ReviewError, match="needs a justification"):
        carry_out(harness, records, "decline", justification="  ")
    (item,) = queue(harness, records).values()
    with pytest.raises(ReviewError, match="needs the reviewer's name"):
        decide(
            item,
            "decline",
            reviewer=" ",
            justification="not necessary for the plan",
            now=NOW,
            sealer=harness.pipeline._sealer,
            schemas=SCHEMAS,
            context=CONTEXT,
        )
    outputs = carry_out(harness, records, "decline", justification="not necessary for the plan")
    assert sorted(o.topic for o in outputs) == ["tiaki.audit", "tiaki.review"]


def test_overdue_items_escalate_and_can_still_be_decided() -> None:
    harness, records = held()
    (item,) = queue(harness, records, timedelta(hours=25)).values()
    assert item.overdue(NOW + timedelta(hours=25))
    assert not item.overdue(NOW + timedelta(hours=1))
    outputs = carry_out(harness, records, "escalate", justification="", later=timedelta(hours=25))
    audit = decode(
        next(o for o in outputs if o.topic == "tiaki.audit").value, SCHEMAS.latest("AuditRecord")
    )
    assert audit["action"] == "escalation"
    records += as_records([o for o in outputs if o.topic == "tiaki.review"])
    assert next(iter(queue(harness, records).values())).state == "escalated"
    assert any(o.topic == "tiaki.egress.msd" for o in carry_out(harness, records, "approve"))
