"""Evaluation semantics, as properties over many inputs and as pinned examples."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import from_json
from broker.policy import (
    DecisionInput,
    Effect,
    Engine,
    Outcome,
    PolicySet,
    Pseudonymiser,
    Rule,
    apply_field_plan,
    compile_policy,
    load_policy_set,
    policy_hash,
)
from broker.policy._fields import DEFAULT
from broker.policy._model import (
    CHILD_CONSULTED,
    CONSENT,
    PARTIES,
    PROVENANCE,
    RISK_LEVELS,
    Conditions,
    PartyCondition,
)
from tests.unit.policy.conftest import SCHEMAS, TEST_SECRET

AT = dt.date(2025, 3, 5)
AGENCIES = [
    "police",
    "oranga-tamariki",
    "corrections",
    "health-nz",
    "msd",
    "school-central",
    "safe-whanau",
    "te-whare-tiaki",
    "canterbury-hub",
]
EVENTS = [
    "nz.tiaki.FamilyHarmEpisodeReport",
    "nz.tiaki.HealthScreeningOutcome",
    "nz.tiaki.CorrectionsReleaseNotification",
    "nz.tiaki.SafetyPlanUpdate",
    "nz.tiaki.TaskEvent",
    "nz.tiaki.ReportOfConcern",
    "nz.tiaki.InformationResponse",
    "nz.tiaki.SafetyAssessmentMeetingOutcome",
]
PURPOSES = [
    "fv_risk_needs_assessment",
    "fv_plan_or_response",
    "victim_protection",
    "child_assess_risk_or_need",
    "child_support_or_prevention_plan",
    "care_and_protection",
    "serious_threat",
    "unknown",
]

inputs = st.builds(
    DecisionInput,
    event_type=st.sampled_from(EVENTS),
    source=st.sampled_from(AGENCIES),
    recipient=st.sampled_from(AGENCIES),
    purpose=st.sampled_from(PURPOSES),
    at=st.dates(dt.date(2023, 1, 1), dt.date(2026, 12, 31)),
    legal_route=st.sampled_from(["unknown", "fva_s20", "ota_s66"]),
    risk=st.sampled_from(RISK_LEVELS),
    consent=st.sampled_from(CONSENT),
    child_consulted=st.sampled_from(CHILD_CONSULTED),
    provenance=st.sampled_from(PROVENANCE),
    requester_role=st.sampled_from(["unknown", "constable", "social_worker"]),
    on_behalf_of=st.sampled_from(PARTIES),
    imminent_danger=st.booleans(),
    privileged=st.booleans(),
    suppression_order=st.booleans(),
    maori_data=st.booleans(),
    participates=st.booleans(),
    child_involved=st.booleans(),
    addressee=st.booleans(),
)
FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _with(policy: PolicySet, *extra: Rule) -> Engine:
    return compile_policy(dataclasses.replace(policy, rules=(*policy.rules, *extra)))


@pytest.fixture(scope="module")
def forbid_msd(policy: PolicySet) -> Engine:
    rule = Rule(
        id="t-forbid-msd",
        effect=Effect.FORBID,
        description="",
        reason="unit_records_to_hub",
        when=Conditions(recipient=PartyCondition(agencies=frozenset({"msd"}))),
    )
    return _with(policy, rule)


@pytest.fixture(scope="module")
def forbid_identifiers(policy: PolicySet) -> Engine:
    rule = Rule(
        id="t-forbid-ids",
        effect=Effect.FORBID,
        description="",
        reason="unit_records_to_hub",
        when=Conditions(),
        classes=(("identifier", "drop"),),
    )
    return _with(policy, rule)


@FAST
@given(inp=inputs)
def test_forbid_always_beats_permit(engine: Engine, forbid_msd: Engine, inp: DecisionInput) -> None:
    decision = forbid_msd.decide(inp)
    if inp.recipient == "msd" and inp.source != "msd":
        assert decision.outcome is Outcome.DENY
        assert not decision.released()
    else:
        assert decision.outcome == engine.decide(inp).outcome


@FAST
@given(inp=inputs)
def test_a_field_forbid_beats_every_permit(forbid_identifiers: Engine, inp: DecisionInput) -> None:
    decision = forbid_identifiers.decide(inp)
    if decision.plan is not None:
        for path in decision.released():
            assert decision.plan.classes[path] != "identifier", path


@FAST
@given(inp=inputs)
def test_only_named_fields_leave(engine: Engine, inp: DecisionInput) -> None:
    decision = engine.decide(inp)
    if decision.outcome in (Outcome.DENY, Outcome.REFER):
        assert not decision.released()
    for path in decision.released():
        assert decision.plan is not None
        assert decision.plan.sources[path] != DEFAULT


@FAST
@given(inp=inputs)
def test_decisions_are_deterministic_and_explained(engine: Engine, inp: DecisionInput) -> None:
    first, second = engine.decide(inp), engine.decide(inp)
    assert first == second
    assert first.reason_codes, "every decision carries reason codes"
    assert first.policy_hash == engine.policy_hash
    if first.shares:
        assert first.legal_basis
        assert first.route
        assert first.rule_ids


@FAST
@given(inp=inputs)
def test_unknown_status_is_never_allowed(engine: Engine, inp: DecisionInput) -> None:
    if inp.recipient == "canterbury-hub":
        assert not engine.decide(inp).shares


@pytest.fixture(scope="module")
def unmemoised(policy: PolicySet) -> Engine:
    fresh = compile_policy(policy)
    fresh.memoise = False
    return fresh


@FAST
@given(inp=inputs)
def test_memoised_decisions_match_a_fresh_walk(
    engine: Engine, unmemoised: Engine, inp: DecisionInput
) -> None:
    for _ in range(2):  # the second call is answered from the bucket's memo
        expected, got = unmemoised.decide(inp), engine.decide(inp)
        assert got == expected
        assert (got.plan is None) == (expected.plan is None)
        assert dict(got.field_actions) == dict(expected.field_actions)


def test_a_rule_lapses_in_a_bucket_that_has_memoised_it(policy: PolicySet) -> None:
    permit = policy.rule("episode-to-kaupapa-maori-provider")  # give it an end date
    lapsing = dataclasses.replace(permit, valid_until=dt.date(2025, 6, 30))
    engine = compile_policy(
        dataclasses.replace(
            policy, rules=tuple(lapsing if r is permit else r for r in policy.rules)
        )
    )
    inp = DecisionInput(
        "nz.tiaki.FamilyHarmEpisodeReport",
        "police",
        "te-whare-tiaki",
        "fv_risk_needs_assessment",
        AT,
        participates=True,
    )
    before = engine.decide(inp)
    after = engine.decide(dataclasses.replace(inp, at=dt.date(2025, 7, 1)))
    assert permit.id in before.rule_ids
    assert before.outcome is not Outcome.DENY
    assert after.outcome is Outcome.DENY
    assert "rule_expired" in after.reason_codes
    assert engine.decide(inp) == before


def test_a_fresh_compile_decides_the_same(policy: PolicySet, engine: Engine) -> None:
    again = compile_policy(load_policy_set(policy.folder))
    inp = DecisionInput(
        "nz.tiaki.FamilyHarmEpisodeReport",
        "police",
        "te-whare-tiaki",
        "fv_risk_needs_assessment",
        AT,
        participates=True,
    )
    assert again.decide(inp) == engine.decide(inp)
    assert again.policy_hash == engine.policy_hash


@settings(max_examples=200, deadline=None)
@given(
    value=st.text(min_size=1),
    other=st.text(min_size=1),
    a=st.sampled_from(AGENCIES),
    b=st.sampled_from(AGENCIES),
)
def test_pseudonyms_are_per_recipient(value: str, other: str, a: str, b: str) -> None:
    pseudo = Pseudonymiser(TEST_SECRET)
    assert pseudo.pseudonym(a, value) == pseudo.pseudonym(a, value)
    if a != b:
        assert pseudo.pseudonym(a, value) != pseudo.pseudonym(b, value)
    if value != other:
        assert pseudo.pseudonym(a, value) != pseudo.pseudonym(a, other)
    assert pseudo.pseudonym(a, value) != value


def test_pseudonyms_depend_on_the_secret() -> None:
    other = Pseudonymiser(b"another-synthetic-secret-for-tests-only!!")
    assert Pseudonymiser(TEST_SECRET).pseudonym("msd", "SYN-0001") != other.pseudonym(
        "msd", "SYN-0001"
    )
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Pseudonymiser(b"short")
    assert "secret" not in repr(Pseudonymiser(TEST_SECRET)).replace("<secret>", "")


def _example(policy: PolicySet, name: str) -> dict[str, Any]:
    schema = policy.schemas.latest(name)
    return from_json(schema, json.loads((SCHEMAS / "examples" / f"{name}.json").read_text()))


def test_apply_field_plan_minimises_the_record(policy: PolicySet, engine: Engine) -> None:
    record = _example(policy, "CorrectionsReleaseNotification")
    decision = engine.decide(
        DecisionInput.from_record(
            record,
            "safe-whanau",
            at=AT,
            participates=True,
            purpose="victim_protection",
            grounds_stated=True,  # the example states no justification (FVA-03)
        )
    )
    assert decision.outcome is Outcome.SHARE_MINIMISED
    out = apply_field_plan(record, decision, Pseudonymiser(TEST_SECRET))
    assert "programme_notes" not in out
    assert out["residence_address"] == {
        "suburb": "Otherton",
        "town_city": "Christchurch",
        "territorial_authority": "Christchurch City",
        "region": "Canterbury",
    }
    assert out["person"]["date_of_birth"] == 1988
    assert out["person"]["identifiers"][0]["value"].startswith("ps_")
    assert "ethnicity" not in out["person"]
    assert out["exclusion_zones"] == record["exclusion_zones"]
    again = apply_field_plan(record, decision, Pseudonymiser(TEST_SECRET))
    assert again == out


def test_the_same_person_links_at_one_recipient_only(policy: PolicySet, engine: Engine) -> None:
    pseudo = Pseudonymiser(TEST_SECRET)
    record = _example(policy, "CorrectionsReleaseNotification")
    seen = {}
    for recipient in ("safe-whanau", "te-whare-tiaki"):
        decision = engine.decide(
            DecisionInput.from_record(
                record, recipient, at=AT, participates=True, purpose="victim_protection"
            )
        )
        seen[recipient] = apply_field_plan(record, decision, pseudo)["person"]["identifiers"][0][
            "value"
        ]
        assert seen[recipient] == pseudo.pseudonym(recipient, "SYN-0002")
    assert seen["safe-whanau"] != seen["te-whare-tiaki"]


def test_denied_and_referred_records_are_empty(policy: PolicySet, engine: Engine) -> None:
    record = _example(policy, "HealthScreeningOutcome")
    decision = engine.decide(DecisionInput.from_record(record, "msd", at=AT))
    assert decision.outcome is Outcome.DENY
    assert apply_field_plan(record, decision, Pseudonymiser(TEST_SECRET)) == {}
    assert set(decision.field_actions.values()) == {"drop"}


def test_a_rule_that_errors_withholds_and_is_named(policy: PolicySet) -> None:
    engine = compile_policy(policy)
    target = next(c for c in engine._compiled if c.rule.id == "ed-strangulation-to-police")

    def broken(inp: DecisionInput) -> bool:
        raise RuntimeError("boom")

    target.check = broken
    decision = engine.decide(
        DecisionInput(
            "nz.tiaki.HealthScreeningOutcome",
            "health-nz",
            "police",
            "victim_protection",
            AT,
            risk="high",
        )
    )
    assert decision.outcome is Outcome.DENY
    assert decision.reason_codes == ("evaluation_error",)
    assert decision.errors == ("ed-strangulation-to-police",)


def test_unusable_input_fails_closed(engine: Engine) -> None:
    bad = DecisionInput(
        "nz.tiaki.HealthScreeningOutcome", "health-nz", "police", ["victim_protection"], AT
    )  # type: ignore[arg-type]
    decision = engine.decide(bad)
    assert decision.outcome is Outcome.DENY
    assert "evaluation_error" in decision.reason_codes
    assert decision.errors


@pytest.mark.parametrize(
    ("recipient", "source", "event", "reason"),
    [
        ("nobody", "police", "nz.tiaki.TaskEvent", "unknown_recipient"),
        ("msd", "nobody", "nz.tiaki.TaskEvent", "unknown_source"),
        ("msd", "police", "nz.tiaki.NoSuchEvent", "unknown_event_type"),
    ],
)
def test_unknown_parties_and_events_are_denied(
    engine: Engine, recipient: str, source: str, event: str, reason: str
) -> None:
    decision = engine.decide(DecisionInput(event, source, recipient, "fv_plan_or_response", AT))
    assert decision.outcome is Outcome.DENY
    assert decision.reason_codes == (reason,)


def test_candidates_come_from_the_index(engine: Engine) -> None:
    roc = engine.candidates("nz.tiaki.ReportOfConcern", "police")
    assert "oranga-tamariki" in roc
    assert "police" not in roc
    assert "canterbury-hub" not in roc
    assert engine.candidates("nz.tiaki.NoSuchEvent", "police") == ()


def _with_agency(policy_copy: Path, entry: str) -> Engine:
    """The shipped set compiled with one more agency in its registry (``entry``, YAML)."""
    registry = policy_copy / "agencies.yaml"
    registry.write_text(registry.read_text() + entry)
    return compile_policy(load_policy_set(policy_copy))


def test_an_unconfirmed_recipient_goes_to_a_person(policy_copy: Path) -> None:
    engine = _with_agency(
        policy_copy,
        """
  - id: new-ngo
    name: New Specialist Service (synthetic, status pending)
    kind: specialist_ngo
    region: canterbury
    statutory:
      family_violence_agency: {status: unconfirmed, evidence: "funding agreement under review"}
      child_welfare_protection_agency: {status: no}
      social_services_practitioner_employer: {status: unconfirmed, evidence: "registration pending"}
