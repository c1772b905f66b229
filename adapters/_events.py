"""What a handler receives, and helpers that build the events agencies answer with.

Pure: no I/O. A :class:`Received` is the broker's ``SharedEvent`` for this agency, already
opened and verified: the event minimised by policy (``body``, plain JSON, because a field the
policy dropped may be one the original schema requires) plus why it was shared (route, legal
basis, purpose, obligations such as ``no_criminal_use``, the rules that matched and what
happened to each field). For a regional hub it is also a monthly ``AggregateTable`` the
broker published to it (:meth:`Received.from_table`).

The helpers return plain JSON documents ready for :meth:`AdapterClient.publish`; they fill in
what follows from the event being answered (request id, correlation id, case id, the task's
parties) so an agency's code supplies only its own decision.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.envelope import BROKER

#: What an agency may do with a task it was given (TaskEvent ``transition``).
TaskTransition = Literal["accepted", "declined", "completed"]
#: InformationResponse ``decision``.
ResponseDecision = Literal["disclose", "partial", "decline"]


@dataclass(frozen=True)
class Received:
    """One event delivered to this agency (see the module docs).

    ``idempotency_key`` (``<source agency>/<event id>``) is stable across redeliveries of the
    same event: a handler that writes to its own system keyed by it applies each event once
    even if the SDK crashes between the handler's success and recording it. It names the
    source because each agency chooses its own event ids (the broker keeps them apart the
    same way), so two agencies' events that happen to share an id are two events here too.
    """

    event_id: str
    event_type: str
    source_agency: str
    route: str | None
    legal_basis: str | None
    purpose: str | None
    obligations: tuple[str, ...]
    rule_ids: tuple[str, ...]
    field_actions: Mapping[str, str]
    policy_hash: str
    shared_at: dt.datetime
    body: Mapping[str, Any] = field(repr=False)  # personal data: never in a repr or a log
    #: When the broker decided to share it; ``None`` means when it was shared. Later than
    #: ``shared_at`` never; earlier when a person released it from review, in which case
    #: events of its case decided after it may have arrived first: order by this time.
    decided_at: dt.datetime | None = None

    @property
    def released_late(self) -> bool:
        """Held for review and released by a person after it was decided."""
        return self.decided_at is not None and self.decided_at < self.shared_at

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.source_agency, self.event_id)

    @property
    def case_id(self) -> str | None:
        header = self.body.get("header")
        return (
            str(header["case_id"]) if isinstance(header, Mapping) and "case_id" in header else None
        )

    @property
    def kept(self) -> int:
        """How many fields arrived (any action but ``drop``)."""
        return sum(action != "drop" for action in self.field_actions.values())

    @property
    def dropped(self) -> int:
        return sum(action == "drop" for action in self.field_actions.values())

    @classmethod
    def from_shared(cls, shared: Mapping[str, Any], body: Mapping[str, Any]) -> Received:
        shared_at, decided_at = (_utc(shared.get(name)) for name in ("shared_at", "decided_at"))
        return cls(
            event_id=str(shared["event_id"]),
            event_type=str(shared["event_type"]),
            source_agency=str(shared["source_agency"]),
            route=shared.get("route"),
            legal_basis=shared.get("legal_basis"),
            purpose=shared.get("purpose"),
            obligations=tuple(shared.get("obligations") or ()),
            rule_ids=tuple(shared.get("rule_ids") or ()),
            field_actions=dict(shared.get("field_actions") or {}),
            policy_hash=str(shared.get("policy_hash") or ""),
            shared_at=shared_at,
            body=body,
            decided_at=decided_at or shared_at,  # records before SharedEvent v2 have none
        )

    @classmethod
    def from_table(
        cls, event_id: str, published_at: dt.datetime, table: Mapping[str, Any]
    ) -> Received:
        """A regional hub's monthly aggregate table (``table``: an ``AggregateTable`` in its
        plain JSON form) as a delivery from the broker, which counted and published it: its
        idempotency key is ``broker/<event id>``, and it was shared (and decided) when
        published. No sharing decision made it (``route``, ``legal_basis`` and ``purpose``
        are None, no rules, no field actions): the output rules it was published under are
        in the table itself (``output_rules``, ``governance``)."""
        published_at = _utc(published_at)
        return cls(
            event_id=event_id,
            event_type="AggregateTable",
            source_agency=BROKER,
            route=None,
            legal_basis=None,
            purpose=None,
            obligations=(),
            rule_ids=(),
            field_actions={},
            policy_hash="",
            shared_at=published_at,
            body=table,
            decided_at=published_at,
        )


def idempotency_key(source_agency: str, event_id: str) -> str:
    """``<source agency>/<event id>``. Agency ids have no ``/`` (lower case and dashes), so the
    key parts stay apart."""
    return f"{source_agency}/{event_id}"


def file_stem(key: str) -> str:
    """An idempotency key as one file name part: ``/`` becomes ``_`` (in neither an agency id
    nor a UUID), as the dead-letter folder names its files; anything but letters, digits,
    ``-``, ``.`` and ``_`` becomes ``_`` too, so no key can name another folder."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-._") else "_" for c in key)


