"""The review queue: decisions held for a person, their release or refusal, and escalation.

A held item is a SharedEvent on ``tiaki.review`` sealed to the broker (HOLD), with headers
naming its id (``<event id>/<recipient>``), recipient and deadline. Decisions about it are
ReviewDecision records on the same topic, also sealed to the broker. Its lifecycle:

=========  ====================  ==========================================================
state      event                 next state (and what is written, in one transaction)
=========  ====================  ==========================================================
held       approve (a person)    released: SharedEvent sealed to the recipient on its egress
                                 topic + decision + audit (action review, outcome approve)
held       decline (a person)    declined: decision + audit (outcome decline)
held       deadline passes       escalated: decision ``escalate`` + audit (action escalation)
escalated  approve / decline     released / declined, as from held
=========  ====================  ==========================================================

Nothing is ever closed silently: an item leaves the queue only by a person's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from broker._errors import TiakiError
from broker.codec import SchemaSet, decode, encode
from broker.envelope import Kind, Opener, Sealer
from broker.platform._topics import BROKER, REVIEW, egress
from broker.runtime._audit import AuditContext, audit_base, case_ref
from broker.runtime._pipeline import (
    DEADLINE_HEADER,
    RECIPIENT_HEADER,
    REVIEW_ID_HEADER,
    SUBJECTS_HEADER,
    audit_output,
    sealed_for_broker,
)
from broker.transport import Outgoing, Record

DECISION_HEADER = "tiaki-review-decision"

#: Which decisions each state accepts, and the state each leads to.
TRANSITIONS: dict[str, dict[str, str]] = {
    "held": {"approve": "released", "decline": "declined", "escalate": "escalated"},
    "escalated": {"approve": "released", "decline": "declined"},
    "released": {},
    "declined": {},
}


class ReviewError(TiakiError):
    """A review command cannot be carried out (unknown item, already decided)."""


@dataclass
class HeldItem:
    review_id: str
    recipient: str
    deadline: datetime
    record: Record
    shared: dict[str, Any]
    state: str = "held"
    decisions: list[dict[str, Any]] = field(default_factory=list)
    #: The subject references of the event it was held from (none on items held before
    #: brokers recorded them; the audit index finds those through the holding decision).
    subject_refs: list[str] = field(default_factory=list)

    def overdue(self, now: datetime) -> bool:
        return self.state == "held" and now >= self.deadline


def read_queue(
    records: Sequence[Record], opener: Opener, schemas: SchemaSet, now: datetime
) -> dict[str, HeldItem]:
    """The queue from every record on ``tiaki.review``, in order."""
    shared_schema = schemas.latest("SharedEvent")
    decision_schema = schemas.latest("ReviewDecision")
    items: dict[str, HeldItem] = {}
    for record in records:
        headers = dict(record.headers)
        opened = opener.open(record.value, topic=REVIEW, now=now, kind=Kind.HOLD, source=BROKER)
        if DECISION_HEADER in headers:
            decision = decode(opened.payload, decision_schema)
            item = items.get(decision["review_id"])
            if item is not None:
                item.decisions.append(decision)
                item.state = TRANSITIONS[item.state].get(decision["decision"], item.state)
            continue
        review_id = headers[REVIEW_ID_HEADER].decode()
        items[review_id] = HeldItem(
            review_id=review_id,
            recipient=headers[RECIPIENT_HEADER].decode(),
            deadline=datetime.fromtimestamp(int(headers[DEADLINE_HEADER]) / 1000, UTC),
            record=record,
            shared=decode(opened.payload, shared_schema),
            subject_refs=[r for r in headers.get(SUBJECTS_HEADER, b"").decode().split(",") if r],
        )
    return items


def decide(
    item: HeldItem,
    verdict: str,
    *,
    reviewer: str,
    justification: str,
    now: datetime,
    sealer: Sealer,
    schemas: SchemaSet,
    context: AuditContext,
) -> list[Outgoing]:
    """The records that carry out ``verdict`` on ``item``; raise if its state forbids it."""
    if verdict not in TRANSITIONS[item.state]:
        raise ReviewError(f"review {item.review_id} is {item.state}; it cannot be {verdict}d")
    if not reviewer.strip():
        raise ReviewError(
            "a review decision needs the reviewer's name: the audit record names who acted"
        )
    if verdict != "escalate" and not justification.strip():
        raise ReviewError("a review decision needs a justification (FVA s24: reasons are recorded)")
    decision_schema = schemas.latest("ReviewDecision")
    decision = {
        "review_id": item.review_id,
        "decision": verdict,
        "reviewer": reviewer,
        "justification": justification,
        "decided_at": now,
    }
    key = item.record.key
    sealed_decision = sealed_for_broker(sealer, decision_schema, decision, REVIEW, now)
    outputs = [
        Outgoing(REVIEW, key, sealed_decision, ((DECISION_HEADER, item.review_id.encode()),))
    ]
    shared = item.shared
    # The audit record names who acted: the reviewer (the broker for an escalation).
    action = "escalation" if verdict == "escalate" else "review"
    audit = audit_base(replace(context, actor=reviewer), action, now)
    audit |= {
        "event_id": str(shared["event_id"]),
        "event_type": shared["event_type"],
        "source_agency": shared["source_agency"],
        "recipient": item.recipient,
        "outcome": verdict,
        "route": shared["route"],
        "legal_basis": shared["legal_basis"],
        "purpose": shared["purpose"],
        "rule_ids": list(shared["rule_ids"]),
        "obligations": list(shared["obligations"]),
        "field_actions": dict(shared["field_actions"]),
        "reason_codes": ["review_overdue"] if verdict == "escalate" else [f"review_{verdict}"],
        "detail": justification[:500] or None,
        "case_ref": case_ref(context.subject_key, key.decode()) if key else None,
        "subject_refs": list(item.subject_refs),
    }
    outputs.append(audit_output(schemas.latest("AuditRecord"), audit))
    if verdict == "approve":
        shared_schema = schemas.latest("SharedEvent")
        released = sealer.seal(
            encode(shared_schema, shared | {"shared_at": now}),
            kind=Kind.EGRESS,
            topic=egress(item.recipient),
            recipient=item.recipient,
            event_id=str(shared["event_id"]),
            schema_fingerprint=shared_schema.fingerprint,
            now=now,
        )
        outputs.append(Outgoing(egress(item.recipient), key, released))
    return outputs
