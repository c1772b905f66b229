"""The review queue: held items are released or declined by a named person with reasons, and
escalate when overdue; nothing leaves the queue silently."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from broker.audit._index import TOP_LEVEL, _row
from broker.audit._report import disclosed as disclosed_by
from broker.codec import decode, encode
from broker.envelope import Kind, Opener
from broker.runtime import Outcome
from broker.runtime import _review_cli as review_cli
from broker.runtime._audit import AuditContext
from broker.runtime._review import DECISION_HEADER, ReviewError, decide, read_queue
from broker.transport import Outgoing, Record
from tests.unit.runtime.test_intake import NOW, SCHEMAS
from tests.unit.runtime.test_pipeline import (
    Harness,
    ScriptedDecider,
    imminent_share,
    sealed_example,
    verdict,
)

CONTEXT = AuditContext(subject_key=b"synthetic-test-audit-key-000000", policy_hash=None)


def as_records(outputs: list[Outgoing], first: int = 0) -> list[Record]:
    """``outputs`` as records on partition 0, from offset ``first``."""
    return [
        Record(o.topic, 0, i, o.key, o.value, o.headers, 0)
        for i, o in enumerate(outputs, start=first)
    ]


def held() -> tuple[Harness, list[Record]]:
    harness = Harness(ScriptedDecider([verdict("msd", Outcome.REVIEW)]))
    processed = harness.pipeline.process(harness.record(), NOW)
    return harness, as_records([o for o in processed.outputs if o.topic == "tiaki.review"])


def queue(harness: Harness, records: list[Record], later: timedelta = timedelta(0)):  # type: ignore[no-untyped-def]
    return read_queue(records, Opener("broker", harness.ring), SCHEMAS, NOW + later).items


def carry_out(
    harness: Harness,
    records: list[Record],
    verdict_: str,
    justification: str = "risk confirmed by SYN reviewer",
    later: timedelta = timedelta(0),
    review_id: str | None = None,
) -> list[Outgoing]:
    """``verdict_`` on the item ``review_id`` (None: the only item), as a reviewer decides."""
    items = queue(harness, records, later)
    (item,) = items.values() if review_id is None else [items[review_id]]
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


def released_event(outputs: list[Outgoing], harness: Harness) -> dict[str, Any]:
    (released,) = [o for o in outputs if o.topic.startswith("tiaki.egress.")]
    opened = Opener("msd", harness.ring).open(
        released.value, topic=released.topic, now=NOW, kind=Kind.EGRESS, source="broker"
    )
    assert opened.schema_fingerprint == SCHEMAS.latest("SharedEvent").fingerprint
    return decode(opened.payload, SCHEMAS.latest("SharedEvent"))


def test_a_release_says_when_it_was_decided_so_the_recipient_can_order_it() -> None:
    """Events of the case decided while the item was held reached the recipient first; the
    release keeps the time the broker decided beside the time a person released it."""
    harness, records = held()
    shared = released_event(
        carry_out(harness, records, "approve", later=timedelta(hours=3)), harness
    )
    assert (shared["decided_at"], shared["shared_at"]) == (NOW, NOW + timedelta(hours=3))


def test_an_item_held_under_shared_event_v1_is_listed_and_released() -> None:
    """Held items outlive schema versions: one sealed as SharedEvent v1 (before decided_at) is
    read by the schema its envelope names, and its release is decided when it was held."""
    harness, records = held()
    v1 = SCHEMAS.get("SharedEvent", 1)
    old = []
    for r in records:
        opened = Opener("broker", harness.ring).open(
            r.value, topic=r.topic, now=NOW, kind=Kind.HOLD, source="broker"
        )
        values = decode(opened.payload, SCHEMAS.latest("SharedEvent"))
        del values["decided_at"]
        value = harness.pipeline._sealer.seal(
            encode(v1, values),
            kind=Kind.HOLD,
            topic=r.topic,
            recipient="broker",
            event_id=opened.event_id,
            schema_fingerprint=v1.fingerprint,
            now=NOW,
        )
        old.append(Record(r.topic, r.partition, r.offset, r.key, value, r.headers, 0))
    (item,) = queue(harness, old).values()
    assert (item.shared["event_type"], item.shared["decided_at"]) == (
        "FamilyHarmEpisodeReport",
        None,
    )
    shared = released_event(carry_out(harness, old, "approve", later=timedelta(hours=1)), harness)
    assert (shared["decided_at"], shared["shared_at"]) == (NOW, NOW + timedelta(hours=1))


def legacy(harness: Harness, record: Record, drop: str | None = None) -> Record:
    """``record`` as the broker held items before 7 December 2026: sealed with the event id
    alone (its headers not bound), under a review id without the source, without the header
    ``drop``."""
    opened = Opener("broker", harness.ring).open(
        record.value, topic="tiaki.review", now=NOW, kind=Kind.HOLD, source="broker"
    )
    headers = dict(record.headers)
    *_, event_id, recipient = headers["tiaki-review-id"].decode().split("/")
    value = harness.pipeline._sealer.seal(
        opened.payload,
        kind=Kind.HOLD,
        topic="tiaki.review",
        recipient="broker",
        event_id=event_id,
        schema_fingerprint=opened.schema_fingerprint,
        now=NOW,
    )
    headers["tiaki-review-id"] = f"{event_id}/{recipient}".encode()
    kept = tuple((k, v) for k, v in headers.items() if k != drop)
    return Record(record.topic, record.partition, record.offset, record.key, value, kept, 0)


def test_an_item_held_before_subjects_were_recorded_gives_actions_naming_nobody() -> None:
    harness, records = held()
    old = [legacy(harness, r, drop="tiaki-subjects") for r in records]
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


@pytest.mark.parametrize(
    "reasons",
    [
        "Jane Citizen (NHI ZZZ0016) now at the refuge",
        "spoke to her on 021 555 0199",
        "confirmed with jane.citizen@example.org",
    ],
)
def test_reasons_that_identify_someone_are_refused(reasons: str) -> None:
    # The audit log keeps a reviewer's reasons in clear; it must never identify a person.
    harness, records = held()
    with pytest.raises(ReviewError, match="looks like it holds a personal identifier"):
        carry_out(harness, records, "approve", justification=reasons)


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


def disclosed_row(audit: dict[str, Any]) -> bool:
    """Whether the subject report would list ``audit`` as a disclosure."""
    return disclosed_by(_row(audit, TOP_LEVEL, 0, 0))


def disclosed() -> tuple[Harness, list[Record]]:
    """The review copy of a share to Police in imminent danger (delivered already)."""
    harness = Harness(ScriptedDecider([imminent_share("police")]))
    processed = harness.pipeline.process(harness.record(), NOW)
    assert any(o.topic == "tiaki.egress.police" for o in processed.outputs)
    return harness, as_records([o for o in processed.outputs if o.topic == "tiaki.review"])


def audit_of(outputs: list[Outgoing]) -> dict[str, Any]:
    (audit,) = [
        decode(o.value, SCHEMAS.latest("AuditRecord")) for o in outputs if o.topic == "tiaki.audit"
    ]
    return audit


def test_approving_a_review_after_disclosure_records_it_and_sends_nothing_again() -> None:
    harness, records = disclosed()
    (item,) = queue(harness, records).values()
    assert (item.state, item.recipient, item.disclosed) == ("held", "police", True)
    outputs = carry_out(harness, records, "approve")
    assert sorted(o.topic for o in outputs) == ["tiaki.audit", "tiaki.review"]  # no egress
    audit = audit_of(outputs)
    assert (audit["action"], audit["outcome"], audit["reason_codes"]) == (
        "review",
        "upheld",
        ["disclosure_upheld"],
    )
    assert audit["recipient"] == "police"
    assert audit["obligations"] == ["review_within_24h", "tell_victim_when_safe"]
    # The subject report counts a review "approve" as a disclosure: this one is counted once,
    # by the decision that shared it.
    assert not disclosed_row(audit)
    records += as_records([o for o in outputs if o.topic == "tiaki.review"])
    (item,) = queue(harness, records).values()
    assert item.state == "upheld"
    with pytest.raises(ReviewError, match="is upheld; it cannot be approved"):
        carry_out(harness, records, "approve")


def test_declining_a_review_after_disclosure_is_audited_as_a_finding() -> None:
    harness, records = disclosed()
    with pytest.raises(ReviewError, match="needs a justification"):
        carry_out(harness, records, "decline", justification=" ")
    outputs = carry_out(
        harness, records, "decline", justification="risk was not imminent (SYN finding)"
    )
    assert sorted(o.topic for o in outputs) == ["tiaki.audit", "tiaki.review"]  # nothing unsent
    audit = audit_of(outputs)
    assert (audit["action"], audit["outcome"], audit["reason_codes"]) == (
        "review",
        "unjustified",
        ["disclosure_unjustified"],
    )
    assert (audit["actor"], audit["detail"]) == (
        "Reviewer One (synthetic)",
        "risk was not imminent (SYN finding)",
    )
    assert audit["subject_refs"]
    records += as_records([o for o in outputs if o.topic == "tiaki.review"])
    (item,) = queue(harness, records).values()
    assert item.state == "unjustified"
    with pytest.raises(ReviewError, match="is unjustified; it cannot be approved"):
        carry_out(harness, records, "approve")


def test_an_overdue_review_after_disclosure_escalates_then_is_decided_without_sending() -> None:
    harness, records = disclosed()
    later = timedelta(hours=25)
    escalated = carry_out(harness, records, "escalate", justification="", later=later)
    assert audit_of(escalated)["reason_codes"] == ["review_overdue"]
    records += as_records([o for o in escalated if o.topic == "tiaki.review"])
    outputs = carry_out(harness, records, "approve", later=later)
    assert not any(o.topic.startswith("tiaki.egress.") for o in outputs)
    records += as_records([o for o in outputs if o.topic == "tiaki.review"])
    assert next(iter(queue(harness, records).values())).state == "upheld"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("tiaki-recipient", b"corrections"),
        ("tiaki-review-id", None),  # the review id's recipient part
        ("tiaki-deadline", b"99999999999999"),
        ("tiaki-subjects", b""),
        ("tiaki-review-kind", b"after_disclosure"),
    ],
)
def test_an_item_whose_headers_were_changed_on_kafka_is_never_acted_on(
    header: str, value: bytes | None
) -> None:
    """Kafka headers are not sealed: someone who can write tiaki.review could copy a held item
    with another recipient, and an approval would release msd's minimised record to them."""
    harness, (record,) = held()
    headers = dict(record.headers)
    if value is None:
        value = headers[header].replace(b"/msd", b"/corrections")
    headers[header] = value
    changed = Record(record.topic, 0, 1, record.key, record.value, tuple(headers.items()), 0)
    # Never listed, so never approved (nor can it pass for an item held before headers were
    # bound: its envelope carries the bound id).
    assert queue(harness, [changed]) == {}
    (item,) = queue(harness, [record]).values()
    assert item.recipient == "msd"


