"""The schema folder itself: lint rules, examples, fingerprints, field flattening."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import broker.codec
from broker.codec import (
    NAMESPACE,
    SchemaSet,
    decode,
    encode,
    field_classifications,
    from_json,
    load_schemas,
    to_json,
    validate,
)

REQUIRED_EVENTS = {
    "FamilyHarmEpisodeReport",
    "ReportOfConcern",
    "HealthScreeningOutcome",
    "CommunityReferral",
    "CorrectionsReleaseNotification",
    "ProtectionOrderEvent",
    "RiskAssessment",
    "SafetyAssessmentMeetingOutcome",
    "CaseAllocation",
    "TaskEvent",
    "SafetyPlanUpdate",
    "InformationRequest",
    "InformationResponse",
    "OutcomeIndicator",
}
REQUIRED_TYPES = {"EventHeader", "PersonRef", "EpisodePerson", "Address", "AgencyRef"}


def test_exports_are_public_and_documented() -> None:
    for name in broker.codec.__all__:
        obj = getattr(broker.codec, name)
        assert not name.startswith("_")
        if callable(obj):
            assert obj.__doc__, f"{name} needs a docstring"


def test_required_events_and_types_exist(schemas: SchemaSet) -> None:
    events = {schema.short_name for schema in schemas.events()}
    assert events >= REQUIRED_EVENTS
    types = {schema.short_name for schema in schemas if schema.kind == "type"}
    assert types >= REQUIRED_TYPES


def test_every_event_maps_to_a_practice_step(schemas: SchemaSet) -> None:
    steps = {schema.practice_step for schema in schemas.events()}
    assert steps == set(schemas.vocabulary.practice_steps)


def test_every_field_has_doc_and_known_classification(schemas: SchemaSet) -> None:
    known = set(schemas.vocabulary.classifications)
    assert {"identifier", "contact", "location", "health", "child", "narrative"} <= known
    assert {"risk", "legal", "maori_data", "operational", "privileged"} <= known
    for schema in schemas:
        for info in schema.fields:
            assert info.doc.strip(), f"{schema.label}: {info.path} has no doc"
            assert info.classification in known, f"{schema.label}: {info.path}"
            assert set(info.inherited) <= known


def test_events_start_with_the_shared_header(schemas: SchemaSet) -> None:
    for schema in schemas.events():
        first = schema.definition["fields"][0]
        assert first["name"] == "header"
        assert schema.fields[0].avro_type == f"record {NAMESPACE}.EventHeader"
        paths = {path for path, _ in field_classifications(schema)}
        assert {"header.event_id", "header.case_id", "header.source_agency"} <= paths
        assert {"header.occurred_at", "header.event_type"} <= paths


def test_shared_types_keep_their_field_paths(schemas: SchemaSet) -> None:
    plan = dict(field_classifications(schemas.latest("SafetyPlanUpdate")))
    assert plan["people[].person.date_of_birth"] == "identifier"
    assert plan["people[].person.iwi"] == "maori_data"
    assert plan["people[].role"] == "risk"
    assert plan["safe_address.street_address"] == "location"
    assert plan["safe_contact.phone"] == "contact"
    health = {f.path: f for f in schemas.latest("HealthScreeningOutcome").fields}
    assert health["counselling_notes"].classification == "privileged"
    assert health["patient.person.family_name"].inherited == ("identifier", "identifier")
    assert (
        "location"
        in next(
            f for f in schemas.latest("SafetyPlanUpdate").fields if f.path == "safe_address.suburb"
        ).classes
    )


def _examples(schema_dir: Path) -> list[Path]:
    return sorted((schema_dir / "examples").glob("*.json"))


def test_every_event_has_an_example(schemas: SchemaSet, schema_dir: Path) -> None:
    names = {path.stem for path in _examples(schema_dir)}
    assert names == {schema.short_name for schema in schemas.events()}


def test_examples_validate_and_round_trip(schemas: SchemaSet, schema_dir: Path) -> None:
    for path in _examples(schema_dir):
        document = json.loads(path.read_text(encoding="utf-8"))
        schema = schemas.latest(path.stem)
        record = from_json(schema, document)
        validate(schema, record)
        payload = encode(schema, record)
        assert to_json(schema, decode(payload, schema)) == document, path.name
        assert schemas.decode(payload, schema.fingerprint) == decode(payload, schema)


def test_examples_are_obviously_synthetic(schema_dir: Path) -> None:
    for path in _examples(schema_dir):
        text = path.read_text(encoding="utf-8")
        assert "SYN-" in text, path.name
        document = json.loads(text)
        assert document["header"]["case_id"].startswith("SYN-")


def test_fingerprint_is_sha256_of_the_canonical_form(schemas: SchemaSet) -> None:
    for schema in schemas:
        assert schema.fingerprint == hashlib.sha256(schema.canonical_form.encode()).digest()
        assert schemas.by_fingerprint(schema.fingerprint) is schema
    assert len({schema.fingerprint for schema in schemas}) == len(schemas)


def test_fingerprints_are_stable_across_loads(schemas: SchemaSet, schema_dir: Path) -> None:
    again = load_schemas(schema_dir)
    assert [s.fingerprint for s in again] == [s.fingerprint for s in schemas]


# Released versions must never change on the wire. These two are pinned on purpose: if this
# test fails, someone edited a released schema instead of adding a version.
RELEASED = {
    ("EventHeader", 1): "7d2a75f33cb00ef5",
    ("FamilyHarmEpisodeReport", 1): "8362178c9dc1736d",
}


@pytest.mark.parametrize(("name", "version"), sorted(RELEASED))
def test_released_fingerprints_do_not_change(schemas: SchemaSet, name: str, version: int) -> None:
    assert schemas.get(name, version).fingerprint_hex.startswith(RELEASED[(name, version)])


def test_docs_and_classifications_do_not_change_the_fingerprint(
    schema_dir: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "schemas"
    shutil.copytree(schema_dir, copy)
    target = copy / "types" / "Address" / "v1.avsc"
    raw = json.loads(target.read_text(encoding="utf-8"))
    raw["fields"][0]["doc"] = "Reworded."
    raw["fields"][0]["classification"] = "risk"
    target.write_text(json.dumps(raw), encoding="utf-8")
    before = load_schemas(schema_dir).latest("Address")
    after = load_schemas(copy).latest("Address")
    assert after.fingerprint == before.fingerprint
    assert after.fields[0].classification == "risk"
