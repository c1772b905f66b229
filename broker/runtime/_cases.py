"""Case membership: which agencies work on which case, for the "participates" condition.

Need to know is a policy condition: some information goes only to agencies working on the
case. The broker learns membership from events, by this table (grounds are kept per agency,
and an agency participates while it has any). Who may send each event is part of the table:
membership is the need-to-know condition, so an agency cannot make itself (or another) a
participant, and the daily meeting alone sets a case's risk, lead agency and tasks (LAW.md
ISR-01). *Coordinator* is an agency the registry marks ``coordinates_cases`` (it hosts the
safety assessment meeting); *itself* the agency the event is about (``agency`` of a
CaseAllocation, ``assigned_to`` of a TaskEvent); *lead* an agency holding a lead ground in the
case (``lead`` or ``allocation:lead``):

====================================  =====================  ====================================
event                                 who may send it        effect on the case
====================================  =====================  ====================================
CaseAllocation joined / lead_assigned  coordinator            agency gains ``allocation:<role>``
CaseAllocation lead_transferred       coordinator            agency gains ``allocation:<role>``;
                                                             if that is ``lead``, every other
                                                             lead's lead grounds become
                                                             ``allocation:participant``
CaseAllocation left                   coordinator, itself    agency loses every ``allocation:*``
                                                             ground and ``lead`` (withdrawing
                                                             narrows sharing)
CaseAllocation case_closed            coordinator            case closed: nobody participates
TaskEvent assigned                    coordinator, lead      ``assigned_to`` gains ``task:<id>``
TaskEvent accepted                    itself, for a task     none: it holds ``task:<id>`` already
                                      assigned to it
TaskEvent declined                    itself                 ``assigned_to`` loses ``task:<id>``
TaskEvent completed                   itself                 no change (the agency worked the case)
TaskEvent overdue                     itself, coordinator,   no change (the meeting checks that
                                      lead                   tasks get done)
SafetyAssessmentMeetingOutcome        coordinator            ``lead_agency`` gains ``lead``, every
                                                             other lead's lead grounds become
                                                             ``allocation:participant``; the
                                                             case's risk tier becomes the
                                                             meeting's ``risk_tier``
CaseAllocation / TaskEvent unknown    anyone                 no change (a newer writer's action)
====================================  =====================  ====================================

A case has one lead once the meeting names one or the lead is transferred: the agency that
led before stops being lead (it may no longer assign tasks, and rules for the lead no longer
reach it) but stays a participant, so a handover does not cut it off mid-task, until it
leaves. ``lead_assigned`` adds a lead beside any other (joint leads).

"Assigned to it" means the agency holds ``task:<id>``: a coordinator or the lead assigned it
and it has not declined it since, so an agency cannot assign itself a task by sending
``accepted``. An event its sender may not send raises :class:`MembershipRefused` before it
changes anything, and the pipeline quarantines it (reason ``unauthorised_membership``): the
operators' quarantine metric, ``tiaki quarantine list`` and the sender's refusal notice all
show it, and nothing of the event is shared. The sender is the authenticated one (the ingress
topic's agency, which the event's header must name), never a field of the event.

A worker re-reads the map from ``tiaki.state.cases`` after every failed commit (the worker's
state refresh), so a batch processed again is decided, and authorised, on the committed state
from before it, never on changes its own aborted attempt made. Every change is
written (key: case id) to the compacted ``tiaki.state.cases`` topic in the same transaction as
the event's other outputs, and a worker rebuilds the map from that topic when it starts and
again whenever its partitions change (the previous owner committed its state before giving
the partitions up). Events are keyed by case id and every ingress topic has the same
partition count, so with Kafka's range assignor one worker owns all of a case's events across
agencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from broker._errors import TiakiError
from broker.registry import Agency

_JOIN = {"joined", "lead_assigned", "lead_transferred"}
#: The event types in the table above; any other leaves every case as it is.
_MEMBERSHIP_EVENTS = frozenset({"CaseAllocation", "TaskEvent", "SafetyAssessmentMeetingOutcome"})
#: The grounds that make an agency the case's lead (from a meeting, or an allocation).
_LEAD_GROUNDS = frozenset({"lead", "allocation:lead"})

COORDINATOR, ITSELF, LEAD = "coordinator", "itself", "lead"
#: Who may send each membership event, keyed by (event type, action or transition); the
#: meeting outcome has no action (its key is ""). A key not here changes nothing (``unknown``)
#: and needs no authority.
AUTHORITY: dict[tuple[str, str], frozenset[str]] = {
    ("CaseAllocation", "joined"): frozenset({COORDINATOR}),
    ("CaseAllocation", "lead_assigned"): frozenset({COORDINATOR}),
    ("CaseAllocation", "lead_transferred"): frozenset({COORDINATOR}),
    ("CaseAllocation", "case_closed"): frozenset({COORDINATOR}),
    ("CaseAllocation", "left"): frozenset({COORDINATOR, ITSELF}),
    ("TaskEvent", "assigned"): frozenset({COORDINATOR, LEAD}),
    ("TaskEvent", "accepted"): frozenset({ITSELF}),
    ("TaskEvent", "declined"): frozenset({ITSELF}),
    ("TaskEvent", "completed"): frozenset({ITSELF}),
    ("TaskEvent", "overdue"): frozenset({ITSELF, COORDINATOR, LEAD}),
    ("SafetyAssessmentMeetingOutcome", ""): frozenset({COORDINATOR}),
}
_WHO = {
    COORDINATOR: "a coordinating agency (registry: coordinates_cases)",
    ITSELF: "the agency it is about",
    LEAD: "the case's lead agency",
}


class MembershipRefused(TiakiError):
    """An event would change a case's membership, tasks or risk tier, and its sender has no
    authority to send it (see the table in the module docs). Nothing was changed."""

    quarantine_reason: ClassVar[str] = "unauthorised_membership"


class CaseMembership:
    """The membership map, pure: events in, state records out."""

    def __init__(self) -> None:
        self._members: dict[str, dict[str, set[str]]] = {}
        self._closed: set[str] = set()
        self._risk: dict[str, str] = {}

    def risk(self, case_id: str) -> str:
        """The case's risk tier from its latest safety assessment meeting, or ``unknown``."""
        return self._risk.get(case_id, "unknown")

    def participates(self, case_id: str, agency: str) -> bool:
        if case_id in self._closed:
            return False
        return bool(self._members.get(case_id, {}).get(agency))

    def leads(self, case_id: str) -> frozenset[str]:
        """The case's lead agencies: ``lead`` from a meeting or ``allocation:lead``."""
        if case_id in self._closed:
            return frozenset()
        grounds = self._members.get(case_id, {})
        return frozenset(a for a, g in grounds.items() if g & _LEAD_GROUNDS)

    def members(self, case_id: str) -> frozenset[str]:
        if case_id in self._closed:
            return frozenset()
        return frozenset(a for a, grounds in self._members.get(case_id, {}).items() if grounds)

    def replace(self, other: CaseMembership) -> None:
        """Take ``other``'s state as this one's (after re-reading the state topic)."""
        self._members, self._closed, self._risk = other._members, other._closed, other._risk

    def load(self, states: Iterable[Mapping[str, Any]]) -> None:
        """Rebuild from ``CaseMembership`` records (the compacted topic, oldest first)."""
        for state in states:
            case_id = str(state["case_id"])
            self._members[case_id] = {a: set(g) for a, g in state["members"].items()}
            self._risk[case_id] = str(state.get("risk_tier", "unknown"))
            if state["closed"]:
                self._closed.add(case_id)
            else:
                self._closed.discard(case_id)

    def authorise(self, event_type: str, event: Mapping[str, Any], sender: Agency) -> None:
        """Raise :class:`MembershipRefused` unless ``sender`` may send ``event`` (the table in
        the module docs); change nothing either way."""
        if event_type not in _MEMBERSHIP_EVENTS:
            return
        case_id = str(event["header"]["case_id"])
        action, about = _action_and_subject(event_type, event)
        allowed = AUTHORITY.get((event_type, action))
        if allowed is None:
            return
        held = self._members.get(case_id, {})
        roles = {
            COORDINATOR: sender.coordinates_cases,
            ITSELF: about == sender.id,
            LEAD: bool(held.get(sender.id, set()) & _LEAD_GROUNDS),
        }
        named = f"{event_type} {action}".strip()
        if not any(roles[role] for role in allowed):
            who = " or ".join(_WHO[role] for role in sorted(allowed))
            raise MembershipRefused(f"{sender.id} may not send {named}: only {who} may")
        assigned = f"task:{event.get('task_id')}" in held.get(sender.id, set())
        if (event_type, action) == ("TaskEvent", "accepted") and not assigned:
            raise MembershipRefused(
                f"{sender.id} may not send {named} for a task not assigned to it"
                " (no TaskEvent assigned from a coordinating or lead agency)"
            )

    def apply(
        self, event_type: str, event: Mapping[str, Any], now: datetime, *, sender: Agency
    ) -> dict[str, Any] | None:
        """Update from one event sent by ``sender`` (the authenticated source); return the
        case's new state record, or None if unchanged. Raise :class:`MembershipRefused`,
        changing nothing, if ``sender`` may not send it."""
        if event_type not in _MEMBERSHIP_EVENTS:
            return None  # most events; and no empty entry is kept for their case
        self.authorise(event_type, event, sender)
        case_id = str(event["header"]["case_id"])
        before = self._snapshot(case_id)
        members = self._members.setdefault(case_id, {})
        if event_type == "CaseAllocation":
            agency, action = event["agency"]["agency_id"], event["action"]
            if action in _JOIN:
                ground = f"allocation:{event['participation_role']}"
                if action == "lead_transferred" and ground in _LEAD_GROUNDS:
                    _demote_leads(members, keep=agency)
                members.setdefault(agency, set()).add(ground)
            elif action == "left":
                members[agency] = {
                    g
                    for g in members.get(agency, set())
                    if not g.startswith("allocation:") and g not in _LEAD_GROUNDS
                }
            elif action == "case_closed":
                self._closed.add(case_id)
        elif event_type == "TaskEvent":
            agency, ground = event["assigned_to"]["agency_id"], f"task:{event['task_id']}"
            if event["transition"] == "assigned":  # accepted: held already (authorise)
                members.setdefault(agency, set()).add(ground)
            elif event["transition"] == "declined":
                members.get(agency, set()).discard(ground)
        elif event_type == "SafetyAssessmentMeetingOutcome":
            lead = event["lead_agency"]["agency_id"]
            _demote_leads(members, keep=lead)
            members.setdefault(lead, set()).add("lead")
            self._risk[case_id] = str(event.get("risk_tier", "unknown"))
        if self._snapshot(case_id) == before:
            return None
        return {
            "case_id": case_id,
            "members": {a: sorted(g) for a, g in sorted(members.items()) if g},
            "closed": case_id in self._closed,
            "risk_tier": self.risk(case_id),
            "updated_at": now,
        }

    def _snapshot(self, case_id: str) -> tuple[bool, str, frozenset[tuple[str, frozenset[str]]]]:
        """Everything a state record carries, to tell whether an event changed it."""
        grounds = self._members.get(case_id, {})
        return (
            case_id in self._closed,
            self.risk(case_id),
            frozenset((a, frozenset(g)) for a, g in grounds.items() if g),
        )


def _demote_leads(members: dict[str, set[str]], keep: str) -> None:
    """Every agency but ``keep`` that leads the case (``members``) stops leading it and stays
    a participant."""
    for agency, grounds in members.items():
        if agency != keep and grounds & _LEAD_GROUNDS:
            grounds -= _LEAD_GROUNDS
            grounds.add("allocation:participant")


def _action_and_subject(event_type: str, event: Mapping[str, Any]) -> tuple[str, str | None]:
    """The event's action (its key in :data:`AUTHORITY`) and the agency it is about."""
    if event_type == "CaseAllocation":
        return str(event["action"]), str(event["agency"]["agency_id"])
    if event_type == "TaskEvent":
        return str(event["transition"]), str(event["assigned_to"]["agency_id"])
    return "", None