def test_a_record_that_does_not_open_is_listed_by_its_position_and_the_rest_still_read() -> None:
    """One record on tiaki.review the broker cannot open (not its own, or sealed under a
    broker key since revoked or expired) must not stop the queue for every other item: it is
    listed by its position, never its content, and a decision on it is refused in one line."""
    harness, records = held()
    junk = Record("tiaki.review", 0, 99, b"SYN-CASE-0001", b"\x01not an envelope", (), 0)
    found = read_queue([junk, *records], Opener("broker", harness.ring), SCHEMAS, NOW)
    assert [(r.position, r.reason) for r in found.unreadable] == [("0:99", "malformed_envelope")]
    with pytest.raises(ReviewError) as refused:
        found.held("0:99")
    assert str(refused.value) == (
        "the record at 0:99 on tiaki.review does not open (malformed_envelope); "
        "it cannot be approved or declined"
    )
    (item,) = found.items.values()
    assert found.held(item.review_id) is item
    approved = carry_out(harness, [junk, *records], "approve")
    assert any(o.topic == "tiaki.egress.msd" for o in approved)


def test_the_list_shows_an_unreadable_record_by_its_position_and_each_id_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    harness, records = held()
    junk = Record("tiaki.review", 0, 99, b"SYN-CASE-0001", b"\x01not an envelope", (), 0)
    found = read_queue([*records, junk], Opener("broker", harness.ring), SCHEMAS, NOW)
    monkeypatch.setattr(review_cli, "BrokerTools", lambda: None)
    monkeypatch.setattr(review_cli, "_queue", lambda tools, now: found)
    review_cli.list_items(everything=False)
    listed = capsys.readouterr().out
    (item,) = found.items.values()
    assert item.review_id in listed  # what a reviewer types to decide it
    assert "0:99" in listed
    assert "unreadable (malformed_envelope)" in listed


