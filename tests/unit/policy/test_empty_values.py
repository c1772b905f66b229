"""A key written with no value, or an empty condition, is rejected at its file:line:column.

In a rule a condition left out means "any", so reading ``participates:`` (YAML null) or
``recipient: {agency: }`` as "not written" would silently widen the rule: the review found
episodes going to an agency not on the case and whole reports of concern going to every agency.
And LAW.md lets no route skip the privileged-material or unconfirmed-status hand-over.

Each case edits a copy of the shipped set; the expected position is where the edited key now
sits (computed from the file, so the assertion is exact).
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from broker._cli import main
from broker.policy import (
    DecisionInput,
    PolicyStore,
    PolicyValidationError,
    compile_policy,
    load_policy_set,
)
from broker.policy._load import _PARTY_KEYS, _WHEN_KEYS, NEVER_EXEMPT
from broker.policy._model import Trigger
from tests.unit.policy.conftest import POLICIES, Edit, copy_policies

FVA = "rules/30-fva-s20.yaml"
ROC = "rules/25-reports-of-concern.yaml"
FORBID = "rules/00-forbid.yaml"
IPP11 = "rules/50-ipp11.yaml"
VOCAB = "vocabulary.yaml"
CORRECTIONS_WHEN = (
    "      recipient: {kind: corrections, status: family_violence_agency}\n"
    "      participates: true\n"
)
NO_VALUE = "has no value: give one, or leave '{0}' out"

# (kind, file, old, new, mark: where the error must point, expected message)
CASES = [
    (
        "flag condition with no value",
        FVA,
        CORRECTIONS_WHEN,
        CORRECTIONS_WHEN.replace("participates: true", "participates:"),
        "participates:\n",
        "'participates' " + NO_VALUE.format("participates"),
    ),
    (
        "flag condition written as null",
        FVA,
        CORRECTIONS_WHEN,
        CORRECTIONS_WHEN.replace("participates: true", "participates: null"),
        "participates: null",
        "'participates' " + NO_VALUE.format("participates"),
    ),
    (
        "agency with no value",
        ROC,
        "recipient: {agency: oranga-tamariki}\n    classes: &everything",
        "recipient: {agency: }\n    classes: &everything",
        "agency: }",
        "'agency' " + NO_VALUE.format("agency"),
    ),
    (
        "word condition with no value",
        FORBID,
        "      on_behalf_of: [person_using_violence, unknown]\n",
        "      on_behalf_of:\n",
        "on_behalf_of:\n",
        "'on_behalf_of' " + NO_VALUE.format("on_behalf_of"),
    ),
    (
        "empty recipient",
        ROC,
        "recipient: {agency: oranga-tamariki}\n    classes: &everything",
        "recipient: {}\n    classes: &everything",
        "recipient: {}",
        "an empty 'recipient' means any case; name a condition, or leave 'recipient' out",
    ),
    (
        "recipient with no value",
        ROC,
        "recipient: {agency: oranga-tamariki}\n    classes: &everything",
        "recipient:\n    classes: &everything",
        "recipient:\n    classes: &everything",
        "'recipient' " + NO_VALUE.format("recipient"),
    ),
    (
        "empty list of recipient kinds",
        FORBID,
        "recipient: {kind: regional_hub}",
        "recipient: {kind: []}",
        "[]}",
        "an empty list of agency kinds matches nothing; leave it out",
    ),
    (
        "when with no value",
        IPP11,
        "    when:\n      event: [FamilyHarmEpisodeReport, RiskAssessment]\n"
        "      recipient: {can_act: true}\n      risk: high\n",
        "    when:\n",
        "when:\n    classes:",
        "'when' " + NO_VALUE.format("when"),
    ),
    (
        "empty when",
        IPP11,
        "    when:\n      event: [FamilyHarmEpisodeReport, RiskAssessment]\n"
        "      recipient: {can_act: true}\n      risk: high\n",
        "    when: {}\n",
        "when: {}",
        "an empty 'when' means any case; name a condition, or leave 'when' out",
    ),
    (
        "event with no value",
        IPP11,
        "      event: [FamilyHarmEpisodeReport, RiskAssessment]\n",
        "      event:\n",
        "event:\n",
        "'event' " + NO_VALUE.format("event"),
    ),
    (
        "empty list of events",
        IPP11,
        "      event: [FamilyHarmEpisodeReport, RiskAssessment]\n",
        "      event: []\n",
        "[]\n",
        "an empty list of event types matches nothing; leave it out",
    ),
    (
        "empty list of purposes",
        IPP11,
        "    purpose: serious_threat\n",
        "    purpose: []\n",
        "[]\n",
        "an empty list of purposes matches nothing; leave it out",
    ),
    (
        "purpose with no value",
        IPP11,
        "    purpose: serious_threat\n",
        "    purpose:\n",
        "purpose:\n",
        "'purpose' " + NO_VALUE.format("purpose"),
    ),
    (
        "legal basis with no value",
        IPP11,
        "    legal_basis: ipp11_serious_threat\n",
        "    legal_basis:\n",
        "legal_basis:\n",
        "'legal_basis' " + NO_VALUE.format("legal_basis"),
    ),
    (
        "effect with no value",
        IPP11,
        "    effect: permit\n    description: >\n      Outside",
        "    effect:\n    description: >\n      Outside",
        "effect:\n    description: >\n      Outside",
        "'effect' " + NO_VALUE.format("effect"),
    ),
    (
        "valid_until with no value",
        FVA,
        "valid_until: 2024-12-31",
        "valid_until:",
        "valid_until:",
        "'valid_until' " + NO_VALUE.format("valid_until"),
    ),
    (
        "obligations with no value",
        "rules/20-ota-s66.yaml",
        "    obligations: [tag_no_criminal_use]\n",
        "    obligations:\n",
        "obligations:\n",
        "'obligations' " + NO_VALUE.format("obligations"),
    ),
    (
        "forbid classes with no value",
        FORBID,
        "    classes: [contact, location]\n",
        "    classes:\n",
        "classes:\n",
        "'classes' " + NO_VALUE.format("classes"),
    ),
    (
        "forbid fields as an empty list",
        FORBID,
        '    fields: ["items[].summary", reason_text]\n',
        "    fields: []\n",
        "[]\n",
        "an empty list of fields names nothing to withhold; leave it out",
    ),
    (
        "field with no action",
        FVA,
        "      exclusion_zones: keep",
        "      exclusion_zones:",
        "exclusion_zones:",
        "'exclusion_zones' has no action: give one, or leave 'exclusion_zones' out",
    ),
    (
        "exempt from privileged material",
        VOCAB,
        "  - id: fva_s20\n",
        "  - id: fva_s20\n    exempt_triggers: [privileged_material]\n",
        "privileged_material]",
        "route 'fva_s20' cannot be exempt from privileged_material: LAW.md FVA-08 (data "
        "classed privileged or suppressed goes to review, never automatic share)",
    ),
    (
        "exempt from an unconfirmed status",
        VOCAB,
        "  - id: fva_s20\n",
        "  - id: fva_s20\n    exempt_triggers: [child_not_consulted, recipient_status_unconfirmed]\n",
        "recipient_status_unconfirmed]",
        "route 'fva_s20' cannot be exempt from recipient_status_unconfirmed: LAW.md FVA-01 "
        '(unknown status is never "allowed")',
    ),
    (
        "imminent danger exempt from privileged material",
        VOCAB,
        "consent_refused_below_high, maori_data_beyond_case]\n  - id: ota_s66\n",
        "consent_refused_below_high, maori_data_beyond_case, privileged_material]\n"
        "  - id: ota_s66\n",
        "privileged_material]\n  - id: ota_s66\n",
        "route 'imminent_danger' cannot be exempt from privileged_material: LAW.md FVA-08",
    ),
    (
        "exempt_triggers with no value",
        VOCAB,
        "  - id: fva_s20\n",
        "  - id: fva_s20\n    exempt_triggers:\n",
        'exempt_triggers:\n    description: "FVA',
        "'exempt_triggers' " + NO_VALUE.format("exempt_triggers"),
    ),
]


@pytest.mark.parametrize(
    ("kind", "file", "old", "new", "mark", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_each_empty_value_is_positioned(
    edit: Edit,
    policy_copy: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    file: str,
    old: str,
    new: str,
    mark: str,
    message: str,
) -> None:
    path, line, column = edit(file, old, new, mark)  # type: ignore[call-arg]
    assert main(["policy", "validate", str(policy_copy)]) == 1
    lines = capsys.readouterr().err.splitlines()
    expected = f"{path}:{line}:{column}: {message}"
    assert any(entry.startswith(expected) for entry in lines), (expected, lines)
    for entry in lines[:-1]:
        assert re.match(r"^[^:]+:\d+:\d+: ", entry), entry


def test_the_reviewers_null_conditions_no_longer_widen(edit: Edit, policy_copy: Path) -> None:
    """The review's reproduction: both edits are refused, and the running policy stays."""
    store = PolicyStore((), require_approvals=False)
    working = store.load(policy_copy)
    edit(FVA, CORRECTIONS_WHEN, CORRECTIONS_WHEN.replace("participates: true", "participates:"))
    edit(
        ROC,
        "recipient: {agency: oranga-tamariki}\n    classes: &everything",
        "recipient: {agency: }\n    classes: &everything",
    )
    assert store.load(policy_copy) is working
    assert isinstance(store.last_error, PolicyValidationError)
    assert len(store.last_error.errors) == 2
    decision = working.decide(
        DecisionInput(
            event_type="nz.tiaki.ReportOfConcern",
            source="police",
            recipient="msd",
            purpose="child_assess_risk_or_need",
            participates=True,
            at=dt.date(2025, 3, 5),
        )
    )
    assert not decision.shares


