"""The review queue: decisions held for a person, their release or refusal, and escalation.

A held item is a SharedEvent on ``tiaki.review`` sealed to the broker (HOLD), with headers
naming its id (``<source agency>/<event id>/<recipient>``), recipient and deadline. Decisions
about it are ReviewDecision records on the same topic, also sealed to the broker. Its
lifecycle:

=========  ====================  ==========================================================
state      event                 next state (and what is written, in one transaction)
=========  ====================  ==========================================================
held       approve (a person)    released: SharedEvent sealed to the recipient on its egress
                                 topic + decision + audit (action review, outcome approve)
held       decline (a person)    declined: decision + audit (outcome decline)
held       deadline passes       escalated: decision ``escalate`` + audit (action escalation)
escalated  approve / decline     released / declined, as from held
=========  ====================  ==========================================================

A share with the obligation ``review_within_24h`` (imminent danger: LAW.md, "a minimal
disclosure to Police goes at once and a review follows within 24 hours") was delivered when it
was decided; its copy on ``tiaki.review`` (header ``tiaki-review-kind: after_disclosure``) is
reviewed afterwards, and nothing is sent again, whatever the decision:

=========  ====================  ==========================================================
state      event                 next state (and what is written)
=========  ====================  ==========================================================
held       approve (a person)    upheld: decision + audit (action review, outcome
                                 ``upheld``, reason ``disclosure_upheld``)
held       decline (a person)    unjustified: decision + audit (outcome ``unjustified``,
                                 reason ``disclosure_unjustified``): a finding that the
                                 disclosure should not have happened, for compliance to act
                                 on; a delivered record cannot be unsent
held       deadline passes       escalated, as above
escalated  approve / decline     upheld / unjustified, as from held
=========  ====================  ==========================================================

The audit outcomes differ from a held item's ``approve`` and ``decline`` on purpose: the
subject report counts a review ``approve`` as a disclosure, and this one is already counted by
the decision that shared it.

Nothing is ever closed silently: an item leaves the queue only by a person's decision.

A held item's headers (review id, recipient, deadline, subjects, kind) are what a decision acts
on, and Kafka does not seal headers: the envelope's event id binds them
(:func:`broker.runtime._pipeline.held_binding`), and :func:`read_queue` never lists an item
whose headers were changed on the way, so nobody who can only write ``tiaki.review`` (Kafka's
operators) can send one agency's minimised record to another through a reviewer's approval.

A review id names the source because event ids are each source's own (the replay cache keys
on source and event id). An item held under the earlier form, ``<event id>/<recipient>``,
keeps that id and is decided under it. Two items under one id (two sources' items of that
earlier form with one event id, or a source using an event id again after its replay window)
are both listed, each under its review id and its position on the topic,
``<review id>@<partition>:<offset>``, and a decision names it so. A copy of an item is not a
second item: a record whose envelope's event id (which binds its review id and headers), or
for an earlier item its bytes, were read before is listed once, so it is released once. A decision naming the
review id alone (made before the second item came, or by an earlier broker) is for the item
with that id read last before it, as earlier brokers took it: on the decision's partition
(a decision is keyed like its item), else on any.

A record on ``tiaki.review`` that does not open or decode (sealed under a broker key since
revoked or expired, or not written by this broker) is listed as unreadable by its position,
never its content, and cannot be decided; it does not stop the rest of the queue. An item
that such a decision record names (by its unsealed header) cannot be decided either: the
decision may have released it, and a second approval would deliver it twice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from broker._errors import TiakiError
from broker._logging import typed_text_looks_personal
from broker.codec import CodecError, SchemaSet, decode, encode
from broker.envelope import EnvelopeError, Kind, Opened, Opener, Sealer
from broker.platform._topics import BROKER, REVIEW, egress
from broker.runtime._audit import AuditContext, audit_base, case_ref
from broker.runtime._pipeline import (
    AFTER_DISCLOSURE,
    DEADLINE_HEADER,
    RECIPIENT_HEADER,
    REVIEW_ID_HEADER,
    REVIEW_KIND_HEADER,
    SUBJECTS_HEADER,
    audit_output,
    held_binding,
    sealed_for_broker,
)
from broker.transport import Outgoing, Record

log = structlog.get_logger("tiaki.broker")

DECISION_HEADER = "tiaki-review-decision"

#: Which decisions each state accepts, and the state each leads to.
TRANSITIONS: dict[str, dict[str, str]] = {
    "held": {"approve": "released", "decline": "declined", "escalate": "escalated"},
    "escalated": {"approve": "released", "decline": "declined"},
    "released": {},
    "declined": {},
}
#: The same for the copy of a share already delivered (reviewed after disclosure).
AFTER_DISCLOSURE_TRANSITIONS: dict[str, dict[str, str]] = {
    "held": {"approve": "upheld", "decline": "unjustified", "escalate": "escalated"},
    "escalated": {"approve": "upheld", "decline": "unjustified"},
    "upheld": {},
    "unjustified": {},
}
#: A person's decision on a reviewed-after-disclosure item: (audit outcome, reason code).
_AFTER_DISCLOSURE_AUDIT = {
    "approve": ("upheld", "disclosure_upheld"),
    "decline": ("unjustified", "disclosure_unjustified"),
}


#: Why reasons that look like they identify someone are refused: the audit log keeps them in
#: clear (compliance reads them there), and it must never identify a person.
UNSAFE_REASONS = (
    "the justification looks like it holds a personal identifier (an NHI or other number, "
    "an e-mail address, a phone number, a date or a street address); it goes to the audit "
    "log in clear, so state the reasons without identifying anyone, by name or otherwise"
)


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
    #: The copy of a share already delivered, for its review afterwards (``review_within_24h``):
    #: deciding it records the review and sends nothing.
    disclosed: bool = False

    def overdue(self, now: datetime) -> bool:
        return self.state == "held" and now >= self.deadline

    @property
    def transitions(self) -> dict[str, dict[str, str]]:
        """The lifecycle this item follows (see the module docs)."""
        return AFTER_DISCLOSURE_TRANSITIONS if self.disclosed else TRANSITIONS

    @property
    def position(self) -> str:
        """Where the item is on ``tiaki.review``: ``<partition>:<offset>``."""
        return f"{self.record.partition}:{self.record.offset}"


@dataclass(frozen=True)
class UnreadableRecord:
    """A record on ``tiaki.review`` that does not open or decode: known by its position and
    why (the error's reason code), never by its content or its headers (unsealed, so they
    prove nothing)."""

    partition: int
    offset: int
    reason: str
    #: For a decision record, the review id its (unsealed) header names, else None.
    names: str | None = None

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class ReviewQueue:
    """The queue as :func:`read_queue` found it."""

    #: Every held item, by the id it is listed and decided under (see the module docs).
    items: dict[str, HeldItem]
    #: The records that do not open or decode, in the order read.
    unreadable: list[UnreadableRecord]

    def held(self, review_id: str) -> HeldItem:
        """The item a person named to decide; raises :class:`ReviewError` if there is none,
        if it is a record that does not open (listed by its position), or if a decision
        record that does not open names it: that decision may have released it, and deciding
        again could release it twice."""
        item = self.items.get(review_id)
        if item is not None:
            base = item.review_id.partition("@")[0]
            for record in self.unreadable:
                # Named with a position too (``id@p:o``): the other item under its id may
                # have aged out since, leaving this one listed under the id alone.
                if record.names is not None and record.names.partition("@")[0] == base:
                    raise ReviewError(
                        f"a decision on {review_id} at {record.position} on {REVIEW} does not "
                        f"open ({record.reason}); it may already be decided, so it cannot be "
                        "decided again"
                    )
            return item
        for record in self.unreadable:
            if record.position == review_id:
                raise ReviewError(
                    f"the record at {review_id} on {REVIEW} does not open ({record.reason}); "
                    "it cannot be approved or declined"
                )
        raise ReviewError(f"no held item {review_id!r} (see `tiaki review list`)")


def read_queue(
    records: Sequence[Record], opener: Opener, schemas: SchemaSet, now: datetime
) -> ReviewQueue:
    """The queue from every record on ``tiaki.review``, in order."""
    shared_schema = schemas.latest("SharedEvent")
    decision_schema = schemas.latest("ReviewDecision")
    held: list[HeldItem] = []
    unreadable: list[UnreadableRecord] = []
    #: Each item under ``<review id>@<position>``, and the one read last under each review
    #: id, on each partition and on any (None): what a decision may name (the module docs).
    positioned: dict[str, HeldItem] = {}
    last: dict[tuple[str, int | None], HeldItem] = {}
    #: What makes each item listed so far the same item (below).
    sealed_as: set[str] = set()
    for record in records:
        headers = dict(record.headers)
        deciding = DECISION_HEADER in headers
        try:
            opened = opener.open(record.value, topic=REVIEW, now=now, kind=Kind.HOLD, source=BROKER)
            content = (
                decode(opened.payload, decision_schema)
                if deciding
                # By the writer its envelope names: items outlive SharedEvent versions.
                else schemas.decode(opened.payload, opened.schema_fingerprint, shared_schema)
            )
        except (EnvelopeError, CodecError) as exc:
            reason = exc.quarantine_reason
            log.warning(
                "review record does not open; listed as unreadable",
                partition=record.partition,
                offset=record.offset,
                reason=reason,
            )
            # A decision's header is unsealed: it proves nothing, but it may only block.
            names = headers[DECISION_HEADER].decode(errors="replace") if deciding else None
            unreadable.append(UnreadableRecord(record.partition, record.offset, reason, names))
            continue
        if deciding:
            named = str(content["review_id"])
            item = positioned.get(named) or last.get((named, record.partition))
            item = item or last.get((named, None))
            if item is not None:
                item.decisions.append(content)
                item.state = item.transitions[item.state].get(content["decision"], item.state)
            continue
        bound = opened.event_id == held_binding(record.headers)
        if not bound and not _legacy(opened, headers):
            # Its headers (recipient, deadline, kind, subjects) are not the ones it was sealed
            # with: changed on Kafka. Never acted on; the audit log has its decision.
            log.warning(
                "review item's headers do not match its envelope; ignored",
                partition=record.partition,
                offset=record.offset,
            )
            continue
        # The same item again: a copy someone with write access made. Its envelope's event id
        # binds its review id and headers; an item held before they were bound is known by
        # its bytes (two sources' items of that kind may share the envelope's event id).
        same = opened.event_id if bound else hashlib.sha256(record.value).hexdigest()
        if same in sealed_as:
            # Listed once, so it is released once.
            log.warning(
                "review item appears again on the topic; listed once",
                partition=record.partition,
                offset=record.offset,
            )
            continue
        sealed_as.add(same)
        review_id = headers[REVIEW_ID_HEADER].decode()
        item = HeldItem(
            review_id=review_id,
            recipient=headers[RECIPIENT_HEADER].decode(),
            deadline=datetime.fromtimestamp(int(headers[DEADLINE_HEADER]) / 1000, UTC),
            record=record,
            shared=content,
            subject_refs=[r for r in headers.get(SUBJECTS_HEADER, b"").decode().split(",") if r],
            disclosed=headers.get(REVIEW_KIND_HEADER) == AFTER_DISCLOSURE.encode(),
        )
        held.append(item)
        positioned[f"{review_id}@{item.position}"] = item
        last[review_id, record.partition] = last[review_id, None] = item
    return ReviewQueue(_by_id(held), unreadable)


def _by_id(held: Sequence[HeldItem]) -> dict[str, HeldItem]:
    """``held`` by the id each is listed and decided under: its review id, with its position
    if another item has the same review id (see the module docs)."""
    count = Counter(item.review_id for item in held)
    items: dict[str, HeldItem] = {}
    for item in held:
        if count[item.review_id] > 1:
            log.warning(
                "review items share a review id; each is listed with its position",
                partition=item.record.partition,
                offset=item.record.offset,
            )
            item.review_id = f"{item.review_id}@{item.position}"
        items[item.review_id] = item
    return items


def _legacy(opened: Opened, headers: Mapping[str, bytes]) -> bool:
    """An item held before 7 December 2026, sealed with its event id alone: its headers were
    not bound then (see :func:`broker.runtime._pipeline.held_binding`), and are taken as they
    are. A bound item cannot pass for one: its envelope's id is the bound one."""
    review_id = headers.get(REVIEW_ID_HEADER, b"").decode(errors="replace")
    return "#" not in opened.event_id and review_id.partition("/")[0] == opened.event_id


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
    """The records that carry out ``verdict`` on ``item``; raise if its state forbids it. The
    release to the recipient is among them only for an approved held item: an item reviewed
    after its disclosure was delivered already."""
    if verdict not in item.transitions[item.state]:
        raise ReviewError(f"review {item.review_id} is {item.state}; it cannot be {verdict}d")
    if not reviewer.strip():
        raise ReviewError(
            "a review decision needs the reviewer's name: the audit record names who acted"
        )
    if verdict != "escalate" and not justification.strip():
        raise ReviewError("a review decision needs a justification (FVA s24: reasons are recorded)")
    if typed_text_looks_personal(justification):
        raise ReviewError(UNSAFE_REASONS)
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
    outcome, reason = verdict, "review_overdue" if verdict == "escalate" else f"review_{verdict}"
    if item.disclosed and verdict in _AFTER_DISCLOSURE_AUDIT:
        outcome, reason = _AFTER_DISCLOSURE_AUDIT[verdict]
    audit = audit_base(replace(context, actor=reviewer), action, now)
    audit |= {
        "event_id": str(shared["event_id"]),
        "event_type": shared["event_type"],
        "source_agency": shared["source_agency"],
        "recipient": item.recipient,
        "outcome": outcome,
        "route": shared["route"],
        "legal_basis": shared["legal_basis"],
        "purpose": shared["purpose"],
        "rule_ids": list(shared["rule_ids"]),
        "obligations": list(shared["obligations"]),
        "field_actions": dict(shared["field_actions"]),
        "reason_codes": [reason],
        "detail": justification[:500] or None,
        "case_ref": case_ref(context.subject_key, key.decode()) if key else None,
        "subject_refs": list(item.subject_refs),
    }
    outputs.append(audit_output(schemas.latest("AuditRecord"), audit))
    if verdict == "approve" and not item.disclosed:
        shared_schema = schemas.latest("SharedEvent")
        released = sealer.seal(
            # Released now, decided when it was held (an item held before SharedEvent v2
            # has no decided_at: its shared_at is when it was held), so the recipient can
            # put it among the case's events that arrived while it was held.
            encode(
                shared_schema,
                shared
                | {"shared_at": now, "decided_at": shared.get("decided_at") or shared["shared_at"]},
            ),
            kind=Kind.EGRESS,
            topic=egress(item.recipient),
            recipient=item.recipient,
            event_id=str(shared["event_id"]),
            schema_fingerprint=shared_schema.fingerprint,
            now=now,
        )
        outputs.append(Outgoing(egress(item.recipient), key, released))
    return outputs
