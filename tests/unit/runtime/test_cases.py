"""Case membership follows allocation, task and meeting events, idempotently, and rebuilds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.runtime._cases import CaseMembership

NOW = datetime(2026, 11, 23, tzinfo=UTC)


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


def test_allocation_and_leaving() -> None:
    cases = CaseMembership()
    assert cases.apply("CaseAllocation", allocation("corrections", "joined"), NOW) is not None
    assert cases.participates("SYN-C1", "corrections")
    assert not cases.participates("SYN-C1", "msd")
    cases.apply("CaseAllocation", allocation("corrections", "left"), NOW)
    assert not cases.participates("SYN-C1", "corrections")


def test_task_grounds_survive_leaving_the_allocation() -> None:
    cases = CaseMembership()
    cases.apply("CaseAllocation", allocation("safe-whanau", "joined"), NOW)
    cases.apply("TaskEvent", task("safe-whanau", "assigned"), NOW)
    cases.apply("CaseAllocation", allocation("safe-whanau", "left"), NOW)
    assert cases.participates("SYN-C1", "safe-whanau")
    cases.apply("TaskEvent", task("safe-whanau", "declined"), NOW)
    assert not cases.participates("SYN-C1", "safe-whanau")


def test_closed_case_has_no_members_and_lead_from_meeting() -> None:
    cases = CaseMembership()
    cases.apply(
        "SafetyAssessmentMeetingOutcome",
        {
            "header": {"case_id": "SYN-C1"},
            "lead_agency": {"agency_id": "safe-whanau"},
            "risk_tier": "high",
        },
        NOW,
    )
    assert cases.members("SYN-C1") == {"safe-whanau"}
    assert cases.risk("SYN-C1") == "high"
    assert cases.risk("SYN-OTHER") == "unknown"
    state = cases.apply("CaseAllocation", allocation("police", "case_closed"), NOW)
    assert state is not None
    assert state["closed"]
    assert cases.members("SYN-C1") == frozenset()


def test_unrelated_events_change_nothing() -> None:
    assert (
        CaseMembership().apply("FamilyHarmEpisodeReport", {"header": {"case_id": "SYN-C1"}}, NOW)
        is None
    )


EVENTS = st.one_of(
    st.builds(
        allocation,
        st.sampled_from(["police", "msd", "corrections"]),
        st.sampled_from(["joined", "left", "lead_assigned", "case_closed"]),
    ),
    st.builds(
        task,
        st.sampled_from(["police", "msd", "corrections"]),
        st.sampled_from(["assigned", "accepted", "declined", "completed"]),
        st.sampled_from(["T1", "T2"]),
    ),
    st.builds(meeting, st.sampled_from(["police", "msd"]), st.sampled_from(["high", "medium"])),
)


def kind_of(event: dict[str, Any]) -> str:
    if "task_id" in event:
        return "TaskEvent"
    return "SafetyAssessmentMeetingOutcome" if "lead_agency" in event else "CaseAllocation"


def test_a_new_risk_tier_alone_is_written() -> None:
    """A second meeting with the same lead changes only the risk tier; a worker rebuilding
    from the state topic must still see it."""
    cases = CaseMembership()
    first = cases.apply("SafetyAssessmentMeetingOutcome", meeting("police", "medium"), NOW)
    second = cases.apply("SafetyAssessmentMeetingOutcome", meeting("police", "high"), NOW)
    assert first is not None
    assert second is not None
    assert second["risk_tier"] == "high"


@given(st.lists(EVENTS, max_size=25))
def test_replaying_and_rebuilding_give_the_same_membership(events: list[dict[str, Any]]) -> None:
    live, states = CaseMembership(), []
    for event in events:
        kind = kind_of(event)
        state = live.apply(kind, event, NOW)
        if state is not None:
            states.append(state)
        assert live.apply(kind, event, NOW) is None  # idempotent
    rebuilt = CaseMembership()
    rebuilt.load(states)
    for agency in ("police", "msd", "corrections"):
        assert rebuilt.participates("SYN-C1", agency) == live.participates("SYN-C1", agency)
    assert rebuilt.risk("SYN-C1") == live.risk("SYN-C1")