def test_the_shipped_exemptions_still_load() -> None:
    """Imminent danger and OTA s66 keep the exemptions docs/policy.md and LAW.md give them."""
    routes = {r.id: r for r in load_policy_set(POLICIES).vocabulary.routes}
    allowed = set(Trigger) - {Trigger(t) for t in NEVER_EXEMPT}
    assert routes["imminent_danger"].exempt_triggers == allowed
    assert routes["ota_s66"].exempt_triggers == allowed
    assert set(NEVER_EXEMPT) == {
        "privileged_material",
        "recipient_status_unconfirmed",
        "justification_missing",
        "recipient_overseas",
    }


def test_a_privileged_suppressed_episode_still_goes_to_review() -> None:
    """FVA-08 on the shipped set: the review's s9 input is held for a person."""
    engine = compile_policy(load_policy_set(POLICIES))
    decision = engine.decide(
        DecisionInput(
            event_type="nz.tiaki.FamilyHarmEpisodeReport",
            source="police",
            recipient="te-whare-tiaki",
            purpose="fv_plan_or_response",
            at=dt.date(2025, 3, 5),
            participates=True,
            suppression_order=True,
            privileged=True,
            schema_version=2,
            child_consulted="yes",
        )
    )
    assert decision.outcome.value == "review"


