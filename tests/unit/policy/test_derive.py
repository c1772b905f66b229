"""What the broker derives from an event (not its header), the scenarios built through the same
derivation, and the PA-05 guarantee as a property over every example event."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import Schema, decode, encode, flatten_fields, from_json, load_schemas
from broker.policy import (
    DecisionInput,
    Engine,
    PolicySet,
    PolicyValidationError,
    RequestFacts,
    load_scenarios,
)
from broker.policy._model import (
    CHILD_CONSULTED,
    CHILD_FIELDS,
    CONSENT,
    MAORI_DATA_FIELDS,
    REQUESTER_ROLES,
    RISK_LEVELS,
    derived_values,
    signal_finder,
)
from tests.unit.codec.test_properties import _records
from tests.unit.policy.conftest import SCHEMAS, copy_policies

AT = dt.date(2025, 3, 5)
SCHEMA_SET = load_schemas(SCHEMAS)


def example(name: str) -> dict[str, Any]:
    schema = SCHEMA_SET.latest(name)
    doc = json.loads((SCHEMAS / "examples" / f"{name}.json").read_text(encoding="utf-8"))
    return from_json(schema, doc)


def _leaf_names(cls: str) -> set[str]:
    """Names of every field of class ``cls`` in any event schema, outside the header."""
    out = set()
    for schema in SCHEMA_SET.events():
        for version in SCHEMA_SET.versions(schema.name):
            for info in flatten_fields(version):
                if info.classification == cls and not info.path.startswith("header."):
                    out.add(info.path.rpartition(".")[2].removesuffix("[]"))
    return out


def test_every_maori_data_field_is_a_signal() -> None:
    assert _leaf_names("maori_data") <= set(MAORI_DATA_FIELDS)


def test_every_top_level_child_field_is_a_signal() -> None:
    top = set()
    for schema in SCHEMA_SET.events():
        for info in flatten_fields(schema):
            if info.classification == "child" and "." not in info.path:
                top.add(info.path.removesuffix("[]"))
    assert top <= set(CHILD_FIELDS)


def test_a_child_in_people_is_involved_whatever_the_header_says() -> None:
    episode = example("FamilyHarmEpisodeReport")
    episode["header"]["sharing"]["child_consulted"] = "unknown"
    episode["children_present"] = False
    assert derived_values(episode, at=AT)["child_involved"]


def test_a_date_of_birth_under_18_marks_a_child() -> None:
    screening = example("HealthScreeningOutcome")
    assert not derived_values(screening, at=AT)["child_involved"]
    screening["patient"]["person"]["date_of_birth"] = dt.date(2009, 6, 1)  # 15 at the event
    assert derived_values(screening, at=AT)["child_involved"]
    screening["patient"]["person"]["date_of_birth"] = dt.date(2007, 1, 1)  # 18
    assert not derived_values(screening, at=AT)["child_involved"]


def test_an_episode_without_children_involves_none() -> None:
    episode = example("FamilyHarmEpisodeReport")
    episode["people"] = [p for p in episode["people"] if p["role"] != "child"]
    episode["children_present"] = False
    episode["header"]["sharing"]["child_consulted"] = "not_applicable"
    assert not derived_values(episode, at=AT)["child_involved"]


def test_maori_data_is_what_the_record_holds() -> None:
    concern = example("ReportOfConcern")
    assert derived_values(concern, at=AT)["maori_data"]
    concern["child"]["iwi"] = []
    for person in concern["people"]:
        person["person"]["iwi"] = []
    assert not derived_values(concern, at=AT)["maori_data"]


@pytest.mark.parametrize(
    ("codes", "maori"),
    [
        (["21111"], True),  # level 4, Māori
        (["2"], True),  # level 1
        (["11111", "211"], True),  # one Māori group among others
        (["11111"], False),  # New Zealand European
        (["12", "31"], False),
        ([], False),
        # A label where the schema asks for a code still names Māori.
        (["Māori"], True),
        (["NZ Maori"], True),
        (["New Zealand MAAORI"], True),
        (["European", "Ma\u0304ori"], True),  # the macron as a combining mark
        (["Pacific peoples"], False),
        (["Samoan"], False),
        (["Maoritanian"], False),  # not the word
    ],
)
def test_an_aggregate_broken_down_by_maori_ethnicity_is_maori_data(
    codes: list[str], maori: bool
) -> None:
    """MDS-04, LAW scenario 9: the breakdown says it, whatever the header's flag."""
    counts = example("OutcomeIndicator")
    counts["ethnicity"] = codes
    assert derived_values(counts, at=AT)["maori_data"] is maori
    schema = SCHEMA_SET.latest("OutcomeIndicator")
    found = signal_finder(schema)
    signals = found(counts) if found is not None else None
    assert derived_values(counts, at=AT, signals=signals)["maori_data"] is maori


@pytest.mark.parametrize("tier", RISK_LEVELS)
def test_the_event_raises_the_case_risk_and_never_lowers_it(tier: str) -> None:
    screening = example("HealthScreeningOutcome")
    common, _ = DecisionInput.shared_values(screening, at=AT, case_risk=tier)
    assert common["risk"] == "high"  # strangulation signs
    screening["strangulation_signs"] = False
    common, _ = DecisionInput.shared_values(screening, at=AT, case_risk=tier)
    assert common["risk"] == tier


def test_requester_and_behalf_come_from_the_request() -> None:
    request = example("InformationRequest")
    assert derived_values(request, at=AT)["on_behalf_of"] == "victim"
    response = example("InformationResponse")
    unknown = derived_values(response, at=AT)
    assert (unknown["requester_role"], unknown["on_behalf_of"]) == ("unknown", "unknown")
    facts = RequestFacts("msd", "social_worker", "victim")
    common, addressees = DecisionInput.shared_values(response, at=AT, request=facts)
    assert (common["requester_role"], common["on_behalf_of"]) == ("social_worker", "victim")
    assert addressees == {"msd"}
    proactive = derived_values(example("SafetyPlanUpdate"), at=AT)
    assert proactive["on_behalf_of"] == "agency"


