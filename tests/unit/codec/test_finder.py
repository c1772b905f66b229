"""Schema-guided finders against the walk of every dict and list they replace: the same
records, in the same order, for any record of any event schema; and no finder where the
schema cannot guide one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import Schema, decode, encode, record_finder
from broker.codec._types import collect_names
from tests.unit.codec.test_properties import SCHEMAS, _records

VERSIONS = [version for schema in SCHEMAS.events() for version in SCHEMAS.versions(schema.name)]
#: Name sets the broker looks for (PersonIdentifier's issuer; the policy's signals), and
#: some that reach deep or nowhere.
NAME_SETS = [
    (frozenset({"issuer"}), frozenset()),
    (frozenset({"date_of_birth", "role", "iwi", "children_present", "final_tier"}), {"header"}),
    (frozenset({"agency_id", "legal_route"}), frozenset()),
    (frozenset({"no-such-field"}), frozenset()),
]


def walked(record: Mapping[str, Any], names: frozenset[str], skip: frozenset[str]) -> list[Any]:
    """Every dict in ``record`` (itself included) holding one of ``names``, walking every dict
    and list, pre-order, the top record's ``skip`` fields left out."""
    out: list[Any] = []

    def walk(node: Any) -> None:
        if type(node) is dict:
            if not names.isdisjoint(node):
                out.append(node)
            for child in node.values():
                walk(child)
        elif type(node) is list:
            for child in node:
                walk(child)

    top = {k: v for k, v in record.items() if k not in skip}
    if not names.isdisjoint(top):
        out.append(record)
    for value in top.values():
        walk(value)
    return out


@pytest.mark.parametrize("schema", VERSIONS, ids=lambda s: s.label)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_finder_finds_what_a_whole_walk_finds(schema: Schema, data: st.DataObject) -> None:
    record = decode(encode(schema, data.draw(_records(schema))), schema)
    for names, skip in NAME_SETS:
        finder = record_finder(schema, names, frozenset(skip))
        assert finder is not None
        found = finder(record)
        expected = walked(record, names, frozenset(skip))
        assert [id(node) for node in found] == [id(node) for node in expected]


def _schema(definition: dict[str, Any]) -> Schema:
    return Schema(
        name=definition["name"],
        version=1,
        kind="type",
        definition=definition,
        parsed=None,
        canonical_form="",
        fingerprint=b"",
        path=Path("synthetic.avsc"),
        practice_step=None,
        names=collect_names(definition),
    )


PERSON = {"type": "record", "name": "P", "fields": [{"name": "issuer", "type": "string"}]}
OTHER = {"type": "record", "name": "Q", "fields": [{"name": "note", "type": "string"}]}


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "map", "values": "string"},  # a dict whose keys are data
        ["null", PERSON, OTHER],  # which record a dict is depends on its content
        ["null", {"type": "array", "items": PERSON}, {"type": "array", "items": "string"}],
    ],
    ids=["map", "two records", "two arrays"],
)
def test_no_finder_where_the_schema_cannot_tell_a_value_s_type(field_type: Any) -> None:
    schema = _schema({"type": "record", "name": "T", "fields": [{"name": "x", "type": field_type}]})
    assert record_finder(schema, frozenset({"issuer"})) is None


def test_a_recursive_type_has_no_finder() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "issuer", "type": "string"},
            {"name": "next", "type": ["null", "Node"]},
        ],
    }
    assert record_finder(_schema(node), frozenset({"issuer"})) is None


def test_a_union_of_a_record_and_other_types_is_guided_by_the_value_s_type() -> None:
    schema = _schema(
        {
            "type": "record",
            "name": "T",
            "fields": [{"name": "x", "type": ["null", "string", PERSON]}],
        }
    )
    finder = record_finder(schema, frozenset({"issuer"}))
    assert finder is not None
    person = {"issuer": "i"}
    assert finder({"x": person}) == [person]
    assert finder({"x": "text"}) == []
    assert finder({"x": None}) == []