def test_an_item_named_by_a_decision_that_does_not_open_is_not_decided_again() -> None:
    """The decision that does not open may have approved the item: were the item taken as
    still held, a second approval would deliver it twice. So it is refused, and the other
    items are not."""
    harness, records = held()
    (item,) = read_queue(records, Opener("broker", harness.ring), SCHEMAS, NOW).items.values()
    lost = Record(
        "tiaki.review",
        0,
        98,
        b"SYN-CASE-0001",
        b"\x01not an envelope",
        ((DECISION_HEADER, item.review_id.encode()),),
        0,
    )
    found = read_queue([*records, lost], Opener("broker", harness.ring), SCHEMAS, NOW)
    with pytest.raises(ReviewError, match="may already be decided"):
        found.held(item.review_id)
    # Named with a position: the other item under its id has aged out since.
    positioned = replace(lost, headers=((DECISION_HEADER, f"{item.review_id}@0:7".encode()),))
    found = read_queue([*records, positioned], Opener("broker", harness.ring), SCHEMAS, NOW)
    with pytest.raises(ReviewError, match="may already be decided"):
        found.held(item.review_id)
    other = replace(lost, headers=((DECISION_HEADER, b"police/other/msd"),))
    found = read_queue([*records, other], Opener("broker", harness.ring), SCHEMAS, NOW)
    assert found.held(item.review_id).review_id == item.review_id