def test_the_lead_is_the_addressee_only_of_records_that_name_none() -> None:
    episode = example("FamilyHarmEpisodeReport")
    _, addressees = DecisionInput.shared_values(episode, at=AT, leads=("safe-whanau",))
    assert addressees == {"safe-whanau"}
    task = example("TaskEvent")
    _, addressees = DecisionInput.shared_values(task, at=AT, leads=("safe-whanau",))
    assert "safe-whanau" not in addressees or task["assigned_to"]["agency_id"] == "safe-whanau"
    response = example("InformationResponse")
    _, addressees = DecisionInput.shared_values(response, at=AT, leads=("safe-whanau",))
    assert addressees == frozenset()


def test_a_scenario_may_not_contradict_what_the_broker_derives(
    tmp_path: Path, engine: Engine
) -> None:
    folder = copy_policies(tmp_path)
    (folder / "tests" / "contradicts.yaml").write_text(
        "cases:\n"
        "  - name: child_involved the event contradicts\n"
        "    event: HealthScreeningOutcome\n"
        "    context: {source: health-nz, recipient: police, child_involved: true}\n"
        "    expect: {outcome: review}\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyValidationError) as caught:
        load_scenarios(folder / "tests", engine)
    assert "the broker computes False from this event" in str(caught.value)


def test_scenarios_are_built_with_the_brokers_derivation(policy: PolicySet, engine: Engine) -> None:
    scenarios = load_scenarios(policy.tests_folder, engine)
    law1b = next(s for s in scenarios if s.name.startswith("LAW 1b: the episode"))
    assert law1b.inp.child_involved
    law4 = next(s for s in scenarios if s.name.startswith("LAW 4: ED"))
    assert law4.inp.risk == "high"


# -- PA-05 -----------------------------------------------------------------------------------

EVENT_NAMES = sorted(s.short_name for s in SCHEMA_SET.events())
EXAMPLES = {name: example(name) for name in EVENT_NAMES}
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
PURPOSES = [
    "fv_risk_needs_assessment",
    "fv_plan_or_response",
    "victim_protection",
    "child_assess_risk_or_need",
    "child_support_or_prevention_plan",
    "care_and_protection",
    "serious_threat",
]


def _released_classes(engine: Engine, name: str, decision: Any) -> set[str]:
    plan = decision.plan
    if plan is None:
        return set()
    return {
        plan.classes[path]
        for path, action in decision.field_actions.items()
        if action != "drop" and path in plan.classes
    }


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(EVENT_NAMES),
    source=st.sampled_from(AGENCIES),
    recipient=st.sampled_from(AGENCIES),
    requester=st.sampled_from(AGENCIES),
    purpose=st.sampled_from(PURPOSES),
    legal_route=st.sampled_from(["fva_s20", "ota_s66", "ota_s66c", "imminent_danger", "unknown"]),
    role=st.sampled_from(REQUESTER_ROLES),
    behalf=st.sampled_from(["person_using_violence", "unknown"]),
    case_risk=st.sampled_from(RISK_LEVELS),
    consent=st.sampled_from(CONSENT),
    consulted=st.sampled_from(CHILD_CONSULTED),
    imminent=st.booleans(),
    participates=st.booleans(),
    lead=st.booleans(),
)
def test_pa05_a_request_for_the_person_using_violence_never_gets_contact_or_location(
    engine: Engine,
    name: str,
    source: str,
    recipient: str,
    requester: str,
    purpose: str,
    legal_route: str,
    role: str,
    behalf: str,
    case_risk: str,
    consent: str,
    consulted: str,
    imminent: bool,
    participates: bool,
    lead: bool,
) -> None:
    """For any event answering a request made on behalf of a person using violence (or a
    request that does not say for whom), whatever the route, purpose, risk or membership, no
    decision keeps, generalises or pseudonymises a contact or location field."""
    record = copy.deepcopy(EXAMPLES[name])
    record["header"]["source_agency"] = source
    record["header"]["sharing"] = {
        **(record["header"]["sharing"] or {}),
        "purpose": purpose,
        "legal_route": legal_route,
        "consent": consent,
        "child_consulted": consulted,
        "imminent_danger": imminent,
    }
    if name == "InformationRequest":
        record["requester_role"], record["on_behalf_of"] = role, behalf
    request = RequestFacts(requester, role, behalf)
    inp = DecisionInput.from_record(
        record,
        recipient,
        at=AT,
        participates=participates,
        lead=lead,
        request=request,
        case_risk=case_risk,
    )
    assert inp.on_behalf_of in ("person_using_violence", "unknown")
    decision = engine.decide(inp)
    leaked = _released_classes(engine, name, decision) & {"contact", "location"}
    assert not leaked, (decision.outcome, decision.rule_ids)


@pytest.mark.parametrize(
    "schema",
    [v for s in SCHEMA_SET.events() for v in SCHEMA_SET.versions(s.name)],
    ids=lambda s: s.label,
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), at=st.dates())
def test_the_signals_found_from_the_schema_derive_what_the_walk_derives(
    schema: Schema, data: st.DataObject, at: dt.date
) -> None:
    """The broker reads the records derived_values needs through the schema's finder
    (signal_finder) rather than walking the event: the same values, for any decoded event."""
    record = decode(encode(schema, data.draw(_records(schema))), schema)
    finder = signal_finder(schema)
    assert finder is not None
    assert derived_values(record, at=at, signals=finder(record)) == derived_values(record, at=at)