""",
    )
    inp = DecisionInput(
        "nz.tiaki.SafetyPlanUpdate",
        "safe-whanau",
        "new-ngo",
        "fv_plan_or_response",
        AT,
        participates=True,
        child_consulted="yes",
        on_behalf_of="agency",
    )
    decision = engine.decide(inp)
    assert decision.outcome is Outcome.REVIEW
    assert "recipient_status_unconfirmed" in decision.reason_codes
    assert decision.rule_ids == ("safety-plan-to-participants",)
    assert "new-ngo" in engine.candidates("nz.tiaki.SafetyPlanUpdate", "safe-whanau")
    control = dataclasses.replace(inp, recipient="corrections", grounds_stated=True)
    assert engine.decide(control).shares


def test_a_recipient_holding_data_overseas_goes_to_a_person(policy_copy: Path) -> None:
    """PA-06, MDS-02: a permit that would share with an agency holding data outside New
    Zealand holds the share for the privacy officer's IPP 12 assessment; what no permit
    allows is still denied, not queued."""
    engine = _with_agency(
        policy_copy,
        """
  - id: offshore-ngo
    name: Offshore-hosted Specialist Service (synthetic)
    kind: specialist_ngo
    region: canterbury
    country: AU
    statutory:
      family_violence_agency: {status: confirmed, evidence: "synthetic"}
      child_welfare_protection_agency: {status: no}
      social_services_practitioner_employer: {status: confirmed, evidence: "synthetic"}
