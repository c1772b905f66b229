"""Case membership: which agencies work on which case, for the "participates" condition.

Need to know is a policy condition: some information goes only to agencies working on the
case. The broker learns membership from events, by this table (grounds are kept per agency,
and an agency participates while it has any):

==========================================  ==============================================
event                                       effect on the case
==========================================  ==============================================
CaseAllocation joined / lead_assigned /     agency gains ``allocation:<role>``
lead_transferred
CaseAllocation left                         agency loses every ``allocation:*`` ground
CaseAllocation case_closed                  case closed: nobody participates
TaskEvent assigned / accepted               ``assigned_to`` gains ``task:<task id>``
TaskEvent declined                          ``assigned_to`` loses ``task:<task id>``
TaskEvent completed / overdue               no change (the agency worked the case)
SafetyAssessmentMeetingOutcome              ``lead_agency`` gains ``lead``; the case's risk
                                            tier becomes the meeting's ``risk_tier``
==========================================  ==============================================

Applying an event is idempotent, so re-processing a batch after an aborted transaction gives
the same state. Every change is written (key: case id) to the compacted
``tiaki.state.cases`` topic in the same transaction as the event's other outputs, and a worker
rebuilds the map from that topic when it starts and again whenever its partitions change (the
previous owner committed its state before giving the partitions up). Events are keyed by case
id and every ingress topic has the same partition count, so with Kafka's range assignor one
worker owns all of a case's events across agencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

_JOIN = {"joined", "lead_assigned", "lead_transferred"}
#: The event types in the table above; any other leaves every case as it is.
_MEMBERSHIP_EVENTS = frozenset({"CaseAllocation", "TaskEvent", "SafetyAssessmentMeetingOutcome"})


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
        return frozenset(a for a, g in grounds.items() if g & {"lead", "allocation:lead"})

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

    def apply(
        self, event_type: str, event: Mapping[str, Any], now: datetime
    ) -> dict[str, Any] | None:
        """Update from one event; return the case's new state record, or None if unchanged."""
        if event_type not in _MEMBERSHIP_EVENTS:
            return None  # most events; and no empty entry is kept for their case
        case_id = str(event["header"]["case_id"])
        before = self._snapshot(case_id)
        members = self._members.setdefault(case_id, {})
        if event_type == "CaseAllocation":
            agency, action = event["agency"]["agency_id"], event["action"]
            if action in _JOIN:
                members.setdefault(agency, set()).add(f"allocation:{event['participation_role']}")
            elif action == "left":
                members[agency] = {
                    g for g in members.get(agency, set()) if not g.startswith("allocation:")
                }
            elif action == "case_closed":
                self._closed.add(case_id)
        elif event_type == "TaskEvent":
            agency, ground = event["assigned_to"]["agency_id"], f"task:{event['task_id']}"
            if event["transition"] in {"assigned", "accepted"}:
                members.setdefault(agency, set()).add(ground)
            elif event["transition"] == "declined":
                members.get(agency, set()).discard(ground)
        elif event_type == "SafetyAssessmentMeetingOutcome":
            members.setdefault(event["lead_agency"]["agency_id"], set()).add("lead")
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
