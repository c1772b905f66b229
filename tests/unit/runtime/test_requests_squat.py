"""Request-id squatting: an id is its first requester's, and only a holder answering on the
request's case carries the request's facts (who asked, in what role, on whose behalf) and
counts as having answered."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.codec import decode, encode
from broker.runtime import Accepted, Outcome, Verdict
from broker.runtime._cases import CaseMembership
from broker.runtime._requests import RequestBook, RequestIdInUse
from tests.unit.runtime.test_intake import NOW, SCHEMAS
from tests.unit.runtime.test_pipeline import (
    Harness,
    ScriptedDecider,
    refused_and_told,
    sealed_example,
)
from tests.unit.runtime.test_policy_decider import _decide, _example
from tests.unit.runtime.test_requests import DUE, REQUEST, RESPONSE

AUDIT = SCHEMAS.latest("AuditRecord")
HEALTH = [{"agency_id": "health-nz", "team": None, "contact_role": None}]
S66_ID = "SYN-REQ-0066"


def _s66(agency: str, role: str, event_id: str) -> dict[str, Any]:
    request = _example("InformationRequest")
    request["header"] |= {"source_agency": agency, "event_id": event_id}
    request.update(
        request_id=S66_ID,
        legal_route="ota_s66",
        requester_role=role,
        on_behalf_of="child",
        holders=HEALTH,
    )
    return request


def _notes(source: str = "health-nz", case_id: str = "SYN-CASE-0001") -> dict[str, Any]:
    """Health's records supplied under the s66 requirement ``S66_ID``."""
    notes = _example("HealthScreeningOutcome")
    notes["header"] |= {"correlation_id": S66_ID, "source_agency": source, "case_id": case_id}
    notes["header"]["sharing"].update(purpose="care_and_protection", legal_route="ota_s66")
    notes["patient"]["person"]["date_of_birth"] = datetime(2019, 5, 1).date()
    return notes


POLICE = _s66("police", "constable", "00000000-0000-4000-8000-0000000000aa")
OT = _s66("oranga-tamariki", "ot_chief_executive_delegate", "00000000-0000-4000-8000-0000000000bb")


def test_a_request_id_another_agency_holds_is_quarantined_and_routed_nowhere() -> None:
    decided: list[str] = []

    class Recording(ScriptedDecider):
        def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
            decided.append(accepted.source.id)
            return []

    harness = Harness(Recording())
    fields = {"request_id": S66_ID, "legal_route": "ota_s66", "holders": HEALTH}
    squat = sealed_example(harness, "InformationRequest", "police", **fields)
    assert harness.pipeline.process(squat, NOW).quarantine_reason is None
    clash = sealed_example(harness, "InformationRequest", "oranga-tamariki", **fields)
    processed = harness.pipeline.process(clash, NOW)
    notice = refused_and_told(harness, processed, "request_id_in_use", "oranga-tamariki")
    assert "police" not in notice["detail"]  # the refusal says little
    assert decided == ["police"]  # OT's request was never decided, so never routed
    assert harness.pipeline.requests.requester(S66_ID) == "police"
    # Police may send its own id again: a new request, tracked, no quarantine.
    again = sealed_example(harness, "InformationRequest", "police", **fields)
    assert harness.pipeline.process(again, NOW).quarantine_reason is None


def test_health_answers_a_squatted_id_only_as_the_squatters_own_request_allows() -> None:
    book = RequestBook()
    assert book.apply("InformationRequest", POLICE, 0) is not None
    with pytest.raises(RequestIdInUse):
        book.apply("InformationRequest", OT, 0)
    # The same event id from another agency is no retried batch either.
    with pytest.raises(RequestIdInUse):
        book.apply("InformationRequest", _s66("oranga-tamariki", "x", POLICE["header"]["event_id"]))
    assert book.requester(S66_ID) == "police"
    verdicts = _decide("HealthScreeningOutcome", _notes(), CaseMembership(), book)
    # Police's own s66 requirement (a constable may make one) is answered to Police...
    assert verdicts["police"].rule_ids[0] == "ota-s66-requirement"
    # ...and nothing reaches Oranga Tamariki under s66: its request was refused, not tracked.
    assert verdicts["oranga-tamariki"].outcome is Outcome.DENY
    assert [h for _, h in book.lapse(datetime(2100, 1, 1, tzinfo=UTC)).escalated] == ["health-nz"]