""",
    )
    inp = DecisionInput(
        "nz.tiaki.SafetyPlanUpdate",
        "safe-whanau",
        "offshore-ngo",
        "fv_plan_or_response",
        AT,
        participates=True,
        child_consulted="yes",
        on_behalf_of="agency",
        grounds_stated=True,
    )
    decision = engine.decide(inp)
    assert decision.outcome is Outcome.REVIEW
    assert decision.queue == "privacy_review"
    assert "recipient_overseas" in decision.reason_codes
    assert decision.rule_ids == ("safety-plan-to-participants",)
    assert engine.decide(dataclasses.replace(inp, participates=False)).outcome is Outcome.DENY
    control = dataclasses.replace(inp, recipient="police")
    assert engine.decide(control).shares


def test_policy_hash_ignores_layout_but_not_meaning(policy_copy: Path, policy: PolicySet) -> None:
    base = policy_hash(load_policy_set(policy_copy))
    assert base == policy_hash(policy)
    rules = policy_copy / "rules" / "50-ipp11.yaml"
    rules.write_text("# a comment changes nothing\n" + rules.read_text())
    assert policy_hash(load_policy_set(policy_copy)) == base
    rules.write_text(rules.read_text().replace("risk: keep", "risk: drop"))
    assert policy_hash(load_policy_set(policy_copy)) != base


def test_route_order_tries_imminent_danger_first(engine: Engine) -> None:
    inp = DecisionInput(
        "nz.tiaki.HealthScreeningOutcome",
        "health-nz",
        "police",
        "victim_protection",
        AT,
        risk="high",
        consent="given",
        imminent_danger=True,
        participates=True,
    )
    assert engine.decide(inp).route == "imminent_danger"
    assert engine.decide(dataclasses.replace(inp, imminent_danger=False)).route == "fva_s20"
