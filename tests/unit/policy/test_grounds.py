"""LAW.md FVA-03 and OT-04: the discloser's grounds travel with a disclosure, or a person decides.

On the FVA s20 and OTA s66C routes the recipient always receives the header's sharing
``justification`` and ``accountable_role`` (a request's own too), whatever the permit's plan
or a field-level forbid says; a disclosure or request without them (null or blank) goes to
review as ``justification_missing``, which no route may be exempt from. Imminent danger is
outside it: its minimal disclosure to Police goes at once and a person reviews after.
``child_consulted: inappropriate`` without ``child_not_consulted_reason`` goes to review as
``child_not_consulted_reason_missing``.
"""

from __future__ import annotations

import copy
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
    Engine,
    Outcome,
    PolicySet,
    PolicyValidationError,
    Pseudonymiser,
    apply_field_plan,
    compile_policy,
    load_policy_set,
)
from broker.policy._model import CHILD_CONSULTED, CONSENT, GROUNDS_ROUTES
from tests.unit.policy.conftest import SCHEMAS, TEST_SECRET, Edit

AT = dt.date(2025, 3, 5)
FVA = "rules/30-fva-s20.yaml"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))
PSEUDONYMS = Pseudonymiser(TEST_SECRET)
JUSTIFICATION = "Synthetic: the victim is at risk on release."
ROLE = "Synthetic probation manager"


def sharing(**values: Any) -> dict[str, Any]:
    """A whole header sharing context (synthetic), with ``values`` changed."""
    return {
        "purpose": "victim_protection",
        "legal_route": "fva_s20",
        "justification": JUSTIFICATION,
        "accountable_role": ROLE,
        "consent": "not_sought_unsafe",
        "child_consulted": "not_applicable",
        "child_not_consulted_reason": None,
        "provenance": "direct",
        "imminent_danger": False,
        "contains_maori_data": False,
        "privileged": False,
        "suppression_order": False,
    } | values


def example(policy: PolicySet, name: str) -> dict[str, Any]:
    schema = policy.schemas.latest(f"nz.tiaki.{name}")
    record: dict[str, Any] = from_json(
        schema, json.loads((SCHEMAS / "examples" / f"{name}.json").read_text())
    )
    return record


def release(policy: PolicySet, **values: Any) -> dict[str, Any]:
    record = copy.deepcopy(example(policy, "CorrectionsReleaseNotification"))
    record["header"]["sharing"] = sharing(**values)
    return record


def decide(engine: Engine, record: dict[str, Any], recipient: str, **kw: Any) -> Any:
    return engine.decide(DecisionInput.from_record(record, recipient, at=AT, **kw))


def test_fva_03_the_release_notice_carries_justification_and_accountable_role(
    policy: PolicySet, engine: Engine
) -> None:
    """The review's reproduction: both were dropped (class narrative, header field plan)."""
    record = release(policy)
    decision = decide(engine, record, "safe-whanau", participates=True)
    assert decision.outcome is Outcome.SHARE_MINIMISED
    assert decision.field_actions["header.sharing.justification"] == "keep"
    assert decision.field_actions["header.sharing.accountable_role"] == "keep"
    body = apply_field_plan(record, decision, PSEUDONYMS)
    assert body["header"]["sharing"]["justification"] == JUSTIFICATION
    assert body["header"]["sharing"]["accountable_role"] == ROLE
    # Nothing else of the header's sharing context is released by this.
    assert set(body["header"]["sharing"]) <= {
        "justification",
        "accountable_role",
        "purpose",
        "legal_route",
        "consent",
        "provenance",
        "suppression_order",
    }
    assert "route fva_s20" in decision.plan.sources["header.sharing.justification"]


@pytest.mark.parametrize(
    ("justification", "role"),
    [
        (None, None),
        (None, ROLE),
        (JUSTIFICATION, None),
        ("", ROLE),
        ("  \t", ROLE),
        (JUSTIFICATION, " "),
    ],
)
def test_fva_03_no_justification_or_accountable_role_goes_to_review(
    policy: PolicySet, engine: Engine, justification: str | None, role: str | None
) -> None:
    record = release(policy, justification=justification, accountable_role=role)
    decision = decide(engine, record, "safe-whanau", participates=True)
    assert decision.outcome is Outcome.REVIEW
    assert decision.queue == "review"
    assert "justification_missing" in decision.reason_codes
    assert decision.route == "fva_s20"


