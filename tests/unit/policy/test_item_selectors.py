"""The shipped policy's item selectors, end to end through the engine and the minimiser:
Corrections, managing the person using violence, learns that a child is in the episode or the
safety plan (role, relationship, year of birth) but never who the child is (GUIDE-01, LAW
scenario 8); the adults it works with stay named."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from broker.policy import DecisionInput, Engine, Outcome, PolicySet, Pseudonymiser, apply_field_plan
from tests.unit.policy.conftest import TEST_SECRET
from tests.unit.policy.test_grounds import example, sharing

AT = dt.date(2025, 3, 5)
CHILD_FIELDS = ("family_name", "given_names", "preferred_name", "identifiers", "gender")


@pytest.mark.parametrize(
    ("event", "source"),
    [
        ("FamilyHarmEpisodeReport", "police"),
        ("SafetyPlanUpdate", "safe-whanau"),
    ],
)
def test_corrections_sees_a_child_by_role_and_year_never_by_name(
    policy: PolicySet, engine: Engine, event: str, source: str
) -> None:
    record = copy.deepcopy(example(policy, event))
    record["header"]["source_agency"] = source
    record["header"]["sharing"] = sharing(purpose="fv_plan_or_response", child_consulted="yes")
    people = record["people"]
    assert any(p["role"] == "child" for p in people), "the example needs a child"
    # A second child the sender recorded with role unknown (the enum's default).
    unknown = copy.deepcopy(next(p for p in people if p["role"] == "child"))
    unknown["role"] = "unknown"
    unknown["person"]["given_names"] = "Test Unrecorded Child"
    people.append(unknown)
    decision = engine.decide(
        DecisionInput.from_record(record, "corrections", at=AT, participates=True)
    )
    assert decision.outcome is Outcome.SHARE_MINIMISED, decision.reason_codes
    body = apply_field_plan(record, decision, Pseudonymiser(TEST_SECRET))
    shown = body["people"]
    assert "Test Unrecorded Child" not in json.dumps(body, default=str)
    assert len(shown) == len(people)
    for item, original in zip(shown, people, strict=True):
        assert item["role"] == original["role"]
        if original["role"] not in ("victim", "person_using_violence"):
            assert set(item.get("person", {})) <= {"date_of_birth"}
            assert item["person"]["date_of_birth"] == original["person"]["date_of_birth"].year
            text = json.dumps(item)
            for name in CHILD_FIELDS:
                value = original["person"].get(name)
                if isinstance(value, str) and value:
                    assert value not in text
        else:
            assert item["person"]["given_names"] == original["person"]["given_names"]
            assert item["person"]["date_of_birth"] == original["person"]["date_of_birth"].year
    # The audit record names what happened to the child's fields.
    assert decision.field_actions["people[role=child].person.given_names"] == "drop"
