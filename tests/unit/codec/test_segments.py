"""Records written in parts are byte for byte the records written whole."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.codec import InvalidRecord, decode, encode, from_json, load_schemas
from broker.codec._segments import (
    ArrayItems,
    Segments,
    array_of,
    nullable_string_of,
    string_of,
    zigzag_long,
)

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = load_schemas(ROOT / "schemas")
EXAMPLES = sorted((ROOT / "schemas" / "examples").glob("*.json"))
AUDIT = SCHEMAS.latest("AuditRecord")
NOW = datetime(2026, 12, 1, tzinfo=UTC)
text = st.text(max_size=12)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@given(data=st.data())
def test_any_cut_of_an_event_joins_to_the_whole(example: Path, data: st.DataObject) -> None:
    schema = SCHEMAS.latest(example.stem)
    record = from_json(schema, json.loads(example.read_text()))
    names = [f["name"] for f in schema.definition["fields"]]
    starts = data.draw(st.lists(st.sampled_from(names[1:]), unique=True)) if names[1:] else []
    starts.sort(key=names.index)
    segments = Segments(schema, starts)
    joined = b"".join(segments.encode(i, record) for i in range(len(segments)))
    assert joined == encode(schema, record)


entry = st.fixed_dictionaries(
    {
        "recipient": text,
        "outcome": st.sampled_from(["share", "review", "deny"]),
        "route": st.none() | text,
        "legal_basis": st.none() | text,
        "purpose": st.none() | text,
        "person_told": st.none() | text,
        "rule_ids": st.lists(text, max_size=3),
        "reason_codes": st.lists(text, max_size=3),
        "obligations": st.lists(text, max_size=3),
        "field_actions": st.dictionaries(text, text, max_size=5),
    }
)


@given(entries=st.lists(entry, max_size=70), detail=st.none() | text)
def test_an_audit_record_from_encoded_entries_is_the_whole_record(
    entries: list[dict[str, object]], detail: str | None
) -> None:
    record = {
        "audit_id": uuid.UUID(int=7),
        "recorded_at": NOW,
        "action": "decision",
        "actor": "broker",
        "detail": detail,
        "decisions": entries,
    }
    items = ArrayItems(AUDIT, "decisions")
    head = Segments(AUDIT, ["decisions"]).encode(0, record)
    joined = head + array_of([items.encode(e) for e in entries])
    assert joined == encode(AUDIT, record)
    assert decode(joined, AUDIT)["decisions"] == entries


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_zigzag_long_reads_back_as_avro_long(value: int) -> None:
    from io import BytesIO

    from fastavro import parse_schema, schemaless_reader

    assert schemaless_reader(BytesIO(zigzag_long(value)), parse_schema("long")) == value


@given(st.text(max_size=300))
def test_string_of_is_the_part_the_writer_gives_a_last_string_field(body: str) -> None:
    shared = Segments(SCHEMAS.latest("SharedEvent"), ["route", "body_json"])
    assert shared.fields[2] == ("body_json",)
    assert string_of(body) == shared.encode(2, {"body_json": body})


@given(st.one_of(st.none(), st.text(max_size=300)))
def test_nullable_string_of_is_what_the_writer_gives_a_nullable_string(value: str | None) -> None:
    audit = Segments(AUDIT, ["event_id", "event_type"])
    assert audit.fields[1] == ("event_id",)
    assert nullable_string_of(value) == audit.encode(1, {"event_id": value})


def test_a_bad_part_says_which_schema_and_part() -> None:
    segments = Segments(AUDIT, ["decisions"])
    with pytest.raises(InvalidRecord, match="AuditRecord"):
        segments.encode(0, {"audit_id": "not-a-uuid", "recorded_at": NOW, "actor": 3})


def test_cuts_must_name_fields_in_order() -> None:
    with pytest.raises(ValueError, match="no field"):
        Segments(AUDIT, ["nonexistent"])
    with pytest.raises(ValueError, match="order"):
        Segments(AUDIT, ["decisions", "actor"])
