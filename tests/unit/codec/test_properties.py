"""Property tests: generated records round-trip; arbitrary bytes never escape as raw errors."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import (
    MalformedRecord,
    Schema,
    SchemaSet,
    check_compatibility,
    decode,
    encode,
    from_json,
    load_schemas,
    to_json,
)

SCHEMAS = load_schemas(Path(__file__).resolve().parents[3] / "schemas")
PROPERTY_SCHEMAS = [
    "FamilyHarmEpisodeReport",
    "SafetyPlanUpdate",
    "InformationRequest",
    "InformationResponse",
    "HealthScreeningOutcome",
    "TaskEvent",
]
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_TIMESTAMPS = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))


def primitive_values(
    text: st.SearchStrategy[str], max_bytes: int
) -> dict[str, st.SearchStrategy[Any]]:
    """Values of each Avro primitive type, strings from ``text``."""
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False, allow_infinity=False),
        "double": st.floats(allow_nan=False, allow_infinity=False),
        "string": text,
        "bytes": st.binary(max_size=max_bytes),
    }


def _strategy(node: Any, schema: Schema) -> st.SearchStrategy[Any]:
    """Records for any Tiaki schema, built from the schema itself (no hand-kept copy)."""
    names = schema.names
    if isinstance(node, str):
        if node in names:
            return _strategy(names[node], schema)
        return primitive_values(_TEXT, 20)[node]
    if isinstance(node, list):
        return st.one_of([_strategy(branch, schema) for branch in node])
    assert isinstance(node, Mapping)
    kind = node["type"]
    logical = node.get("logicalType")
    if logical == "uuid":
        return st.uuids()
    if logical == "date":
        return st.dates()
    if logical == "timestamp-millis":
        return _TIMESTAMPS
    if kind == "enum":
        return st.sampled_from(node["symbols"])
    if kind == "array":
        return st.lists(_strategy(node["items"], schema), max_size=3)
    if kind == "map":
        return st.dictionaries(_TEXT, _strategy(node["values"], schema), max_size=3)
    if kind == "record":
        return st.fixed_dictionaries(
            {fld["name"]: _strategy(fld["type"], schema) for fld in node["fields"]}
        )
    return _strategy(kind, schema)


def _records(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    def fix_header(record: dict[str, Any]) -> dict[str, Any]:
        if schema.kind == "event":
            record["header"]["event_type"] = schema.name
        return record

    return _strategy(schema.definition, schema).map(fix_header)


@pytest.mark.parametrize("name", PROPERTY_SCHEMAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_records_round_trip(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS.latest(name)
    record = data.draw(_records(schema))
    decoded = decode(encode(schema, record), schema)
    assert decoded == record
    assert from_json(schema, to_json(schema, decoded)) == decoded


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_records_resolve_between_versions_both_ways(data: st.DataObject) -> None:
    v1, v2 = SCHEMAS.versions("FamilyHarmEpisodeReport")
    assert check_compatibility(v2, v1) == []
    assert check_compatibility(v1, v2) == []
    old = data.draw(_records(v1))
    new = decode(encode(v1, old), v1, v2)
    assert new["strangulation_indicated"] is None
    assert {k: new[k] for k in old} == old
    fresh = data.draw(_records(v2))
    back = decode(encode(v2, fresh), v2, v1)
    assert back == {k: fresh[k] for k in back}


@pytest.mark.parametrize("name", ["TaskEvent", "SafetyPlanUpdate"])
@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_malformed(name: str, junk: bytes) -> None:
    schema = SCHEMAS.latest(name)
    with contextlib.suppress(MalformedRecord):  # anything else fails the test
        decode(junk, schema)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_corrupted_records_never_raise_raw_errors(data: st.DataObject) -> None:
    schema = SCHEMAS.latest("InformationRequest")
    payload = bytearray(encode(schema, data.draw(_records(schema))))
    cut = data.draw(st.integers(0, len(payload) - 1))
    if data.draw(st.booleans()):
        payload[cut] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del payload[cut:]
    with contextlib.suppress(MalformedRecord):  # a flip may also yield another valid record
        decode(bytes(payload), schema)


def test_every_event_schema_generates(schemas: SchemaSet) -> None:
    # Not a property: just that the generator understands every schema in the folder.
    for schema in schemas.events():
        assert _records(schema) is not None
