"""Encoding, decoding, resolution between versions, and the exception family."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from broker._errors import TiakiError
from broker.codec import (
    CodecError,
    IncompatibleSchema,
    InvalidRecord,
    MalformedRecord,
    SchemaError,
    SchemaSet,
    UnknownSchema,
    decode,
    encode,
    from_json,
)

CANARY = "Canary-Value-7f3a"


def _example(schemas: SchemaSet, schema_dir: Path, name: str) -> dict[str, Any]:
    document = json.loads((schema_dir / "examples" / f"{name}.json").read_text(encoding="utf-8"))
    return from_json(schemas.latest(name), document)


def test_quarantine_reasons_are_distinct_codes() -> None:
    classes = [CodecError, SchemaError, UnknownSchema, MalformedRecord, InvalidRecord]
    classes.append(IncompatibleSchema)
    reasons = [cls.quarantine_reason for cls in classes]
    assert len(set(reasons)) == len(reasons)
    assert UnknownSchema.quarantine_reason == "unknown_schema"
    assert MalformedRecord.quarantine_reason == "malformed_avro"
    for cls in classes:
        assert issubclass(cls, TiakiError)
        assert cls.quarantine_reason.isidentifier()
        assert cls.quarantine_reason == cls.quarantine_reason.lower()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("task_id"), "task_id"),
        (lambda r: r.__setitem__("task_id", 42), "task_id"),
        (lambda r: r.__setitem__("transition", CANARY), "transition"),
        (lambda r: r.__setitem__("unexpected", CANARY), "unexpected"),
        (lambda r: r["assigned_to"].__setitem__("agency_id", None), "assigned_to.agency_id"),
        (
            lambda r: r["subjects"][0]["person"].__setitem__("date_of_birth", CANARY),
            "date_of_birth",
        ),
        (lambda r: r["header"].__setitem__("event_type", "nz.tiaki.Other"), "header.event_type"),
        (lambda r: r["header"].__setitem__("event_id", CANARY), "header.event_id"),
    ],
)
def test_invalid_records_name_the_field_and_never_the_value(
    schemas: SchemaSet, schema_dir: Path, mutate: Any, field: str
) -> None:
    record = copy.deepcopy(_example(schemas, schema_dir, "TaskEvent"))
    mutate(record)
    with pytest.raises(InvalidRecord) as caught:
        encode(schemas.latest("TaskEvent"), record)
    message = str(caught.value)
    assert "nz.tiaki.TaskEvent v1" in message
    assert field in message
    assert CANARY not in message


def test_event_id_may_be_a_uuid_string(schemas: SchemaSet, schema_dir: Path) -> None:
    record = _example(schemas, schema_dir, "TaskEvent")
    assert isinstance(record["header"]["event_id"], uuid.UUID)
    record["header"]["event_id"] = str(record["header"]["event_id"])
    schema = schemas.latest("TaskEvent")
    decoded = decode(encode(schema, record), schema)
    assert str(decoded["header"]["event_id"]) == record["header"]["event_id"]


def test_unknown_fingerprint(schemas: SchemaSet) -> None:
    with pytest.raises(UnknownSchema):
        schemas.by_fingerprint(b"\x00" * 32)
    with pytest.raises(UnknownSchema):
        schemas.latest("NoSuchEvent")
    with pytest.raises(UnknownSchema):
        schemas.get("TaskEvent", 99)


def test_malformed_bytes(schemas: SchemaSet, schema_dir: Path) -> None:
    schema = schemas.latest("TaskEvent")
    payload = encode(schema, _example(schemas, schema_dir, "TaskEvent"))
    for bad in (b"", payload[:-3], payload[: len(payload) // 2], payload + b"\x00", b"\xff" * 40):
        with pytest.raises(MalformedRecord):
            decode(bad, schema)


# -- resolution between versions --------------------------------------------------------------


def test_new_reader_reads_old_writer(schemas: SchemaSet, schema_dir: Path) -> None:
    v1, _v2 = schemas.versions("FamilyHarmEpisodeReport")
    record = _example(schemas, schema_dir, "FamilyHarmEpisodeReport")
    old = {
        k: v for k, v in record.items() if k not in ("strangulation_indicated", "weapons_involved")
    }
    old["header"] = dict(old["header"])
    payload = encode(v1, old)
    read = schemas.decode(payload, v1.fingerprint)  # the broker reads with the newest
    assert read["strangulation_indicated"] is None
    assert read["episode_number"] == record["episode_number"]


def test_old_reader_reads_new_writer(schemas: SchemaSet, schema_dir: Path) -> None:
    v1, v2 = schemas.versions("FamilyHarmEpisodeReport")
    payload = encode(v2, _example(schemas, schema_dir, "FamilyHarmEpisodeReport"))
    read = decode(payload, v2, v1)
    assert "strangulation_indicated" not in read
    assert read["children_present"] is True


def test_unresolvable_schemas_raise_incompatible(schemas: SchemaSet, schema_dir: Path) -> None:
    writer = schemas.latest("TaskEvent")
    payload = encode(writer, _example(schemas, schema_dir, "TaskEvent"))
    with pytest.raises(IncompatibleSchema):
        decode(payload, writer, schemas.latest("CaseAllocation"))


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_time_outside_utc_years_is_an_invalid_record(
    schemas: SchemaSet, schema_dir: Path, when: str
) -> None:
    """It parses with its offset, but Avro keeps the instant in UTC, where it does not exist:
    the adapter accepted it and the broker quarantined it as malformed (an OverflowError)."""
    document = json.loads(
        (schema_dir / "examples" / "FamilyHarmEpisodeReport.json").read_text(encoding="utf-8")
    )
    document["header"]["occurred_at"] = when
    with pytest.raises(InvalidRecord, match=r"'header\.occurred_at': not a valid timestamp"):
        from_json(schemas.latest("FamilyHarmEpisodeReport"), document)