def test_fva_03_a_hand_built_input_fails_closed(engine: Engine) -> None:
    inp = DecisionInput(
        "nz.tiaki.CorrectionsReleaseNotification",
        "corrections",
        "safe-whanau",
        "victim_protection",
        AT,
        participates=True,
    )
    assert engine.decide(inp).outcome is Outcome.REVIEW


def test_fva_03_imminent_danger_goes_at_once_without_grounds(
    policy: PolicySet, engine: Engine
) -> None:
    record = copy.deepcopy(example(policy, "HealthScreeningOutcome"))
    record["header"]["sharing"] = sharing(
        justification=None, accountable_role=None, imminent_danger=True
    )
    decision = decide(engine, record, "police")
    assert decision.shares
    assert decision.route == "imminent_danger"
    assert "review_within_24h" in decision.obligations


def test_fva_03_a_request_carries_its_grounds_and_without_them_goes_to_review(
    policy: PolicySet, engine: Engine
) -> None:
    record = copy.deepcopy(example(policy, "InformationRequest"))
    holders = [ref["agency_id"] for ref in record["holders"]]
    decision = decide(engine, record, holders[0], purpose="victim_protection")
    assert decision.shares, decision.reason_codes
    body = apply_field_plan(record, decision, PSEUDONYMS)
    assert body["justification"] == record["justification"]
    assert body["accountable_role"] == record["accountable_role"]
    record["justification"] = "   "
    decision = decide(engine, record, holders[0], purpose="victim_protection")
    assert decision.outcome is Outcome.REVIEW
    assert "justification_missing" in decision.reason_codes


def test_fva_03_a_rule_that_drops_the_grounds_is_overridden(edit: Edit, policy_copy: Path) -> None:
    edit(
        FVA,
        "      person.identifiers: pseudonymise\n    obligations: [record_justification]",
        "      person.identifiers: pseudonymise\n      header.sharing.justification: drop\n"
        "      header.sharing.accountable_role: mask\n      header.sharing: drop\n"
        "    obligations: [record_justification]",
    )
    edit(
        "rules/00-forbid.yaml",
        "rules:\n",
        "rules:\n  - id: forbid-narrative-to-ngos\n    effect: forbid\n"
        "    description: 'Test only: no narrative to specialist services.'\n"
        "    law: [GUIDE-01]\n    reason: health_needs_person\n"
        "    when: {recipient: {kind: specialist_ngo}}\n    classes: [narrative]\n",
    )
    policy = load_policy_set(policy_copy)
    engine = compile_policy(policy)
    record = release(policy)
    decision = decide(engine, record, "safe-whanau", participates=True)
    assert decision.shares
    assert "forbid-narrative-to-ngos" in decision.rule_ids  # the forbid applied, elsewhere
    body = apply_field_plan(record, decision, PSEUDONYMS)
    assert body["header"]["sharing"] == {"justification": JUSTIFICATION, "accountable_role": ROLE}


def test_fva_03_no_route_may_be_exempt_from_justification_missing(
    edit: Edit, policy_copy: Path
) -> None:
    _, line, _ = edit(
        "vocabulary.yaml",
        '  - id: fva_s20\n    description: "FVA s20: between family violence agencies and social '
        'services practitioners, for an s20 purpose"\n',
        '  - id: fva_s20\n    description: "FVA s20: between family violence agencies and social '
        'services practitioners, for an s20 purpose"\n    exempt_triggers: [justification_missing]\n',
        "exempt_triggers: [justification_missing]",
    )
    with pytest.raises(PolicyValidationError) as caught:
        load_policy_set(policy_copy)
    assert f"vocabulary.yaml:{line}:" in str(caught.value)
    assert "cannot be exempt from justification_missing" in str(caught.value)
    assert "FVA-03" in str(caught.value)