# --- property: every condition key, given an empty value, is refused at that key ------------

_yaml = YAML()
_yaml.width = 4096
#: Values a half-finished edit leaves: null, an empty list, an empty mapping, an empty string.
EMPTY: tuple[Any, ...] = (None, [], {}, "")
#: Rule-level keys that decide who receives what (the rest only narrow or annotate).
RULE_KEYS = ("effect", "purpose", "legal_basis", "valid_from", "valid_until", "obligations", "when")


def _rules() -> list[tuple[str, int]]:
    out = []
    for path in sorted((POLICIES / "rules").glob("*.yaml")):
        data = _yaml.load(path.read_text(encoding="utf-8"))
        out.extend((f"rules/{path.name}", index) for index in range(len(data["rules"])))
    return out


#: (where the key goes, key): on the rule, under ``when``, or under ``when.source``/``recipient``.
PLACES = (
    [("rule", key) for key in RULE_KEYS]
    + [("when", key) for key in sorted(_WHEN_KEYS)]
    + [(side, key) for side in ("source", "recipient") for key in sorted(_PARTY_KEYS)]
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield copy_policies(Path(folder))


def _empty_value(value: Any) -> Any:
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return CommentedMap()
    return value


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rule=st.sampled_from(_rules()), place=st.sampled_from(PLACES), empty=st.sampled_from(EMPTY))
def test_an_empty_condition_is_always_refused_at_its_key(
    scratch: Path, rule: tuple[str, int], place: tuple[str, str], empty: Any
) -> None:
    """For any rule and any condition key of the language, null/[]/{}/"" fails at that key.

    Refusal is the stronger of the two properties the review allows (refused, or cannot
    widen): the set never loads, so nothing it would decide can be wider than before.
    """
    relative, index = rule
    where, key = place
    path = scratch / relative
    original = (POLICIES / relative).read_text(encoding="utf-8")
    data = _yaml.load(original)
    body = data["rules"][index]
    node = body
    if where != "rule":
        if not isinstance(body.get("when"), CommentedMap):
            body["when"] = CommentedMap()
        node = body["when"]
        if where != "when":
            if not isinstance(node.get(where), CommentedMap):
                node[where] = CommentedMap()
            node = node[where]
    node[key] = _empty_value(empty)
    out = StringIO()
    _yaml.dump(data, out)
    text = out.getvalue()
    # Where the key sits in the file written, found by parsing it again (not by the loader).
    again = _yaml.load(text)["rules"][index]
    holder = again if where == "rule" else again["when"]
    if where not in ("rule", "when"):
        holder = holder[where]
    key_at = holder.lc.key(key)
    value_at = holder.lc.value(key)
    spots = {(key_at[0] + 1, key_at[1] + 1), (value_at[0] + 1, value_at[1] + 1)}
    path.write_text(text, encoding="utf-8")
    try:
        with pytest.raises(PolicyValidationError) as caught:
            load_policy_set(scratch)
    finally:
        path.write_text(original, encoding="utf-8")
    found = {(e.line, e.column) for e in caught.value.errors if Path(e.path) == path}
    assert found & spots, (relative, index, where, key, empty, spots, caught.value.errors)


def test_the_scratch_copy_is_put_back(scratch: Path) -> None:
    """The property edits one file at a time and restores it: the copy still loads."""
    load_policy_set(scratch)
