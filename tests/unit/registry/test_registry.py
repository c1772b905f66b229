"""The agency registry: the shipped file is valid, and each kind of fault is reported at
file:line:column with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.registry import AgencyKind, RegistryError, StatusKind, load_registry

ROOT = Path(__file__).resolve().parents[3]

GOOD_AGENCY = """\
  - id: police
    name: New Zealand Police
    kind: police
    region: national
    statutory:
      family_violence_agency: {status: confirmed, evidence: "Family Violence Act 2018 s19"}
      child_welfare_protection_agency: {status: confirmed, evidence: "Oranga Tamariki Act s2"}
      social_services_practitioner_employer: {status: no}
"""


def write(
    tmp_path: Path, agencies: str, header: str = "version: 1\nregions: [canterbury]\nagencies:\n"
) -> Path:
    path = tmp_path / "agencies.yaml"
    path.write_text(header + agencies, encoding="utf-8")
    return path


def test_shipped_registry_has_every_required_participant() -> None:
    registry = load_registry(ROOT / "policies" / "agencies.yaml")
    kinds = {a.kind for a in registry.agencies}
    assert {
        AgencyKind.POLICE,
        AgencyKind.CHILD_WELFARE,
        AgencyKind.CORRECTIONS,
        AgencyKind.HEALTH,
        AgencyKind.SOCIAL_DEVELOPMENT,
        AgencyKind.EDUCATION,
        AgencyKind.SPECIALIST_NGO,
        AgencyKind.KAUPAPA_MAORI,
        AgencyKind.REGIONAL_HUB,
    } <= kinds
    assert registry.hub_regions == ["canterbury"]
    police = registry.get("police")
    assert police is not None
    assert police.has_status(StatusKind.FAMILY_VIOLENCE_AGENCY)


def test_unconfirmed_status_counts_as_unknown() -> None:
    hub = load_registry(ROOT / "policies" / "agencies.yaml").get("canterbury-hub")
    assert hub is not None
    assert not hub.has_status(StatusKind.FAMILY_VIOLENCE_AGENCY)


@pytest.mark.parametrize(
    ("replace", "by", "line", "column", "reason"),
    [
        ("kind: police", "kind: polise", 6, 5, "agencies[0].kind: Input should be"),
        ("region: national", "region: otago", 7, 5, "unknown region 'otago'"),
        ("id: police", "id: Police!", 4, 5, "agencies[0].id: String should match pattern"),
        ("id: police", "id: broker", 4, 5, "reserved for Tiaki's own principals"),
        (
            '{status: confirmed, evidence: "Family Violence Act 2018 s19"}',
            "{status: confirmed}",
            9,
            7,
            "a confirmed status needs its evidence",
        ),
        (
            "      social_services_practitioner_employer: {status: no}\n",
            "",
            8,
            5,
            "statutory status missing for: social_services_practitioner_employer",
        ),
        (
            "{status: no}",
            "{status: maybe}",
            11,
            47,
            "status: Input should be 'confirmed', 'unconfirmed' or 'no'",
        ),
        (
            "region: national",
            "region: national\n    colour: blue",
            8,
            5,
            "colour: Extra inputs are not permitted",
        ),
        ("name: New Zealand Police", "name: [unclosed", 6, 9, "bad YAML"),
    ],
)
def test_faults_are_located(
    tmp_path: Path, replace: str, by: str, line: int, column: int, reason: str
) -> None:
    assert replace in GOOD_AGENCY
    path = write(tmp_path, GOOD_AGENCY.replace(replace, by))
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    error = caught.value
    assert reason in error.reason
    assert (error.line, error.column) == (line, column), str(error)
    assert str(error).startswith(f"{path}:{line}:{column}: ")


def test_duplicate_id_names_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_AGENCY + GOOD_AGENCY)
    with pytest.raises(
        RegistryError,
        match=r"agencies.yaml:12:5: duplicate agency id 'police' \(first at agencies\[0\]\)",
    ):
        load_registry(path)


def test_an_agency_may_not_share_another_s_key_set(tmp_path: Path) -> None:
    # Two agencies on one key set could each open what is sealed to the other.
    other = GOOD_AGENCY.replace("id: police", "id: safe-whanau").replace(
        "    kind: police\n", "    kind: police\n    keys: police\n"
    )
    path = write(tmp_path, GOOD_AGENCY + other)
    with pytest.raises(
        RegistryError, match=r"agencies.yaml:15:5: key set 'police' is already agencies\[0\]'s"
    ):
        load_registry(path)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [("broker", "reserved for Tiaki's own principals"), ("../evil", "should match pattern")],
)
def test_an_agency_s_key_set_is_its_own(tmp_path: Path, keys: str, reason: str) -> None:
    path = write(
        tmp_path, GOOD_AGENCY.replace("    kind: police\n", f"    kind: police\n    keys: {keys}\n")
    )
    with pytest.raises(RegistryError, match=reason):
        load_registry(path)


def test_regional_hub_needs_a_region(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_AGENCY.replace("kind: police", "kind: regional_hub"))
    with pytest.raises(RegistryError, match="a regional hub needs a region"):
        load_registry(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "agencies.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(RegistryError, match=":1:1: the registry must be a mapping"):
        load_registry(path)


def test_duplicate_yaml_key_is_bad_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_AGENCY.replace("kind: police", "kind: police\n    kind: health"))
    with pytest.raises(RegistryError, match="bad YAML"):
        load_registry(path)


def test_coordinating_cases_is_an_attribute_of_the_agency(tmp_path: Path) -> None:
    plain = load_registry(write(tmp_path, GOOD_AGENCY))
    assert plain.coordinators == []
    coordinating = GOOD_AGENCY.replace(
        "region: national", "region: national\n    coordinates_cases: true"
    )
    assert load_registry(write(tmp_path, coordinating)).coordinators == ["police"]


def test_only_a_confirmed_family_violence_agency_coordinates_cases(tmp_path: Path) -> None:
    """Its allocations decide who receives a case's information, so the registry refuses the
    attribute on an agency the FVA s20 route does not cover (here: unconfirmed)."""
    agency = GOOD_AGENCY.replace(
        "region: national", "region: national\n    coordinates_cases: true"
    ).replace(
        '{status: confirmed, evidence: "Family Violence Act 2018 s19"}',
        '{status: unconfirmed, evidence: "designation pending"}',
    )
    path = write(tmp_path, agency)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert str(caught.value).startswith(f"{path}:8:5: coordinates_cases needs a confirmed")
