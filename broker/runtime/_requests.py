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

A request whose every holder has answered or been escalated is *retired*
:data:`REQUEST_RETENTION` after the later of its ``respond_by`` and the moment its last holder
answered or was escalated (``settled_at``, RequestState v4; a record older than v4 counts
from ``respond_by``), so a request settled late still keeps the whole period. The worker that
owns it (below) forgets it and writes its retirement record (``retired``, RequestState v4) to
``tiaki.state.requests``, in a pass and transaction like its escalations, and undoes that if
the transaction aborts; other workers forget it when they next read the topic. Why keep it
that long: an escalated holder may still answer, and a late answer is routed on the request's
facts (who asked, in what role, on whose behalf), which only the book holds. Why not for
ever: the book is in every worker's memory and the compacted topic keeps the last record of
every request ever made. After retirement a late answer finds no request and carries no
request facts, so the shipped policy denies it (audited as any decision). The id stays its
requester's on that case: another agency's request under it about the case is still refused
(a freed id would let that agency's request collect late answers meant for the first
requester), and the requester may make a new request under it. What a retired request leaves
is its id, case, requester, event id, deadline, partition and settling time: a few dozen
bytes per request ever made, in memory and on the topic (a tombstone, an empty value, would
end even that reservation; nothing writes one).

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

Escalation and retirement run on every transaction, so their cost must not grow with the
book: each request's next deadline (``respond_by`` while a holder has not answered or been
escalated, then ``respond_by`` plus the retention) sits in a min-heap per owner (requester's
ingress topic, partition), and a pass pops only what is due in the heaps this worker owns.
An entry whose request has gone, or whose deadline or owner has changed since it was pushed,
is skipped when it comes up.

A request is known by its id *and its case* (:func:`request_key`), on the state topic too.
An answer counts, and carries the request's facts, only on the request's case (below), so
requests under one id about two cases never share an answer: they are two requests, each
tracked and escalated on its own, and neither's record replaces the other's. That holds
whatever a worker's copy of the book knows. An id is only ever reserved per case, and a
request about a case arrives on that case's partition, so the worker that decides whether
the id is free on the case is the one that wrote every request about it: another agency that
sends a request with an id already in the book about the same case is refused
(:class:`RequestIdInUse`, quarantine reason ``request_id_in_use``), since the answers to that
id on that case go to the first requester; its sender learns why from its refusal notice.
(Before requests were keyed by case, a worker that had not read another worker's request
took a second request under its id, about a case of its own, as the same request and wrote
over it: the first request vanished, and its holders were never escalated.) The requester
itself may send its own id again about the same case (a new event id); the book then takes
the newer request and keeps what the holders it still names have done (answered, or been
escalated): holders it no longer names are dropped, and holders it adds start unanswered.
Sent about another case, it is another request, and the first stands until it is answered,
escalated and retired.

An answer carries the request's facts (who asked, in what role, on whose behalf; the policy
addresses the answer to the requester) only if it comes from one of the request's holders
and is about the request's case (:meth:`RequestBook.facts`): an agency that was not asked,
or an event on another case that names the id, gets no request facts (unless a request
under that id was made about that case too: then it answers that one), and the shipped
policy then denies it. Nor does such an InformationResponse answer the request: the
requester never received it, so the holder stays asked and is escalated at ``respond_by``
(one test decides both, :meth:`RequestBook.apply` and :meth:`RequestBook.facts`, so they
cannot disagree). ``RequestState`` v3 records the case; a book rebuilt from older
records keys such a request by its id alone and learns its case from the first holder event
that names the request (then keys it by id and case), as it learns the partition of a record
older than v2. Records written before request keys named the case are keyed by the id alone
on the topic; once a request is written under its request key, ``request_states`` passes its
records under the bare id over (:func:`broker.runtime._service.request_states`).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from broker._errors import TiakiError
from broker.platform._topics import ingress
from broker.policy._model import RequestFacts

#: The partition whose owner escalates a request recorded without one (before RequestState v2).
LEGACY_PARTITION = 0
#: How long a request whose holders have all answered or been escalated is kept for late
#: answers, from the later of its ``respond_by`` and that moment, before it is retired (see
#: the module docs).
REQUEST_RETENTION = timedelta(days=90)
#: Stands for a holder in the (request key, holder) pairs of :meth:`RequestBook.unescalate`:
#: the request's retirement, not an escalation, is undone. No agency id has a NUL in it.
RETIRED = "\0retired"

