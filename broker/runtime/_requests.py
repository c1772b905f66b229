"""Information requests (FVA s20, s24): tracked until every holder has answered.

The duty in s24 is to *consider* disclosure, so a request never ends silently: each holder
either answers (disclose, partial, or decline with reasons) or is escalated when the request's
``respond_by`` passes. The lifecycle per (request, holder):

=========  =================================  ============================================
state      event                              next state
=========  =================================  ============================================
asked      InformationResponse from holder    answered
asked      ``respond_by`` passes              escalated (audit: action escalation,
                                              reason ``request_unanswered``)
escalated  InformationResponse from holder    answered (late; the escalation stays audited)
=========  =================================  ============================================

Routing itself is policy: the request and each response go wherever the rules permit. This
module only keeps the book, written to the compacted ``tiaki.state.requests`` topic in the
same transaction as the event that changed it, and rebuilt by a worker when it starts, when
its partitions change and after a failed commit.

Every worker reads the whole book (a response names only the request id, and the policy asks
the book who the requester was), but a request is escalated only by the worker that owns it:
the one assigned ``partition`` of the requester's ingress topic, the partition the request
arrived on (events are keyed by case id and the ingress topics are co-partitioned, so the
same worker sees the holders' responses). With N workers each unanswered holder is escalated
once, and no worker with a stale copy of someone else's request overwrites its answers.
Records written before ``RequestState`` v2 name no partition: the owner of partition 0 of
the requester's topic escalates those, and the first response to one records the partition
it came in on.

A request id is the requester's own. Another agency that sends a request with an id already
in the book is refused (:class:`RequestIdInUse`, quarantine reason ``request_id_in_use``):
the answers to that id go to the first requester, so the newcomer's request is neither
routed nor tracked, and its sender learns why from its refusal notice. The requester itself
may send its own id again; the book then takes the newer request.

An answer carries the request's facts (who asked, in what role, on whose behalf; the policy
addresses the answer to the requester) only if it comes from one of the request's holders
and is about the request's case (:meth:`RequestBook.facts`): an agency that was not asked,
or an event on another case that names the id, gets no request facts, and the shipped
policy then denies it. ``RequestState`` v3 records the case; a book rebuilt from older
records learns a request's case from the first holder event that names the request, as it
learns the partition of a record older than v2.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from broker._errors import TiakiError
from broker.platform._topics import ingress
from broker.policy._model import RequestFacts

#: The partition whose owner escalates a request recorded without one (before RequestState v2).
LEGACY_PARTITION = 0


class RequestIdInUse(TiakiError):
    """An information request names a request id another agency's request already holds.
    Nothing was changed; the pipeline quarantines the request."""

    quarantine_reason: ClassVar[str] = "request_id_in_use"


@dataclass
class _Request:
    request_id: str
    requester: str
    event_id: str
    holders: set[str]
    respond_by: datetime
    #: What the request states: who asks (OTA s66) and on whose behalf (PA-05).
    requester_role: str = "unknown"
    on_behalf_of: str = "unknown"
    answered: set[str] = field(default_factory=set)
    escalated: set[str] = field(default_factory=set)
    #: The ingress partition the request belongs to; None for a record older than v2.
    partition: int | None = None
    #: The case the request is about; None in a book rebuilt from records older than
    #: RequestState v3 until a holder's event naming the request says which.
    case_id: str | None = None

    def owned_by(self, assignment: Collection[tuple[str, int]]) -> bool:
        """Whether the worker assigned ``assignment`` escalates this request."""
        partition = LEGACY_PARTITION if self.partition is None else self.partition
        return (ingress(self.requester), partition) in assignment

    def state(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "requester": self.requester,
            "requester_role": self.requester_role,
            "on_behalf_of": self.on_behalf_of,
            "event_id": self.event_id,
            "holders": sorted(self.holders),
            "answered": sorted(self.answered),
            "escalated": sorted(self.escalated),
            "respond_by": self.respond_by,
            "partition": self.partition,
            "case_id": self.case_id,
        }


class RequestBook:
    """Open information requests, pure: events and the clock in, state records out."""

    def __init__(self) -> None:
        self._requests: dict[str, _Request] = {}

    def replace(self, other: RequestBook) -> None:
        """Take ``other``'s state as this one's (after re-reading the state topic)."""
        self._requests = other._requests

    def load(self, states: Iterable[Mapping[str, Any]]) -> None:
        for s in states:
            self._requests[s["request_id"]] = _Request(
                s["request_id"],
                s["requester"],
                s["event_id"],
                set(s["holders"]),
                _utc(s["respond_by"]),
                str(s.get("requester_role", "unknown")),
                str(s.get("on_behalf_of", "unknown")),
                set(s["answered"]),
                set(s["escalated"]),
                s.get("partition"),
                s.get("case_id"),  # absent from RequestState v1 and v2 records
            )

    def apply(
        self, event_type: str, event: Mapping[str, Any], partition: int | None = None
    ) -> dict[str, Any] | None:
        """Update from one admitted event, read from ``partition`` of its ingress topic; the
        request's new state record, or None.

        Raises :class:`RequestIdInUse`, changing nothing, for a request whose id another
        agency's request holds."""
        if event_type == "InformationRequest":
            header = event["header"]
            request = _Request(
                str(event["request_id"]),
                str(header["source_agency"]),
                str(header["event_id"]),
                {h["agency_id"] for h in event["holders"]},
                _utc(event["respond_by"]),
                str(event.get("requester_role") or "unknown"),
                str(event.get("on_behalf_of") or "unknown"),
                partition=partition,
                case_id=str(header["case_id"]),
            )
            known = self._requests.get(request.request_id)
            # Before the retry check: another agency's event with the same event id is no retry.
            if known is not None and known.requester != request.requester:
                raise RequestIdInUse(
                    "request id is already used by another agency's request; "
                    "use a request id of your own"
                )
            if known is not None and known.event_id == request.event_id:
                return None  # the same request again (a retried batch)
            self._requests[request.request_id] = request
            return request.state()
        if event_type == "InformationResponse":
            asked = self._requests.get(str(event["request_id"]))
            holder = str(event["header"]["source_agency"])
            if asked is None or holder not in asked.holders or holder in asked.answered:
                return None
            asked.answered.add(holder)
            if asked.partition is None:
                asked.partition = partition  # a record older than v2: learn where it lives
            return asked.state()
        return None

    def requester(self, request_id: str) -> str | None:
        """The agency that made request ``request_id``, if the book knows it."""
        request = self._requests.get(request_id)
        return request.requester if request is not None else None

    def facts(self, request_id: str, *, case_id: str, sender: str) -> RequestFacts | None:
        """The requester, its role and on whose behalf, for an event from ``sender`` about case
        ``case_id`` that answers request ``request_id``; None unless ``sender`` is one of the
        request's holders and the case is the request's (see the module docs). A request whose
        case the book does not know (rebuilt from the state topic) takes ``case_id`` from the
        first holder event that names it."""
        request = self._requests.get(request_id)
        if request is None or sender not in request.holders:
            return None
        if request.case_id is None:
            request.case_id = case_id
        elif request.case_id != case_id:
            return None
        return RequestFacts(request.requester, request.requester_role, request.on_behalf_of)

    def overdue(
        self, now: datetime, assignment: Collection[tuple[str, int]] | None = None
    ) -> list[tuple[dict[str, Any], str]]:
        """Mark every unanswered, not yet escalated holder past its deadline as escalated;
        return (the request's new state, holder) for each. With ``assignment`` (this worker's
        partitions), only the requests it owns (see the module docs); without, every one."""
        out = []
        for request in self._requests.values():
            if now < request.respond_by:
                continue
            if assignment is not None and not request.owned_by(assignment):
                continue
            for holder in sorted(request.holders - request.answered - request.escalated):
                request.escalated.add(holder)
                out.append((request.state(), holder))
        return out

    def unescalate(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Undo escalations whose records were never committed (they will be made again)."""
        for request_id, holder in pairs:
            request = self._requests.get(request_id)
            if request is not None:
                request.escalated.discard(holder)

    def open_requests(self) -> list[dict[str, Any]]:
        return [r.state() for r in self._requests.values() if r.holders - r.answered]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