def test_items_sealed_under_an_expired_broker_key_are_listed_unreadable() -> None:
    harness, records = held()
    # make_ring's keys are valid for 365 days from the day before NOW.
    found = read_queue(records, Opener("broker", harness.ring), SCHEMAS, NOW + timedelta(days=366))
    assert found.items == {}  # so none is escalated, and none can be decided
    assert [(r.position, r.reason) for r in found.unreadable] == [("0:0", "key_expired")]


def held_twice(harness: Harness, event_id: str) -> list[Record]:
    """Police's and Corrections' episodes under one event id, each held for Oranga Tamariki."""
    outputs: list[Outgoing] = []
    for source in ("police", "corrections"):
        record = sealed_example(harness, "FamilyHarmEpisodeReport", source, event_id)
        processed = harness.pipeline.process(record, NOW)
        assert processed.quarantine_reason is None  # event ids are each source's own
        outputs += [o for o in processed.outputs if o.topic == "tiaki.review"]
    return as_records(outputs)


def test_a_copy_of_a_held_item_is_listed_once_and_released_once() -> None:
    """Whoever can write tiaki.review can copy an item byte for byte (its headers still
    match its envelope): listed twice, two approvals would deliver it twice."""
    harness, records = held()
    (record,) = records
    copy = replace(record, offset=record.offset + 1)
    items = queue(harness, [record, copy])
    assert len(items) == 1
    approved = carry_out(harness, [record, copy], "approve")
    released = [o for o in approved if o.topic == "tiaki.egress.msd"]
    assert len(released) == 1
    decisions = [o for o in approved if o.topic == "tiaki.review"]
    after = [record, copy, *as_records(decisions, 2)]
    assert [i.state for i in queue(harness, after).values()] == ["released"]


def test_two_sources_items_under_one_event_id_are_two_items() -> None:
    """Each source chooses its own event ids: Police's and Corrections' items held for one
    recipient under one event id are listed apart (the review id names the source), and
    deciding one leaves the other held."""
    harness = Harness(ScriptedDecider([verdict("oranga-tamariki", Outcome.REVIEW)]))
    event_id = str(uuid.uuid4())
    records = held_twice(harness, event_id)
    police, corrections = (f"{s}/{event_id}/oranga-tamariki" for s in ("police", "corrections"))
    items = queue(harness, records)
    assert sorted(items) == [corrections, police]
    assert items[police].shared["source_agency"] == "police"
    declined = carry_out(harness, records, "decline", review_id=police)
    records += as_records([o for o in declined if o.topic == "tiaki.review"], len(records))
    items = queue(harness, records)
    assert (items[police].state, items[corrections].state) == ("declined", "held")


def test_items_held_under_one_earlier_review_id_are_both_listed_by_position() -> None:
    """Items held before review ids named the source keep their ids; two of them under one
    id are both listed, each with its position, and decided apart. A decision naming the id
    alone is for the item read last before it, as the brokers that wrote it listed it."""
    harness = Harness(ScriptedDecider([verdict("oranga-tamariki", Outcome.REVIEW)]))
    event_id = str(uuid.uuid4())
    records = [legacy(harness, r) for r in held_twice(harness, event_id)]
    earlier = f"{event_id}/oranga-tamariki"
    items = queue(harness, records)
    assert sorted(items) == [f"{earlier}@0:0", f"{earlier}@0:1"]
    assert items[f"{earlier}@0:0"].shared["source_agency"] == "police"
    declined = carry_out(harness, records, "decline", review_id=f"{earlier}@0:0")
    (decision,) = [o for o in declined if o.topic == "tiaki.review"]
    assert dict(decision.headers)["tiaki-review-decision"] == f"{earlier}@0:0".encode()
    records += as_records([decision], len(records))
    items = queue(harness, records)
    assert (items[f"{earlier}@0:0"].state, items[f"{earlier}@0:1"].state) == ("declined", "held")
    # What an earlier broker wrote for the item it listed under the id (the last one read).
    plainly = replace(items[f"{earlier}@0:1"], review_id=earlier)
    approved = decide(
        plainly,
        "approve",
        reviewer="Reviewer One (synthetic)",
        justification="risk confirmed by SYN reviewer",
        now=NOW,
        sealer=harness.pipeline._sealer,
        schemas=SCHEMAS,
        context=CONTEXT,
    )
    records += as_records([o for o in approved if o.topic == "tiaki.review"], len(records))
    items = queue(harness, records)
    assert (items[f"{earlier}@0:0"].state, items[f"{earlier}@0:1"].state) == (
        "declined",
        "released",
    )