#: Which worker escalates and retires a request: (requester's ingress topic, partition).
_Owner = tuple[str, int]
#: Between a request id and its case in a request key (ASCII's unit separator).
KEY_SEPARATOR = "\x1f"


def request_key(request_id: str, case_id: str | None) -> str:
    """A request's key in the book and on ``tiaki.state.requests``: its id and its case, so
    that requests under one id about two cases (two agencies', or one agency's sent again
    about another case) are two requests, and neither's record replaces the other's on the
    compacted topic. A request read from a record older than RequestState v3 (no case) is
    keyed by its id alone until a holder's answer says its case."""
    return request_id if case_id is None else f"{request_id}{KEY_SEPARATOR}{case_id}"


def state_key(state: Mapping[str, Any]) -> str:
    """The :func:`request_key` of a RequestState record."""
    case_id = state.get("case_id")
    return request_key(str(state["request_id"]), None if case_id is None else str(case_id))


class RequestIdMalformed(TiakiError):
    """An information request's id holds the character request keys put between an id and
    its case, so it could name another request's key. Nothing was changed; the pipeline
    quarantines the request."""

    quarantine_reason: ClassVar[str] = "request_id_malformed"


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
    #: When the last holder answered or was escalated; None while one waits, and in a record
    #: older than RequestState v4 (retired from ``respond_by`` then).
    settled_at: datetime | None = None
    #: The route the request was made under (``ota_s66`` for a requirement); its answers are
    #: decided under it. ``unknown`` in a record older than RequestState v5.
    legal_route: str = "unknown"

    def key(self) -> str:
        """The request's key in the book and on ``tiaki.state.requests``: :func:`request_key`."""
        return request_key(self.request_id, self.case_id)

    def owner(self) -> _Owner:
        """The (topic, partition) whose worker escalates and retires this request."""
        partition = LEGACY_PARTITION if self.partition is None else self.partition
        return ingress(self.requester), partition

    def waiting(self) -> set[str]:
        """The holders that have neither answered nor been escalated."""
        return self.holders - self.answered - self.escalated

    def deadline(self) -> datetime:
        """When something is next due: escalation while a holder is waiting, else retirement
        (:data:`REQUEST_RETENTION` after the later of ``respond_by`` and ``settled_at``)."""
        if self.waiting():
            return self.respond_by
        settled = self.respond_by if self.settled_at is None else self.settled_at
        return max(self.respond_by, settled) + REQUEST_RETENTION

    def settle(self, now: datetime | None) -> None:
        """Record when the last holder was settled: ``now`` if none waits (and it was not
        settled already), None again if one does (an escalation undone, a holder added)."""
        if self.waiting():
            self.settled_at = None
        elif self.settled_at is None:
            self.settled_at = now

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
            "settled_at": self.settled_at,
            "retired": False,
            "legal_route": self.legal_route,
        }

    def retirement(self) -> dict[str, Any]:
        """The state record that retires this request: the id stays its requester's, and
        nothing else of the request is kept (no holders or role) but its case, which keys it
        (:func:`request_key`)."""
        return self.state() | {
            "requester_role": "unknown",
            "on_behalf_of": "unknown",
            "holders": [],
            "answered": [],
            "escalated": [],
            "retired": True,
            "legal_route": "unknown",
        }


@dataclass(frozen=True)
class Lapsed:
    """What one :meth:`RequestBook.lapse` pass did, in the order its records must be written."""

    #: (the request's new state, holder) for each holder escalated.
    escalated: list[tuple[dict[str, Any], str]]
    #: The state record that retires each request retired (:meth:`_Request.retirement`),
    #: written after the pass's escalations.
    retirements: list[dict[str, Any]]

    @property
    def retired(self) -> list[str]:
        """The keys (:func:`request_key`) of the requests retired, in order."""
        return [state_key(r) for r in self.retirements]


