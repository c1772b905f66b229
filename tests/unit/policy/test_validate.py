"""``tiaki policy validate``: each kind of mistake, reported at its exact file:line:column.

Each case edits one file of a copy of the shipped set; the expected position is where the edited
text now sits (computed from the file, so the assertion is exact), and the message names the
mistake and, for a misspelling, the closest correct word.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker._cli import main
from broker.policy import PolicyStore, PolicyValidationError, load_policy_set
from tests.unit.policy.conftest import Edit

FVA = "rules/30-fva-s20.yaml"

# (kind, file, old, new, mark (None: new), expected message)
CASES = [
    (
        "misspelt field",
        FVA,
        "      exclusion_zones: keep",
        "      exclusion_zone: keep",
        "exclusion_zone:",
        "unknown field 'exclusion_zone' in these event types (did you mean 'exclusion_zones'?)",
    ),
    (
        "misspelt class",
        FVA,
        "      narrative: drop\n    fields:\n      items[].category",
        "      narative: drop\n    fields:\n      items[].category",
        "narative:",
        "unknown field class 'narative' (did you mean 'narrative'?)",
    ),
    (
        "misspelt purpose",
        FVA,
        "purpose: victim_protection\n",
        "purpose: victim_protektion\n",
        "victim_protektion",
        "unknown purpose 'victim_protektion' (did you mean 'victim_protection'?)",
    ),
    (
        # ``any`` stands alone: inside a list it would read as one purpose among others.
        "any among purposes",
        FVA,
        "purpose: victim_protection\n",
        "purpose: [victim_protection, any]\n",
        "any]",
        "unknown purpose 'any'",
    ),
    (
        "misspelt agency",
        FVA,
        "{agency: corrections,",
        "{agency: correction,",
        "correction,",
        "unknown agency 'correction' (did you mean 'corrections'?)",
    ),
    (
        "misspelt event type",
        FVA,
        "event: CorrectionsReleaseNotification",
        "event: CorrectionReleaseNotification",
        "CorrectionReleaseNotification",
        "unknown event type 'CorrectionReleaseNotification' (did you mean 'CorrectionsReleaseNotification'?)",
    ),
    (
        "permit without legal basis",
        "rules/50-ipp11.yaml",
        "    legal_basis: ipp11_serious_threat\n",
        "",
        "id: ipp11-serious-threat",
        "permit 'ipp11-serious-threat' needs a legal_basis (every permit names one)",
    ),
    (
        "unknown legal basis",
        "rules/50-ipp11.yaml",
        "legal_basis: ipp11_serious_threat",
        "legal_basis: ipp11_serous_threat",
        "ipp11_serous_threat",
        "unknown legal basis 'ipp11_serous_threat' (did you mean 'ipp11_serious_threat'?)",
    ),
    (
        "duplicate rule id",
        FVA,
        "  - id: sam-outcome-to-participants",
        "  - id: sam-task-to-assignee",
        "sam-task-to-assignee\n    effect: permit\n    description: Agencies",
        "duplicate rule id 'sam-task-to-assignee' (first at ",
    ),
    (
        "bad date",
        FVA,
        "valid_until: 2024-12-31",
        "valid_until: 2024-13-31",
        "2024-13-31",
        "bad date '2024-13-31' for 'valid_until': expected YYYY-MM-DD",
    ),
    (
        "valid_until before valid_from",
        FVA,
        "valid_until: 2024-12-31",
        "valid_until: 2023-12-31",
        "2023-12-31",
        "valid_until is before valid_from",
    ),
    (
        "unknown transform",
        FVA,
        "residence_address: generalise:suburb",
        "residence_address: generalise:suburbs",
        "generalise:suburbs",
        "unknown field action 'generalise:suburbs' (did you mean 'generalise:suburb'?)",
    ),
    (
        "generalise a non-date to a year",
        FVA,
        "person.date_of_birth: generalise:year",
        "release_type: generalise:year",
        "generalise:year",
        "generalise:year applies to a date field; 'release_type' is enum nz.tiaki.ReleaseType",
    ),
    (
        "unknown key in a rule",
        "rules/50-ipp11.yaml",
        "    when:\n",
        "    wehn:\n",
        "wehn:",
        "unknown key 'wehn' in a rule (did you mean 'when'?)",
    ),
    (
        "forbid without reason",
        "rules/00-forbid.yaml",
        "    reason: unit_records_to_hub\n",
        "",
        "id: forbid-unit-records-to-hubs",
        "forbid 'forbid-unit-records-to-hubs' needs a reason code (a decision records why)",
    ),
    (
        "unknown obligation",
        FVA,
        "obligations: [record_justification]",
        "obligations: [record_justfication]",
        "record_justfication",
        "unknown obligation 'record_justfication' (did you mean 'record_justification'?)",
    ),
    (
        "FVA route without the recipient's status",
        "rules/30-fva-s20.yaml",
        "      recipient: {kind: social_development, status: family_violence_agency}",
        "      recipient: {kind: social_development}",
        "id: police-history-to-msd-housing",
        "permit 'police-history-to-msd-housing' on route fva_s20 must require the recipient's status to be one of: family_violence_agency, social_services_practitioner_employer (LAW.md FVA-01)",
    ),
    (
        "bad YAML",
        "rules/50-ipp11.yaml",
        "    purpose: serious_threat\n",
        "    purpose: [serious_threat\n",
        "when:",
        "bad YAML: ",
    ),
    (
        "misspelt agency in a scenario",
        "tests/routes.yaml",
        "recipient: msd, purpose: serious_threat",
        "recipient: mds, purpose: serious_threat",
        "mds,",
        "unknown agency 'mds' (did you mean 'msd'?)",
    ),
    (
        # A list is not a purpose: refused where it is written, not hashed into a traceback.
        "list for a scenario's purpose",
        "tests/routes.yaml",
        "recipient: msd, purpose: serious_threat",
        "recipient: msd, purpose: [serious_threat]",
        "[serious_threat]",
        "'purpose' must be one word, not ['serious_threat']",
    ),
    (
        # Once passed over as "no recipient given", then decided for a recipient named '[]'.
        "empty list for a scenario's recipient",
        "tests/routes.yaml",
        "recipient: msd, purpose: serious_threat",
        "recipient: [], purpose: serious_threat",
        "[],",
        "'recipient' must be one word, not []",
    ),
    (
        "mapping for a scenario's lead",
        "tests/routes.yaml",
        "recipient: msd, purpose: serious_threat",
        "recipient: msd, lead: {agency: msd}, purpose: serious_threat",
        "{agency: msd}",
        "'lead' must be true or false, not {'agency': 'msd'}",
    ),
    (
        # A scenario is decided on an event the broker could receive: the context's purpose
        # goes into the header, and 'monitoring' is an aggregate request's, not an event's.
        "scenario purpose no event can carry",
        "tests/routes.yaml",
        "{source: police, recipient: msd, purpose: serious_threat, participates: true}",
        "{source: police, recipient: msd, purpose: monitoring, participates: true}",
        "{source: police, recipient: msd, purpose: monitoring",
        "the context makes an event the broker would refuse: nz.tiaki.",
    ),
    # Item selectors (``people[role=child].person``): each mistake named where it is.
    (
        "misspelt selector value",
        FVA,
        "      people[role=child|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "      people[role=chlid|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "people[role=chlid|",
        "'chlid' is not a role of 'people' (did you mean 'child'?)",
    ),
    (
        "selector on a field the items lack",
        FVA,
        "      people[role=child|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "      people[rol=child|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "people[rol=child|other_whanau|unknown]",
        "the items of 'people' have no field 'rol' (did you mean 'role'?)",
    ),
    (
        "selector on a field that is not a list",
        FVA,
        "      people[role=child|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "      location[role=child].suburb: drop\n      people[role=child|other_whanau|unknown].person.date",
        "location[role=child]",
        "'location' is not a list of records in these event types",
    ),
    (
        "two selecting fields on one list",
        FVA,
        "      people[role=child|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "      people[relationship_to_victim=child].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "people[role=child|other_whanau|unknown].person.date",
        "'people' items are already picked by 'relationship_to_victim' in this rule",
    ),
    (
        "selector after a selector",
        FVA,
        "      people[role=child|other_whanau|unknown].person: drop\n      people[role=child|other_whanau|unknown].person.date",
        "      people[role=child|other_whanau|unknown].person.identifiers[scheme=nhi].value: drop\n      people[role=child|other_whanau|unknown].person.date",
        "people[role=child|other_whanau|unknown].person.identifiers",
        "one [field=value] selector per path",
    ),
    (
        "selector in a forbid",
        "rules/00-forbid.yaml",
        'fields: ["items[].summary", reason_text]',
        'fields: ["items[].summary", reason_text, "people[role=child].person"]',
        '"people[role=child].person"',
        "a forbid withholds a field from every item; [field=value] belongs in a permit's fields",
    ),
]


@pytest.mark.parametrize(
    ("kind", "file", "old", "new", "mark", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_each_mistake_is_positioned(
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
    if kind == "bad YAML":
        line, column = line, column + 4  # the parser stops at the key after the open list
    assert main(["policy", "validate", str(policy_copy)]) == 1
    lines = capsys.readouterr().err.splitlines()
    expected = f"{path}:{line}:{column}: {message}"
    assert any(entry.startswith(expected) for entry in lines), (expected, lines)
    assert lines[-1].startswith("tiaki: ")
    for entry in lines[:-1]:
        assert re.match(r"^[^:]+:\d+:\d+: ", entry), entry


def test_overlap_is_detected_at_compile_time(
    edit: Edit, policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forbid = (
        "\n  - id: forbid-all-safety-plans\n    effect: forbid\n    reason: unit_records_to_hub\n"
        "    when: {event: SafetyPlanUpdate}\n"
    )
    forbids = policy_copy / "rules" / "00-forbid.yaml"
    forbids.write_text(forbids.read_text() + forbid)
    text = (policy_copy / FVA).read_text()
    offset = text.index("id: safety-plan-to-participants")
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    assert main(["policy", "validate", str(policy_copy)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{policy_copy / FVA}:{line}:{column}: permit 'safety-plan-to-participants' can never apply: "
        f"forbid 'forbid-all-safety-plans' (at {forbids}:"
    ) in err


def test_every_fault_is_listed_not_only_the_first(edit: Edit, policy_copy: Path) -> None:
    edit(FVA, "exclusion_zones: keep", "exclusion_zone: keep", None)  # type: ignore[call-arg]
    edit(FVA, "valid_until: 2024-12-31", "valid_until: 2024-13-31", None)  # type: ignore[call-arg]
    with pytest.raises(PolicyValidationError) as caught:
        load_policy_set(policy_copy)
    assert len(caught.value.errors) == 2
    assert "(and 1 more)" in str(caught.value)


def test_missing_folder_is_positioned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(tmp_path / "nowhere")]) == 1
    assert (
        f"{tmp_path / 'nowhere' / 'policy.yaml'}:1:1: cannot read file" in capsys.readouterr().err
    )


def test_a_broken_file_never_replaces_a_working_policy(edit: Edit, policy_copy: Path) -> None:
    store = PolicyStore((), require_approvals=False)
    working = store.load(policy_copy)
    edit(FVA, "exclusion_zones: keep", "exclusion_zones: kep", None)  # type: ignore[call-arg]
    assert store.load(policy_copy) is working
    assert store.engine is working
    assert isinstance(store.last_error, PolicyValidationError)
    assert "unknown field action 'kep'" in str(store.last_error)


def test_with_nothing_to_fall_back_on_the_error_is_raised(edit: Edit, policy_copy: Path) -> None:
    edit(FVA, "exclusion_zones: keep", "exclusion_zones: kep", None)  # type: ignore[call-arg]
    with pytest.raises(PolicyValidationError):
        PolicyStore((), require_approvals=False).load(policy_copy)