def _utc(moment: Any) -> Any:
    """fastavro's datetimes are UTC already; a naive one is taken as UTC."""
    if isinstance(moment, dt.datetime) and moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _agency(agency_id: str) -> dict[str, Any]:
    return {"agency_id": agency_id, "team": None, "contact_role": None}


def information_request(
    *,
    case_id: str,
    request_id: str,
    holders: Sequence[str],
    purpose: str,
    legal_route: str,
    justification: str,
    accountable_role: str,
    respond_by: dt.datetime,
    information_sought: Sequence[str] = (),
    urgency: str = "routine",
    requester_role: str = "unknown",
    subjects: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An InformationRequest (FVA s20): the holders must each answer, or be escalated."""
    return {
        "header": {"case_id": case_id, "correlation_id": request_id},
        "request_id": request_id,
        "purpose": purpose,
        "legal_route": legal_route,
        "justification": justification,
        "requester_role": requester_role,
        "accountable_role": accountable_role,
        "subjects": list(subjects),
        "information_sought": list(information_sought),
        "holders": [_agency(h) for h in holders],
        "respond_by": _iso(respond_by),
        "urgency": urgency,
    }


def information_response(
    request: Received,
    *,
    decision: ResponseDecision,
    decided_by_role: str,
    items: Sequence[Mapping[str, Any]] = (),
    decline_reasons: Sequence[str] = (),
    reason_text: str | None = None,
) -> dict[str, Any]:
    """The answer to a received InformationRequest. FVA s24 is a duty to *consider*: a
    decline is a lawful answer, but it must carry its reasons."""
    if request.event_type != "InformationRequest":
        raise ValueError(f"{request.event_type} is not an information request")
    if decision != "disclose" and not decline_reasons:
        raise ValueError("a partial or declined answer needs its decline reasons")
    request_id = str(request.body["request_id"])
    return {
        "header": {"case_id": request.case_id, "correlation_id": request_id},
        "request_id": request_id,
        "decision": decision,
        "decline_reasons": list(decline_reasons),
        "reason_text": reason_text,
        "decided_by_role": decided_by_role,
        "items": [dict(item) for item in items],
        "related_event_ids": [request.event_id],
    }


def task_update(
    task: Received, transition: TaskTransition, *, note: str | None = None
) -> dict[str, Any]:
    """A TaskEvent moving a task this agency was given to ``transition``.

    Declining removes the agency's task ground for the case (it stops receiving what only
    case participants receive); accepting and completing keep it.
    """
    if task.event_type != "TaskEvent":
        raise ValueError(f"{task.event_type} is not a task")
    body = task.body
    return {
        "header": {"case_id": task.case_id, "correlation_id": str(body["task_id"])},
        "task_id": str(body["task_id"]),
        "transition": transition,
        "assigned_to": dict(body["assigned_to"]),
        "assigned_by": dict(body["assigned_by"]),
        "description": str(body.get("description") or f"task {body['task_id']}"),
        "subjects": [],
        "due_at": body.get("due_at"),
        "note": note,
    }


def accept_task(task: Received, *, note: str | None = None) -> dict[str, Any]:
    return task_update(task, "accepted", note=note)


def decline_task(task: Received, *, note: str) -> dict[str, Any]:
    """Declining needs a reason: the meeting must re-task someone else."""
    return task_update(task, "declined", note=note)


def complete_task(task: Received, *, note: str | None = None) -> dict[str, Any]:
    return task_update(task, "completed", note=note)
