"""Case membership follows allocation, task and meeting events from agencies with the authority
to send them, idempotently, and rebuilds; an event without that authority changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.registry import Agency, load_registry
from broker.runtime._cases import CaseMembership, MembershipRefused

NOW = datetime(2026, 11, 23, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]
REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")
AGENCIES = {a.id: a for a in REGISTRY.agencies}
#: The shipped registry's coordinator (it hosts the safety assessment meeting).
COORDINATOR = "police"


def agency(agency_id: str) -> Agency:
    return AGENCIES[agency_id]


def allocation(
    agency: str, action: str, role: str = "participant", case: str = "SYN-C1"
) -> dict[str, Any]:
    return {
        "header": {"case_id": case},
        "agency": {"agency_id": agency},
        "action": action,
        "participation_role": role,
    }


def task(agency: str, transition: str, task_id: str = "T1", case: str = "SYN-C1") -> dict[str, Any]:
    return {
        "header": {"case_id": case},
        "assigned_to": {"agency_id": agency},
        "transition": transition,
        "task_id": task_id,
    }


def meeting(lead: str, risk: str, case: str = "SYN-C1") -> dict[str, Any]:
    return {"header": {"case_id": case}, "lead_agency": {"agency_id": lead}, "risk_tier": risk}


def kind_of(event: dict[str, Any]) -> str:
    if "task_id" in event:
        return "TaskEvent"
    return "SafetyAssessmentMeetingOutcome" if "lead_agency" in event else "CaseAllocation"


def send(cases: CaseMembership, sender: str, event: dict[str, Any]) -> dict[str, Any] | None:
    return cases.apply(kind_of(event), event, NOW, sender=agency(sender))


def test_shipped_registry_names_police_as_the_coordinator() -> None:
    assert REGISTRY.coordinators == [COORDINATOR]


def test_allocation_and_leaving() -> None:
    cases = CaseMembership()
    assert send(cases, COORDINATOR, allocation("corrections", "joined")) is not None
    assert cases.participates("SYN-C1", "corrections")
    assert not cases.participates("SYN-C1", "msd")
    send(cases, COORDINATOR, allocation("corrections", "left"))
    assert not cases.participates("SYN-C1", "corrections")


def test_an_agency_may_withdraw_itself_but_no_other() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, allocation("corrections", "joined"))
    send(cases, COORDINATOR, allocation("msd", "joined"))
    with pytest.raises(MembershipRefused, match="corrections may not send CaseAllocation left"):
        send(cases, "corrections", allocation("msd", "left"))
    assert cases.participates("SYN-C1", "msd")
    send(cases, "corrections", allocation("corrections", "left"))
    assert not cases.participates("SYN-C1", "corrections")


def test_task_grounds_survive_leaving_the_allocation() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, allocation("safe-whanau", "joined"))
    send(cases, COORDINATOR, task("safe-whanau", "assigned"))
    send(cases, COORDINATOR, allocation("safe-whanau", "left"))
    assert cases.participates("SYN-C1", "safe-whanau")
    send(cases, "safe-whanau", task("safe-whanau", "declined"))
    assert not cases.participates("SYN-C1", "safe-whanau")


def test_closed_case_has_no_members_and_lead_from_meeting() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, meeting("safe-whanau", "high"))
    assert cases.members("SYN-C1") == {"safe-whanau"}
    assert cases.risk("SYN-C1") == "high"
    assert cases.risk("SYN-OTHER") == "unknown"
    state = send(cases, COORDINATOR, allocation("police", "case_closed"))
    assert state is not None
    assert state["closed"]
    assert cases.members("SYN-C1") == frozenset()


def test_unrelated_events_change_nothing_and_need_no_authority() -> None:
    event = {"header": {"case_id": "SYN-C1"}}
    assert (
        CaseMembership().apply("FamilyHarmEpisodeReport", event, NOW, sender=agency("msd")) is None
    )


def test_a_new_risk_tier_alone_is_written() -> None:
    """A second meeting with the same lead changes only the risk tier; a worker rebuilding
    from the state topic must still see it."""
    cases = CaseMembership()
    first = send(cases, COORDINATOR, meeting("police", "medium"))
    second = send(cases, COORDINATOR, meeting("police", "high"))
    assert first is not None
    assert second is not None
    assert second["risk_tier"] == "high"


# The reviewer's reproductions (review-policy s3): each is refused and changes nothing.


def test_an_agency_cannot_allocate_itself_to_a_case() -> None:
    cases = CaseMembership()
    with pytest.raises(MembershipRefused, match="only a coordinating agency"):
        send(cases, "corrections", allocation("corrections", "joined"))
    assert not cases.participates("SYN-C1", "corrections")
    assert cases.members("SYN-C1") == frozenset()


def test_only_the_coordinator_sets_the_risk_tier_and_lead() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, meeting("safe-whanau", "medium"))
    with pytest.raises(MembershipRefused, match="msd may not send SafetyAssessmentMeetingOutcome"):
        send(cases, "msd", meeting("msd", "high"))
    assert cases.risk("SYN-C1") == "medium"
    assert not cases.participates("SYN-C1", "msd")


def test_a_school_cannot_close_a_case() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, allocation("safe-whanau", "joined"))
    with pytest.raises(MembershipRefused):
        send(cases, "school-central", allocation("school-central", "case_closed"))
    assert cases.participates("SYN-C1", "safe-whanau")


def test_the_lead_agency_assigns_tasks_and_others_do_not() -> None:
    """Scenario 8: the meeting makes a specialist NGO lead; it tasks other agencies."""
    cases = CaseMembership()
    with pytest.raises(MembershipRefused, match="the case's lead agency"):
        send(cases, "safe-whanau", task("oranga-tamariki", "assigned"))
    send(cases, COORDINATOR, meeting("safe-whanau", "high"))
    send(cases, "safe-whanau", task("oranga-tamariki", "assigned"))
    assert cases.participates("SYN-C1", "oranga-tamariki")
    with pytest.raises(MembershipRefused):  # the lead of SYN-C1 is nobody's lead in SYN-C2
        send(cases, "safe-whanau", task("corrections", "assigned", case="SYN-C2"))
    with pytest.raises(MembershipRefused):  # a participant is not the lead
        send(cases, "oranga-tamariki", task("corrections", "assigned", task_id="T2"))
    assert not cases.participates("SYN-C1", "corrections")


def test_accepting_needs_an_assignment_to_the_agency_itself() -> None:
    cases = CaseMembership()
    with pytest.raises(MembershipRefused, match="not assigned to it"):
        send(cases, "corrections", task("corrections", "accepted"))
    assert not cases.participates("SYN-C1", "corrections")
    with pytest.raises(MembershipRefused, match="the agency it is about"):
        send(cases, "corrections", task("msd", "accepted"))  # another's task
    send(cases, COORDINATOR, task("corrections", "assigned"))
    assert send(cases, "corrections", task("corrections", "accepted")) is None  # holds it already
    with pytest.raises(MembershipRefused):  # only the assignee reports its own task done
        send(cases, COORDINATOR, task("corrections", "completed"))
    send(cases, "corrections", task("corrections", "completed"))
    send(cases, "corrections", task("corrections", "declined"))
    with pytest.raises(MembershipRefused, match="not assigned to it"):  # declined: re-task first
        send(cases, "corrections", task("corrections", "accepted"))
    assert not cases.participates("SYN-C1", "corrections")


def test_overdue_comes_from_the_assignee_the_coordinator_or_the_lead() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, meeting("safe-whanau", "high"))
    send(cases, COORDINATOR, task("corrections", "assigned"))
    for sender in ("corrections", COORDINATOR, "safe-whanau"):
        assert send(cases, sender, task("corrections", "overdue")) is None
    with pytest.raises(MembershipRefused):
        send(cases, "msd", task("corrections", "overdue"))


def test_an_unknown_action_changes_nothing_from_anyone() -> None:
    cases = CaseMembership()
    assert send(cases, "msd", allocation("msd", "unknown")) is None
    assert send(cases, "msd", task("corrections", "unknown")) is None
    assert cases.members("SYN-C1") == frozenset()


# Property: for any interleaving of authorised and unauthorised events, membership is what the
# authorised ones alone give, and every unauthorised one is refused without changing anything.

CASES = st.sampled_from(["SYN-C1", "SYN-C2"])
ANYONE = st.sampled_from(sorted(AGENCIES))
NOT_COORDINATORS = st.sampled_from(sorted(a for a in AGENCIES if a != COORDINATOR))
#: Agencies the authorised stream may make lead; the others never hold a lead ground.
LEADS = ("safe-whanau", "te-whare-tiaki")
NEVER_LEAD = st.sampled_from(sorted(a for a in AGENCIES if a != COORDINATOR and a not in LEADS))
TASKS = st.sampled_from(["T1", "T2", "T3"])
RISKS = st.sampled_from(["low", "medium", "high"])

Sent = tuple[str, dict[str, Any]]  # (sender, event)


@st.composite
def authorised_unit(draw: st.DrawFn) -> list[Sent]:
    """A few events an authorised stream sends together, in order."""
    case = draw(CASES)
    choice = draw(st.integers(0, 5))
    if choice == 0:  # the coordinator allocates (a lead role only to a possible lead)
        who = draw(ANYONE)
        action = draw(
            st.sampled_from(["joined", "joined", "lead_assigned", "lead_transferred", "left"])
        )
        role = draw(
            st.sampled_from(
                ["lead", "participant", "observer"] if who in LEADS else ["participant", "observer"]
            )
        )
        return [(COORDINATOR, allocation(who, action, role, case))]
    if choice == 1:  # an agency withdraws itself
        who = draw(ANYONE)
        return [(who, allocation(who, "left", case=case))]
    if choice == 2:  # the meeting sets risk and lead
        return [(COORDINATOR, meeting(draw(st.sampled_from(LEADS)), draw(RISKS), case))]
    if choice == 3:  # the coordinator, or a lead the meeting just named, assigns; it may accept
        to, task_id = draw(ANYONE), draw(TASKS)
        lead = draw(st.sampled_from(LEADS))
        by = draw(st.sampled_from([COORDINATOR, lead]))
        unit: list[Sent] = []
        if by == lead:
            unit.append((COORDINATOR, meeting(lead, draw(RISKS), case)))
        unit.append((by, task(to, "assigned", task_id, case)))
        if draw(st.booleans()):
            unit.append((to, task(to, "accepted", task_id, case)))
        return unit
    if choice == 4:  # the assignee reports on its task
        who = draw(ANYONE)
        transition = draw(st.sampled_from(["declined", "completed", "overdue"]))
        return [(who, task(who, transition, draw(TASKS), case))]
    return [(COORDINATOR, allocation(draw(ANYONE), "case_closed", case=case))]


@st.composite
def unauthorised(draw: st.DrawFn) -> Sent:
    """One event its sender has no authority to send."""
    case = draw(CASES)
    choice = draw(st.integers(0, 6))
    if choice == 0:  # allocates, leads or closes without coordinating
        action = draw(
            st.sampled_from(["joined", "lead_assigned", "lead_transferred", "case_closed"])
        )
        sender = draw(NOT_COORDINATORS)
        who = draw(st.one_of(st.just(sender), ANYONE))
        role = draw(st.sampled_from(["lead", "participant"]))
        return sender, allocation(who, action, role, case)
    if choice == 1:  # withdraws another agency
        sender = draw(NOT_COORDINATORS)
        who = draw(ANYONE.filter(lambda a: a != sender))
        return sender, allocation(who, "left", case=case)
    if choice == 2:  # holds its own meeting
        sender = draw(NOT_COORDINATORS)
        return sender, meeting(draw(st.one_of(st.just(sender), ANYONE)), draw(RISKS), case)
    if choice == 3:  # assigns a task (to itself or another) without coordinating or leading
        sender = draw(NEVER_LEAD)
        return sender, task(draw(st.one_of(st.just(sender), ANYONE)), "assigned", draw(TASKS), case)
    if choice == 4:  # speaks for another agency's task
        sender = draw(ANYONE)
        who = draw(ANYONE.filter(lambda a: a != sender))
        transition = draw(st.sampled_from(["accepted", "declined", "completed"]))
        return sender, task(who, transition, draw(TASKS), case)
    if choice == 5:  # reports another's task overdue without coordinating or leading
        sender = draw(NEVER_LEAD)
        who = draw(ANYONE.filter(lambda a: a != sender))
        return sender, task(who, "overdue", draw(TASKS), case)
    sender = draw(ANYONE)  # accepts a task nobody assigned to it
    return sender, task(sender, "accepted", draw(st.sampled_from(["U1", "U2"])), case)


def view(cases: CaseMembership) -> dict[str, Any]:
    """Everything a decision can ask of the membership, for both cases."""
    return {
        case: (
            cases.members(case),
            cases.risk(case),
            {a: cases.participates(case, a) for a in AGENCIES},
        )
        for case in ("SYN-C1", "SYN-C2")
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(authorised_unit(), max_size=12), st.lists(unauthorised(), max_size=12), st.data())
def test_unauthorised_events_never_change_membership(
    units: list[list[Sent]], refused: list[Sent], data: st.DataObject
) -> None:
    granted = [sent for unit in units for sent in unit]
    order = data.draw(st.permutations([True] * len(refused) + [False] * len(granted)))
    stream, r, g = [], iter(refused), iter(granted)
    for is_refused in order:
        stream.append((is_refused, next(r) if is_refused else next(g)))

    mixed, alone, states = CaseMembership(), CaseMembership(), []
    for is_refused, (sender, event) in stream:
        if is_refused:
            before = view(mixed)
            with pytest.raises(MembershipRefused):
                send(mixed, sender, event)
            assert view(mixed) == before  # nobody gained (or lost) anything
        else:
            state = send(mixed, sender, event)
            if state is not None:
                states.append(state)
    for sender, event in granted:
        send(alone, sender, event)
    assert view(mixed) == view(alone)
    rebuilt = CaseMembership()
    rebuilt.load(states)
    assert view(rebuilt) == view(alone)


AUTHORISED = st.lists(authorised_unit(), max_size=10).map(
    lambda units: [sent for unit in units for sent in unit]
)


@given(AUTHORISED)
def test_replaying_and_rebuilding_give_the_same_membership(stream: list[Sent]) -> None:
    live, states = CaseMembership(), []
    for sender, event in stream:
        state = send(live, sender, event)
        if state is not None:
            states.append(state)
        assert send(live, sender, event) is None  # idempotent
    rebuilt = CaseMembership()
    rebuilt.load(states)
    assert view(rebuilt) == view(live)


# The lead changes hands (review of 7 December): the agency that led before stops leading.


def test_a_transferred_lead_stops_leading_and_stays_a_participant() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, meeting("safe-whanau", "high"))
    send(cases, COORDINATOR, allocation("te-whare-tiaki", "lead_transferred", "lead"))
    assert cases.leads("SYN-C1") == {"te-whare-tiaki"}
    assert cases.participates("SYN-C1", "safe-whanau")  # a handover does not cut it off
    with pytest.raises(MembershipRefused, match="the case's lead agency"):
        send(cases, "safe-whanau", task("msd", "assigned"))
    send(cases, "te-whare-tiaki", task("msd", "assigned"))
    send(cases, "safe-whanau", allocation("safe-whanau", "left"))
    assert not cases.participates("SYN-C1", "safe-whanau")


def test_a_meeting_naming_another_lead_replaces_the_old_one() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, allocation("safe-whanau", "lead_assigned", "lead"))
    send(cases, COORDINATOR, meeting("te-whare-tiaki", "medium"))
    assert cases.leads("SYN-C1") == {"te-whare-tiaki"}
    with pytest.raises(MembershipRefused):
        send(cases, "safe-whanau", task("msd", "assigned"))
    rebuilt = CaseMembership()
    state = send(cases, COORDINATOR, meeting("safe-whanau", "high"))
    assert state is not None
    rebuilt.load([state])
    assert rebuilt.leads("SYN-C1") == cases.leads("SYN-C1") == {"safe-whanau"}
    assert rebuilt.members("SYN-C1") == {"safe-whanau", "te-whare-tiaki"}


def test_joint_leads_stay_joint_and_a_lead_that_leaves_is_gone() -> None:
    cases = CaseMembership()
    send(cases, COORDINATOR, meeting("safe-whanau", "high"))
    send(cases, COORDINATOR, allocation("te-whare-tiaki", "lead_assigned", "lead"))
    assert cases.leads("SYN-C1") == {"safe-whanau", "te-whare-tiaki"}
    send(cases, "safe-whanau", allocation("safe-whanau", "left"))  # its meeting lead too
    assert cases.leads("SYN-C1") == {"te-whare-tiaki"}
    assert not cases.participates("SYN-C1", "safe-whanau")
