"""The shipped policy, behind the pipeline's port: decisions and minimised bodies agree with the
engine asked directly."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import from_json, load_schemas
from broker.policy import (
    DecisionInput,
    Pseudonymiser,
    apply_field_plan,
    compile_policy,
    load_policy_set,
)
from broker.registry import load_registry
from broker.runtime import Accepted, Outcome
from broker.runtime._cases import CaseMembership
from broker.runtime._policy import PolicyDecider
from broker.runtime._requests import RequestBook

ROOT = Path(__file__).resolve().parents[3]
ENGINE = compile_policy(load_policy_set(ROOT / "policies"))
SCHEMAS = load_schemas(ROOT / "schemas")
REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SECRET = b"synthetic-pseudonym-secret-0000000000"


def accepted(event_type: str) -> Accepted | None:
    """The example of ``event_type`` as intake would admit it, if its source is registered."""
    schema = SCHEMAS.latest(event_type)
    doc = json.loads((ROOT / "schemas" / "examples" / f"{event_type}.json").read_text())
    event = from_json(schema, doc)
    source = REGISTRY.get(event["header"]["source_agency"])
    if source is None:
        return None
    return Accepted(source, schema, event, opened=None)  # type: ignore[arg-type]


def join(cases: CaseMembership, agencies: Iterable[str]) -> CaseMembership:
    """``cases`` with each of ``agencies`` joined to SYN-CASE-0001 as a participant (by Police,
    which coordinates cases)."""
    police = REGISTRY.get("police")
    assert police is not None
    for agency in sorted(agencies):
        allocation = {
            "agency": {"agency_id": agency},
            "action": "joined",
            "participation_role": "participant",
        }
        event = {"header": {"case_id": "SYN-CASE-0001"}, **allocation}
        cases.apply("CaseAllocation", event, NOW, sender=police)
    return cases


def everyone_participates() -> CaseMembership:
    return join(CaseMembership(), REGISTRY.ids)


def test_decider_matches_the_engine_for_every_example() -> None:
    decider = PolicyDecider(lambda: ENGINE, Pseudonymiser(SECRET), everyone_participates())
    shared = 0
    for schema in SCHEMAS.events():
        item = accepted(schema.short_name)
        if item is None:
            continue
        verdicts = decider.decide(item, NOW)
        assert [v.recipient for v in verdicts] == list(
            ENGINE.candidates(schema.name, item.source.id)
        )
        for verdict in verdicts:
            decision = ENGINE.decide(
                DecisionInput.from_record(
                    item.event,
                    verdict.recipient,
                    at=NOW.date(),
                    schema_version=schema.version,
                    participates=True,
                )
            )
            assert verdict.rule_ids == decision.rule_ids
            if verdict.outcome is Outcome.DENY:
                assert verdict.body is None
            else:
                assert verdict.body == apply_field_plan(item.event, decision, Pseudonymiser(SECRET))
                shared += verdict.outcome is Outcome.SHARE
    assert shared > 0, "the shipped policy shares some example with someone"


PURPOSES = json.loads((ROOT / "schemas" / "types" / "SharingPurpose" / "v1.avsc").read_text())
ROUTES = json.loads((ROOT / "schemas" / "types" / "LegalRoute" / "v1.avsc").read_text())
EXAMPLES = [
    item
    for item in (accepted(s.short_name) for s in SCHEMAS.events())
    if item is not None and item.event["header"].get("sharing")
]


def safety_plan() -> Accepted:
    """A safety plan from safe-whanau, which the shipped policy shares with the case's
    participants (as in the broker benchmark)."""
    schema = SCHEMAS.latest("SafetyPlanUpdate")
    doc = json.loads((ROOT / "schemas" / "examples" / "SafetyPlanUpdate.json").read_text())
    sharing = json.loads(
        (ROOT / "schemas" / "examples" / "FamilyHarmEpisodeReport.json").read_text()
    )["header"]["sharing"]
    doc["header"] |= {
        "source_agency": "safe-whanau",
        "case_id": "SYN-CASE-0001",
        "sharing": sharing | {"purpose": "fv_plan_or_response"},
    }
    source = REGISTRY.get("safe-whanau")
    assert source is not None
    return Accepted(source, schema, from_json(schema, doc), opened=None)  # type: ignore[arg-type]


def varied(item: Accepted, sharing: dict[str, object]) -> Accepted:
    header = item.event["header"]
    event = {**item.event, "header": {**header, "sharing": {**header["sharing"], **sharing}}}
    return Accepted(item.source, item.schema, event, opened=None)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(range(len(EXAMPLES))),
            st.fixed_dictionaries(
                {
                    "purpose": st.sampled_from(PURPOSES["symbols"]),
                    "legal_route": st.sampled_from(ROUTES["symbols"]),
                    "imminent_danger": st.booleans(),
                    "privileged": st.booleans(),
                    "contains_maori_data": st.booleans(),
                }
            ),
        ),
        min_size=1,
        max_size=12,
    ),
    st.frozensets(st.sampled_from(sorted(REGISTRY.ids))),
)
def test_kept_rulings_decide_as_a_fresh_decider_does(
    events: list[tuple[int, dict[str, object]]], participants: frozenset[str]
) -> None:
    """One decider over a stream (rulings kept from event to event) gives every event the
    verdicts a new decider gives it alone."""
    cases = join(CaseMembership(), participants)
    kept = PolicyDecider(lambda: ENGINE, Pseudonymiser(SECRET), cases)
    for index, sharing in events + events:  # the second pass meets only kept rulings
        item = varied(EXAMPLES[index], sharing)
        fresh = PolicyDecider(lambda: ENGINE, Pseudonymiser(SECRET), cases)
        assert kept.decide(item, NOW) == fresh.decide(item, NOW)


def test_rulings_are_not_kept_across_a_policy_reload() -> None:
    """After a reload to a policy whose safety-plan rule names another legal basis (same
    candidates, same outcomes), the verdicts carry the new one, and back again."""
    policy = load_policy_set(ROOT / "policies")
    rules = tuple(
        replace(r, legal_basis="ota_s66c_disclosure")
        if r.id in {"safety-plan-to-participants", "safety-plan-to-corrections"}
        else r
        for r in policy.rules
    )
    other = compile_policy(replace(policy, rules=rules))
    current = [ENGINE]
    decider = PolicyDecider(lambda: current[0], Pseudonymiser(SECRET), everyone_participates())
    item = safety_plan()
    before = decider.decide(item, NOW)
    shares = [v for v in before if v.outcome is Outcome.SHARE]
    assert shares
    assert {v.legal_basis for v in shares} == {"fva_s20_disclosure"}
    current[0] = other
    after = decider.decide(item, NOW)
    assert [v.recipient for v in after] == [v.recipient for v in before]
    assert {v.legal_basis for v in after if v.outcome is Outcome.SHARE} == {"ota_s66c_disclosure"}
    current[0] = ENGINE
    assert decider.decide(item, NOW) == before


def test_membership_changes_are_not_hidden_by_kept_rulings() -> None:
    """The same event about a case its recipients have just joined is decided anew."""
    cases = CaseMembership()
    decider = PolicyDecider(lambda: ENGINE, Pseudonymiser(SECRET), cases)
    item = safety_plan()
    alone = {v.recipient: v.outcome for v in decider.decide(item, NOW)}
    assert Outcome.SHARE not in alone.values()  # safety plans go to participants only
    join(cases, REGISTRY.ids)
    joined = {v.recipient: v.outcome for v in decider.decide(item, NOW)}
    assert Outcome.SHARE in joined.values()


# -- what the decider derives (LAW.md scenarios through the production path) ----------------


def _decide(
    event_type: str, event: dict[str, Any], cases: CaseMembership, requests: RequestBook
) -> dict[str, Any]:
    schema = SCHEMAS.latest(event_type)
    source = REGISTRY.get(event["header"]["source_agency"])
    assert source is not None
    decider = PolicyDecider(lambda: ENGINE, Pseudonymiser(SECRET), cases, requests)
    item = Accepted(source, schema, event, opened=None)  # type: ignore[arg-type]
    return {v.recipient: v for v in decider.decide(item, NOW)}


def _example(event_type: str) -> dict[str, Any]:
    schema = SCHEMAS.latest(event_type)
    doc = json.loads((ROOT / "schemas" / "examples" / f"{event_type}.json").read_text())
    return from_json(schema, doc)


def test_law2_an_ota_s66_requirement_reaches_the_answer_through_the_request_book() -> None:
    request = _example("InformationRequest")
    request["header"]["source_agency"] = "oranga-tamariki"
    request.update(
        request_id="SYN-REQ-0066",
        legal_route="ota_s66",
        requester_role="ot_chief_executive_delegate",
        on_behalf_of="child",
        holders=[{"agency_id": "health-nz", "team": None, "contact_role": None}],
    )
    book = RequestBook()
    book.apply("InformationRequest", request)
    notes = _example("HealthScreeningOutcome")
    notes["header"]["correlation_id"] = "SYN-REQ-0066"
    notes["header"]["sharing"].update(purpose="care_and_protection", legal_route="ota_s66")
    notes["patient"]["person"]["date_of_birth"] = datetime(2019, 5, 1).date()
    verdict = _decide("HealthScreeningOutcome", notes, CaseMembership(), book)["oranga-tamariki"]
    assert verdict.outcome is Outcome.SHARE
    assert verdict.rule_ids[0] == "ota-s66-requirement"
    assert verdict.body is not None
    assert "counselling_notes" not in verdict.body
    # Without the request, the same record does not go under s66 (unknown never unlocks).
    alone = _decide("HealthScreeningOutcome", notes, CaseMembership(), RequestBook())
    assert alone["oranga-tamariki"].outcome is Outcome.DENY


def test_the_request_book_keeps_role_and_behalf_across_a_restart() -> None:
    book = RequestBook()
    state = book.apply("InformationRequest", _example("InformationRequest"))
    assert state is not None
    again = RequestBook()
    again.load([state])
    facts = again.facts("SYN-REQ-0001", case_id="SYN-CASE-0001", sender="police")
    assert facts is not None
    assert (facts.requester, facts.requester_role, facts.on_behalf_of) == (
        "msd",
        "social_worker",
        "victim",
    )


def test_law8_only_the_lead_specialist_ngo_receives_the_episode() -> None:
    cases = join(CaseMembership(), ["safe-whanau", "te-whare-tiaki", "corrections"])
    episode = _example("FamilyHarmEpisodeReport")
    episode["header"]["sharing"].update(purpose="fv_plan_or_response")
    assert (
        _decide("FamilyHarmEpisodeReport", episode, cases, RequestBook())["safe-whanau"].outcome
        is Outcome.DENY
    )
    meeting = _example("SafetyAssessmentMeetingOutcome")
    meeting["lead_agency"]["agency_id"] = "safe-whanau"
    cases.apply("SafetyAssessmentMeetingOutcome", meeting, NOW, sender=REGISTRY.get("police"))
    verdict = _decide("FamilyHarmEpisodeReport", episode, cases, RequestBook())["safe-whanau"]
    assert verdict.outcome is Outcome.SHARE
    assert verdict.rule_ids == ("episode-to-lead-specialist-ngo",)


def test_law4_strangulation_goes_to_police_before_any_meeting() -> None:
    verdict = _decide(
        "HealthScreeningOutcome",
        _example("HealthScreeningOutcome"),
        CaseMembership(),
        RequestBook(),
    )["police"]
    assert verdict.outcome is Outcome.SHARE
    assert "review_within_24h" in verdict.obligations