@pytest.mark.parametrize(
    ("source", "case_id"),
    [("msd", "SYN-CASE-0001"), ("health-nz", "SYN-CASE-0002")],
    ids=["not-a-holder", "another-case"],
)
def test_an_event_naming_a_request_carries_its_facts_only_from_a_holder_on_its_case(
    source: str, case_id: str
) -> None:
    book = RequestBook()
    book.apply("InformationRequest", OT, 0)
    assert book.facts(S66_ID, case_id=case_id, sender=source) is None
    verdicts = _decide("HealthScreeningOutcome", _notes(source, case_id), CaseMembership(), book)
    assert verdicts["oranga-tamariki"].outcome is Outcome.DENY
    # The holder answering on the request's case still reaches the requester.
    legit = _decide("HealthScreeningOutcome", _notes(), CaseMembership(), book)
    assert legit["oranga-tamariki"].outcome is Outcome.SHARE
    assert legit["oranga-tamariki"].rule_ids[0] == "ota-s66-requirement"


def test_a_rebuilt_book_keeps_the_request_s_case() -> None:
    """RequestState v3 records the case: a worker that rebuilds the book from the state topic
    gives an event on another case no facts from the first event on."""
    state = RequestBook().apply("InformationRequest", OT, 0)
    assert state is not None
    schema = SCHEMAS.latest("RequestState")
    book = RequestBook()
    book.load([decode(encode(schema, state), schema)])
    assert book.facts(S66_ID, case_id="SYN-CASE-0002", sender="health-nz") is None
    assert book.facts(S66_ID, case_id="SYN-CASE-0001", sender="health-nz") is not None


def test_a_rebuilt_book_learns_the_case_from_the_first_holder_event() -> None:
    """RequestState v2 records have no case id: after a restart the first holder event
    naming the request fixes its case, and an event on another case then carries no facts."""
    state = RequestBook().apply("InformationRequest", OT, 0)
    assert state is not None
    book = RequestBook()
    book.load([{k: v for k, v in state.items() if k != "case_id"}])
    assert book.facts(S66_ID, case_id="SYN-CASE-0001", sender="msd") is None
    facts = book.facts(S66_ID, case_id="SYN-CASE-0001", sender="health-nz")
    assert facts is not None
    assert facts.requester == "oranga-tamariki"
    assert book.facts(S66_ID, case_id="SYN-CASE-0002", sender="health-nz") is None


def _answer(case_id: str) -> dict[str, Any]:
    """Police's answer to MSD's request SYN-REQ-0001 (about SYN-CASE-0001), on ``case_id``,
    with grounds the shipped policy shares on."""
    sharing = {
        "purpose": "victim_protection",
        "legal_route": "fva_s20",
        "justification": "Synthetic: sharing will help keep the victim safe.",
        "accountable_role": "Synthetic team leader",
        "consent": "unknown",
        "child_consulted": "unknown",
        "child_not_consulted_reason": None,
        "provenance": "unknown",
    }
    return RESPONSE | {"header": RESPONSE["header"] | {"case_id": case_id, "sharing": sharing}}


def test_an_answer_on_another_case_answers_nothing_and_the_holder_is_escalated() -> None:
    """An answer the policy denies to the requester (another case: no request facts) must
    not count as answered, or the request would end silently (FVA s24)."""
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    elsewhere = _answer("SYN-CASE-0002")
    assert book.apply("InformationResponse", elsewhere, 0) is None  # the pipeline's order
    assert _decide("InformationResponse", elsewhere, CaseMembership(), book)["msd"].outcome is (
        Outcome.DENY
    )
    assert [holder for _, holder in book.lapse(DUE).escalated] == ["police"]
    # Police's answer on the request's case is still taken, late, and reaches MSD.
    answer = _answer("SYN-CASE-0001")
    late = book.apply("InformationResponse", answer, 0)
    assert late is not None
    assert (late["answered"], late["escalated"]) == (["police"], ["police"])
    assert _decide("InformationResponse", answer, CaseMembership(), book)["msd"].outcome is (
        Outcome.SHARE
    )


def test_a_rebuilt_book_learns_the_case_from_the_first_answer_as_routing_does() -> None:
    """A book rebuilt from records without a case learns it from the first holder event,
    whether that event is first counted as an answer or first routed, and records it."""
    state = RequestBook().apply("InformationRequest", REQUEST, 0)
    assert state is not None
    caseless = {k: v for k, v in state.items() if k != "case_id"}
    counted = RequestBook()
    counted.load([caseless])
    answered = counted.apply("InformationResponse", _answer("SYN-CASE-0002"), 0)
    assert answered is not None
    assert (answered["answered"], answered["case_id"]) == (["police"], "SYN-CASE-0002")
    assert counted.facts("SYN-REQ-0001", case_id="SYN-CASE-0002", sender="police") is not None
    routed = RequestBook()
    routed.load([caseless])
    assert routed.facts("SYN-REQ-0001", case_id="SYN-CASE-0002", sender="police") is not None
    assert routed.apply("InformationResponse", _answer("SYN-CASE-0001"), 0) is None
    assert [holder for _, holder in routed.lapse(DUE).escalated] == ["police"]