class RequestBook:
    """Open information requests, pure: events and the clock in, state records out."""

    def __init__(self) -> None:
        #: By :func:`request_key`: a request id once per case it was made about.
        self._requests: dict[str, _Request] = {}
        #: The keys of each request id's requests.
        self._ids: dict[str, set[str]] = {}
        #: Per owner, a min-heap of (deadline, request key); entries go stale (see the docs).
        self._heaps: dict[_Owner, list[tuple[datetime, str]]] = {}
        #: The live entry of each request: its owner and deadline when it was last pushed.
        self._scheduled: dict[str, tuple[_Owner, datetime]] = {}
        self._entries = 0  # in every heap, stale ones included
        #: Requests retired by a pass whose transaction may not have committed yet, kept so
        #: that :meth:`unescalate` can bring them back; see :meth:`forget_retired`.
        self._retiring: dict[str, _Request] = {}
        #: Retired requests' keys and their requesters: an id stays its requester's on its
        #: case for good (a bare id, from a retirement before RequestState v5: on every case).
        self._retired: dict[str, str] = {}

    def replace(self, other: RequestBook) -> None:
        """Take ``other``'s state as this one's (after re-reading the state topic)."""
        self._requests = other._requests
        self._ids = other._ids
        self._heaps = other._heaps
        self._scheduled = other._scheduled
        self._entries = other._entries
        self._retiring = {}
        self._retired = other._retired

    def load(self, states: Iterable[Mapping[str, Any] | str]) -> None:
        """Take in state records, oldest first. A retirement record (``retired``) ends the
        request and keeps its id reserved to its requester; a request id instead of a record
        (a tombstone, read from ``tiaki.state.requests``'s empty value) forgets the id
        altogether. A later record for the id brings the request back."""
        for s in states:
            if isinstance(s, str):
                request_id, _, case_id = s.partition(KEY_SEPARATOR)
                if case_id:  # one request's key: that request, and its reservation
                    self._drop(s)
                    self._retired.pop(s, None)
                else:  # a bare request id: every request under it, and every reservation
                    for key in list(self._ids.get(request_id, ())):
                        self._drop(key)
                    prefix = request_id + KEY_SEPARATOR
                    for key in [
                        k for k in self._retired if k == request_id or k.startswith(prefix)
                    ]:
                        del self._retired[key]
                continue
            key = state_key(s)
            if s.get("retired"):
                if s.get("case_id") is None:  # before v5 retirements named no case: the id's
                    for held in list(self._ids.get(s["request_id"], ())):
                        self._drop(held)
                else:
                    self._drop(key)
                self._retired[key] = s["requester"]  # a bare id's (before v5): every case's
                continue
            self._retired.pop(key, None)
            if self._retired.get(s["request_id"]) == s["requester"]:
                del self._retired[s["request_id"]]
            request = _Request(
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
                _utc_or_none(s.get("settled_at")),  # absent before v4
                str(s.get("legal_route", "unknown")),  # absent before v5
            )
            if request.case_id is not None:  # the same request, read before its case was known
                self._drop(request.request_id)
            self._put(request)
            # Pushed in bulk, heapified below: a start reads every request there is.
            key, slot = request.key(), (request.owner(), request.deadline())
            if self._scheduled.get(key) != slot:
                self._scheduled[key] = slot
                self._heaps.setdefault(slot[0], []).append((slot[1], key))
                self._entries += 1
        for heap in self._heaps.values():
            heapq.heapify(heap)
        self._compact()

    def apply(
        self,
        event_type: str,
        event: Mapping[str, Any],
        partition: int | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any] | None:
        """Update from one admitted event, read from ``partition`` of its ingress topic at
        ``now``; the request's new state record, or None. (Without ``now`` a request settled
        by this event is retired from its ``respond_by``, as one read from a v3 record.)

        An InformationResponse answers only if it comes from one of the request's holders and
        is about the request's case, as :meth:`facts` asks of it (see the module docs).

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
                legal_route=_route(event),
            )
            key = request.key()
            # The same request id about this case, or about a case the book does not know yet
            # (read from a record older than RequestState v3): the same request sent again.
            if KEY_SEPARATOR in request.request_id:
                raise RequestIdMalformed("request id holds a control character (0x1f)")
            known = self._requests.get(key) or self._legacy(request.request_id)
            owner = known.requester if known is not None else None
            owner = owner or self._retired.get(key) or self._retired.get(request.request_id)
            # Before the retry check: another agency's event with the same event id is no retry.
            if owner is not None and owner != request.requester:
                raise RequestIdInUse(
                    "request id is already used by another agency's request about this case; "
                    "use a request id of your own"
                )
            if known is not None and known.event_id == request.event_id:
                return None  # the same request again (a retried batch)
            if known is not None:
                # Sent again about its case: what the holders it still names did stands.
                request.answered = known.answered & request.holders
                request.escalated = known.escalated & request.holders
                request.settled_at = known.settled_at
                request.settle(now)
                self._drop(known.key())
            self._retired.pop(key, None)  # its own id, for a new request
            self._retired.pop(request.request_id, None)
            self._put(request)
            self._schedule(request)
            self._compact()
            return request.state()
        if event_type == "InformationResponse":
            header = event["header"]
            holder = str(header["source_agency"])
            asked = self._asked(
                str(event["request_id"]), case_id=str(header["case_id"]), sender=holder
            )
            if asked is None or holder in asked.answered:
                return None
            asked.answered.add(holder)
            asked.settle(now)
            if asked.partition is None:
                asked.partition = partition  # a record older than v2: learn where it lives
            self._schedule(asked)
            self._compact()
            return asked.state()
        return None

    def unanswer(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """Undo what :meth:`apply` recorded for the InformationResponse ``event``: its answer
        never reached the requester (the broker quarantined it, as ``policy_error`` or
        ``oversized``), so its holder waits again and is escalated at the request's deadline
        unless it answers again (FVA s24: a request never ends silently). The request's new
        state record, or None if ``event`` answered nothing."""
        header = event["header"]
        holder = str(header["source_agency"])
        asked = self._asked(str(event["request_id"]), case_id=str(header["case_id"]), sender=holder)
        if asked is None or holder not in asked.answered:
            return None
        asked.answered.discard(holder)
        asked.settle(None)
        self._schedule(asked)
        return asked.state()

    def requester(self, request_id: str, case_id: str | None = None) -> str | None:
        """The agency that made request ``request_id`` (about ``case_id``, or about any case),
        if the book knows it."""
        keys = [request_key(request_id, case_id)] if case_id else self._ids.get(request_id, ())
        for key in keys:
            request = self._requests.get(key)
            if request is not None:
                return request.requester
        return None

    def facts(self, request_id: str, *, case_id: str, sender: str) -> RequestFacts | None:
        """The requester, its role and on whose behalf, for an event from ``sender`` about case
        ``case_id`` that answers request ``request_id``; None unless ``sender`` is one of the
        request's holders and the case is the request's (see the module docs). A request whose
        case the book does not know (rebuilt from the state topic) takes ``case_id`` from the
        first holder event that names it."""
        request = self._asked(request_id, case_id=case_id, sender=sender)
        if request is None:
            return None
        return RequestFacts(
            request.requester, request.requester_role, request.on_behalf_of, request.legal_route
        )

    def _asked(self, request_id: str, *, case_id: str, sender: str) -> _Request | None:
        """Request ``request_id`` if ``sender`` is one of its holders and ``case_id`` is its
        case, else None: whether an event answers the request (:meth:`apply`) and whether it
        carries the request's facts (:meth:`facts`) are one test, because an answer counted
        but denied to the requester would end the request silently. A request whose case the
        book does not know takes ``case_id`` from the first holder event that names it,
        whichever of the two sees that event first."""
        request = self._requests.get(request_key(request_id, case_id))
        if request is not None:
            return request if sender in request.holders else None
        request = self._legacy(request_id)
        if request is None or sender not in request.holders:
            return None
        self._drop(request_id)  # keyed by its case from now on
        request.case_id = case_id
        self._put(request)
        self._schedule(request)
        return request

    def lapse(self, now: datetime, assignment: Collection[tuple[str, int]] | None = None) -> Lapsed:
        """Escalate every holder that has neither answered nor been escalated by its request's
        ``respond_by``, and retire every request whose holders have all answered or been
        escalated :data:`REQUEST_RETENTION` before ``now``. With ``assignment`` (this worker's
        partitions), only the requests it owns (see the module docs); without, every one.

        A retired request is kept aside until :meth:`forget_retired`, so that
        :meth:`unescalate` can bring it back (pair it with :data:`RETIRED`)."""
        escalated: list[tuple[dict[str, Any], str]] = []
        retirements: list[dict[str, Any]] = []
        owners = self._heaps.keys() if assignment is None else assignment
        for owner in list(owners):
            heap = self._heaps.get(owner)
            while heap and heap[0][0] <= now:
                due, key = heapq.heappop(heap)
                self._entries -= 1
                request = self._requests.get(key)
                if request is None or self._scheduled.get(key) != (owner, due):
                    continue  # stale: the request has gone, or its deadline or owner changed
                del self._scheduled[key]
                for holder in sorted(request.waiting()):
                    request.escalated.add(holder)
                    request.settle(now)  # with the last holder: its retirement counts from now
                    escalated.append((request.state(), holder))
                if now < request.deadline():  # its retirement, nobody waiting now
                    self._schedule(request)
                else:
                    self._drop(key)
                    self._retiring[key] = request
                    self._retired[key] = request.requester
                    retirements.append(request.retirement())
        self._compact()
        return Lapsed(escalated, retirements)

    def unescalate(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Undo escalations, and retirements (holder :data:`RETIRED`), whose records were never
        committed (they will be made again). A retired request whose id has been taken since
        stays retired (the state is re-read after an abort in any case)."""
        pairs = list(pairs)
        for key, holder in pairs:  # first: a retired request's escalations come back
            if holder == RETIRED:
                request = self._retiring.pop(key, None)
                if request is not None and key not in self._requests:
                    self._put(request)
                    self._retired.pop(key, None)
                    self._schedule(request)
        for key, holder in pairs:
            request = self._requests.get(key)
            if holder != RETIRED and request is not None and holder in request.escalated:
                request.escalated.discard(holder)
                request.settle(None)  # a holder waits again
                self._schedule(request)
        self._compact()

    def forget_retired(self, pending: Collection[str]) -> None:
        """Drop the requests kept aside for :meth:`unescalate` but those in ``pending``, whose
        retirements have not yet committed."""
        for key in [k for k in self._retiring if k not in pending]:
            del self._retiring[key]

    def open_requests(self) -> list[dict[str, Any]]:
        return [r.state() for r in self._requests.values() if r.holders - r.answered]

    def _schedule(self, request: _Request) -> None:
        """Push ``request``'s next deadline, unless the entry in force says it already."""
        key, slot = request.key(), (request.owner(), request.deadline())
        if self._scheduled.get(key) == slot:
            return
        self._scheduled[key] = slot
        heapq.heappush(self._heaps.setdefault(slot[0], []), (slot[1], key))
        self._entries += 1

    def _legacy(self, request_id: str) -> _Request | None:
        """The request under ``request_id`` alone: one read from a record older than
        RequestState v3, whose case the book does not know yet. Never a request keyed by its
        case (an id that holds the separator must not reach one)."""
        request = self._requests.get(request_id)
        return request if request is not None and request.case_id is None else None

    def _put(self, request: _Request) -> None:
        key = request.key()
        self._requests[key] = request
        self._ids.setdefault(request.request_id, set()).add(key)

    def _drop(self, key: str) -> None:
        """Forget the request under ``key``, if there is one (its heap entry goes stale)."""
        request = self._requests.pop(key, None)
        self._scheduled.pop(key, None)
        if request is not None:
            keys = self._ids.get(request.request_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._ids[request.request_id]

    def _compact(self) -> None:
        """Rebuild the heaps from the entries in force once stale ones are most of them (a
        request's deadline changes a few times, and a heap this worker does not own is never
        popped): amortised, a constant per push. Not during a pass, which holds a heap."""
        if self._entries <= 2 * len(self._scheduled) + 1024:
            return
        heaps: dict[_Owner, list[tuple[datetime, str]]] = {}
        for key, (owner, due) in self._scheduled.items():
            heaps.setdefault(owner, []).append((due, key))
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps, self._entries = heaps, len(self._scheduled)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _route(request: Mapping[str, Any]) -> str:
    """The route an InformationRequest is made under: the one its delivery to the holders
    was decided under, its header's (``DecisionInput.shared_values``), so its answers are
    decided under the same; its own ``legal_route`` field only if the header says none."""
    sharing = (request.get("header") or {}).get("sharing") or {}
    route = str(sharing.get("legal_route") or "unknown")
    return route if route != "unknown" else str(request.get("legal_route") or "unknown")


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)
