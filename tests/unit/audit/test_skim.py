"""The skim: the fields it is asked for, exactly as fastavro decodes them, for every
AuditRecord version and for a schema using every Avro type; bytes that are not a record
raise SkimError."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.audit._index import INDEXED, Decoder, _without_logical
from broker.audit._skim import Skim, SkimError
from broker.codec import load_schemas
from tests.unit.codec.test_properties import primitive_values

SCHEMAS = load_schemas(Path(__file__).resolve().parents[3] / "schemas")
AUDIT_VERSIONS = [_without_logical(s.definition) for s in SCHEMAS.versions("AuditRecord")]

#: Every Avro type, named types referenced by name (short and full), nested records, an
#: array of records, a map of records, unions with a record branch, blocks of many items.
EVERY_TYPE: dict[str, Any] = {
    "type": "record",
    "name": "Everything",
    "namespace": "test.skim",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "flag", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["R", "G"]}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "again", "type": "Colour"},
        {"name": "digest2", "type": "test.skim.Digest"},
        {"name": "maybe", "type": ["null", "string"]},
        {"name": "many", "type": ["null", "long", "string", "bytes"]},
        {"name": "words", "type": {"type": "array", "items": "string"}},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "matrix", "type": {"type": "array", "items": {"type": "array", "items": "int"}}},
        {
            "name": "inner",
            "type": {
                "type": "record",
                "name": "Inner",
                "fields": [
                    {"name": "a", "type": "string"},
                    {"name": "b", "type": ["null", "long"]},
                    {"name": "c", "type": {"type": "array", "items": "string"}},
                ],
            },
        },
        {"name": "inners", "type": {"type": "array", "items": "Inner"}},
        {"name": "by_name", "type": {"type": "map", "values": "Inner"}},
        {"name": "optional_inner", "type": ["null", "Inner"]},
        {"name": "tail", "type": "string"},
    ],
}

_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "string", "bytes")
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)  # past one-byte lengths


def _names(schema: Any, found: dict[str, Any], namespace: str = "") -> dict[str, Any]:
    if isinstance(schema, list):
        for branch in schema:
            _names(branch, found, namespace)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            space = schema.get("namespace", namespace)
            found[schema["name"]] = found[f"{space}.{schema['name']}"] = schema
            namespace = space
        for field in schema.get("fields", ()):
            _names(field["type"], found, namespace)
        for key in ("items", "values"):
            if key in schema:
                _names(schema[key], found, namespace)
        if isinstance(kind, (dict, list)):
            _names(kind, found, namespace)
    return found


def values(schema: Any, names: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a plain (logical-type-free) schema, for fastavro to write."""
    if isinstance(schema, str):
        if schema in names:
            return values(names[schema], names)
        return primitive_values(_TEXT, 80)[schema]
    if isinstance(schema, list):
        return st.one_of([values(branch, names) for branch in schema])
    kind = schema["type"]
    if isinstance(kind, (dict, list)) or kind in names or kind in _PRIMITIVES:
        return values(kind, names)  # a wrapped schema, a reference, an annotated primitive
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(values(schema["items"], names), max_size=4)
    if kind == "map":
        return st.dictionaries(_TEXT, values(schema["values"], names), max_size=4)
    assert kind == "record"
    return st.fixed_dictionaries({f["name"]: values(f["type"], names) for f in schema["fields"]})


def project(value: Any, wanted: Any) -> Any:
    """What a skim of ``wanted`` should give for a decoded ``value``."""
    if wanted is True or value is None:
        return value
    if isinstance(value, list):
        return [project(item, wanted) for item in value]
    if isinstance(value, dict) and not set(wanted) <= set(value):  # a map of records
        return {k: project(v, wanted) for k, v in value.items()}
    return {name: project(value[name], want) for name, want in wanted.items() if want}