@pytest.mark.parametrize(
    ("consulted", "reason", "held"),
    [
        ("inappropriate", None, True),
        ("inappropriate", " ", True),
        ("inappropriate", "Synthetic: disclosure would put the child at risk.", False),
        ("yes", None, False),
        ("impracticable", None, False),
    ],
)
def test_ot_04_inappropriate_needs_a_reason(
    policy: PolicySet, engine: Engine, consulted: str, reason: str | None, held: bool
) -> None:
    """A school's copy of the safety plan (OTA s66C) is about a child."""
    record = copy.deepcopy(example(policy, "SafetyPlanUpdate"))
    record["header"]["source_agency"] = "safe-whanau"
    record["header"]["sharing"] = sharing(
        purpose="child_support_or_prevention_plan",
        legal_route="ota_s66c",
        child_consulted=consulted,
        child_not_consulted_reason=reason,
    )
    decision = decide(engine, record, "school-central", participates=True)
    assert decision.route == "ota_s66c"
    assert ("child_not_consulted_reason_missing" in decision.reason_codes) is held
    assert (decision.outcome is Outcome.REVIEW) is held


# --- property: a share on a grounds route always carries its grounds -------------------------

_PURPOSES = ["victim_protection", "fv_plan_or_response", "child_support_or_prevention_plan"]
_BLANK = st.sampled_from([None, "", "   ", "\n"])
_TEXT = st.text(min_size=1, max_size=20).filter(lambda s: bool(s.strip()))


def _grounds_in(body: dict[str, Any], name: str) -> bool:
    """The body states ``name`` in its header's sharing context, or (a request) its own."""
    header = ((body.get("header") or {}).get("sharing") or {}).get(name)
    return not _blank(header) or not _blank(body.get(name))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fva_03_property_no_share_on_a_grounds_route_without_grounds(
    policy: PolicySet, engine: Engine, path: Path, data: st.DataObject
) -> None:
    record = copy.deepcopy(example(policy, path.stem))
    justification = data.draw(st.one_of(_BLANK, _TEXT), "justification")
    role = data.draw(st.one_of(_BLANK, _TEXT), "accountable_role")
    record["header"]["sharing"] = sharing(
        # Mostly the purposes the FVA s20 and OTA s66C permits serve, so many draws share.
        purpose=data.draw(
            st.sampled_from(_PURPOSES) | st.sampled_from(sorted(policy.vocabulary.purposes)),
            "purpose",
        ),
        legal_route=data.draw(st.sampled_from([r.id for r in policy.vocabulary.routes])),
        justification=justification,
        accountable_role=role,
        consent=data.draw(st.sampled_from(CONSENT)),
        child_consulted=data.draw(st.sampled_from(CHILD_CONSULTED)),
        child_not_consulted_reason=data.draw(st.one_of(_BLANK, _TEXT)),
        imminent_danger=data.draw(st.booleans(), "imminent_danger"),
    )
    if path.stem == "InformationRequest":  # a request may state its grounds itself
        record["justification"] = data.draw(st.sampled_from(["", " "]) | _TEXT)
        record["accountable_role"] = data.draw(st.sampled_from(["", " "]) | _TEXT)
        justification = justification if not _blank(justification) else record["justification"]
        role = role if not _blank(role) else record["accountable_role"]
    stated = not _blank(justification) and not _blank(role)
    for recipient in sorted(a.id for a in policy.registry.agencies):
        decision = decide(
            engine,
            record,
            recipient,
            participates=data.draw(st.booleans()),
            lead=data.draw(st.booleans()),
            case_risk=data.draw(st.sampled_from(["unknown", "low", "high"])),
        )
        if not decision.shares:
            continue
        if decision.route in GROUNDS_ROUTES:
            assert stated, (recipient, decision.rule_ids)
            body = apply_field_plan(record, decision, PSEUDONYMS)
            assert _grounds_in(body, "justification"), (recipient, decision.rule_ids)
            assert _grounds_in(body, "accountable_role"), (recipient, decision.rule_ids)


def _blank(value: Any) -> bool:
    return not (isinstance(value, str) and value.strip())