def encode(schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def decode(schema: Any, value: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(schema), None)


def wanted_of(schema: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A random choice of fields, and of sub-fields of the record-valued ones."""
    names = _names(schema, {})

    def record_of(node: Any) -> Mapping[str, Any] | None:
        node = names.get(node, node) if isinstance(node, str) else node
        if isinstance(node, list):
            found = [record_of(b) for b in node]
            return next((r for r in found if r is not None), None)
        if isinstance(node, dict):
            if node.get("type") == "record":
                return node
            if node.get("type") in ("array", "map"):
                return record_of(node.get("items", node.get("values")))
        return None

    def choice(field: Mapping[str, Any]) -> st.SearchStrategy[Any]:
        inner = record_of(field["type"])
        options: list[st.SearchStrategy[Any]] = [st.just(False), st.just(True)]
        if inner is not None:
            subset = st.sets(st.sampled_from([f["name"] for f in inner["fields"]]), min_size=1)
            options.append(subset.map(lambda names: dict.fromkeys(names, True)))
        return st.one_of(options)

    return st.fixed_dictionaries({f["name"]: choice(f) for f in schema["fields"]})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_skim_gives_what_fastavro_decodes_of_the_fields_asked_for(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from([EVERY_TYPE, *AUDIT_VERSIONS]))
    record = data.draw(values(schema, _names(schema, {})))
    wanted = data.draw(wanted_of(schema))
    value = encode(schema, record)
    assert Skim(schema, wanted)(value) == project(decode(schema, value), wanted)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_index_skim_matches_fastavro_for_every_audit_record_version(
    data: st.DataObject,
) -> None:
    schema = data.draw(st.sampled_from(AUDIT_VERSIONS))
    record = data.draw(values(schema, _names(schema, {})))
    value = encode(schema, record)
    fingerprint = next(
        s.fingerprint_hex
        for s in SCHEMAS.versions("AuditRecord")
        if _without_logical(s.definition) == schema
    )
    decoder = Decoder(SCHEMAS)
    wanted = {k: v for k, v in INDEXED.items() if any(f["name"] == k for f in schema["fields"])}
    assert decoder.skim(value, fingerprint) == project(decoder.decode(value, fingerprint), wanted)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_truncated_record_or_one_with_bytes_left_over_raises(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from([EVERY_TYPE, *AUDIT_VERSIONS]))
    value = encode(schema, data.draw(values(schema, _names(schema, {}))))
    skim = Skim(schema, data.draw(wanted_of(schema)))
    cut = data.draw(st.integers(0, len(value) - 1))
    with pytest.raises(SkimError):
        skim(value[:cut])  # Avro's encoding is prefix-free: no prefix is a whole record
    with pytest.raises(SkimError):
        skim(value + data.draw(st.binary(min_size=1, max_size=8)))


@settings(max_examples=300)
@given(garbage=st.binary(max_size=400))
def test_garbage_raises_skim_error_and_nothing_else(garbage: bytes) -> None:
    for schema in (EVERY_TYPE, *AUDIT_VERSIONS):
        try:
            decoded = decode(schema, garbage)
        except Exception:
            decoded = None
        try:
            skimmed = Skim(schema, dict.fromkeys((f["name"] for f in schema["fields"]), True))(
                garbage
            )
        except SkimError:
            continue
        # Whatever the skim accepts, fastavro reads as the same record (with no bytes left).
        assume(decoded is not None)
        assert skimmed == decoded


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x03", "union branch out of range"),  # a negative union index
        (b"\x04", "union branch out of range"),
        (b"\x02\x01", "length"),  # a negative string length
        (b"\x02\x10ab", "truncated|past the end"),
    ],
)
def test_a_bad_union_or_length_is_named(value: bytes, reason: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": ["null", "string"]}]}
    for wanted in ({"s": True}, {}):
        with pytest.raises(SkimError, match=reason):
            Skim(schema, wanted)(value)


def test_an_enum_index_out_of_range_and_a_recursive_type_are_refused() -> None:
    enum = {"type": "enum", "name": "E", "symbols": ["A"]}
    schema = {"type": "record", "name": "R", "fields": [{"name": "e", "type": enum}]}
    with pytest.raises(SkimError, match="enum index out of range"):
        Skim(schema, {"e": True})(b"\x02")
    recursive = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    with pytest.raises(SkimError, match="recursive"):
        Skim(recursive, {"next": True})


@pytest.mark.parametrize("size", [63, 64, 8191, 8192, 100_000])
def test_lengths_and_counts_of_every_width_read_as_fastavro_reads_them(size: int) -> None:
    """One-byte and two-byte lengths are read inline and longer ones by a call: each width,
    and each side of the boundaries, for strings, optional strings, arrays and maps."""
    schema = {
        "type": "record",
        "name": "Wide",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "o", "type": ["null", "string"]},
            {"name": "a", "type": {"type": "array", "items": "string"}},
            {"name": "m", "type": {"type": "map", "values": "string"}},
            {"name": "end", "type": "long"},
        ],
    }
    text = "é" * (size // 2) + "x" * (size % 2)  # exactly ``size`` bytes of UTF-8
    record = {
        "s": text,
        "o": text,
        "a": [text, "", text[: size // 3]] * (1 + size // 2000),
        "m": {f"k{i}": text[:i] for i in range(70)},
        "end": -(2**40),
    }
    value = encode(schema, record)
    names = [f["name"] for f in schema["fields"]]
    for wanted in (dict.fromkeys(names, True), {"end": True}):
        assert Skim(schema, wanted)(value) == project(decode(schema, value), wanted)
