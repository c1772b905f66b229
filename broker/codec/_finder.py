"""Finding the records that matter in a decoded record, guided by its schema.

The broker reads a few kinds of record in every event (the people's identifiers for the
audit's subject references, the fields the policy derives its context from), and a walk over
every dict and list of the event to find them costs a step per node. The schema says in
advance where such records can be: :func:`record_finder` compiles, once per schema and set of
field names, a function that goes down only the fields whose types can hold one, and returns
every record there whose type has a field of one of the names (the top record included).

It is exact for what fastavro decodes with ``schema`` (a record is a dict holding every field,
an array a list, a union's value its branch's): the records it returns are the dicts a walk of
every dict and list would find holding one of the names, in the same order. A map is a dict
whose keys are data, and a union of several record or array types leaves a value's type to
its content: a schema with either outside the skipped fields has no finder (None), and its
records are walked whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from broker.codec._model import Schema
from broker.codec._types import Names, resolve

#: A compiled finder: a decoded record in, the records of interest in it out.
Finder = Callable[[Mapping[str, Any]], list[Mapping[str, Any]]]
#: One compiled step: a value of the step's type (never None), and where to add finds.
_Step = Callable[[Any, list[Mapping[str, Any]]], None]


class _Unguided(Exception):
    """The schema has a type whose decoded values a finder cannot tell apart."""


@functools.cache
def record_finder(
    schema: Schema, names: frozenset[str], skip: frozenset[str] = frozenset()
) -> Finder | None:
    """The records of a record decoded with ``schema`` whose type has a field in ``names``,
    outside the top-level fields in ``skip``; None if ``schema`` cannot be guided (see the
    module's docstring). Compiled once per schema and names."""
    try:
        top = _record(schema.definition, names, schema.names, skip, ())
    except _Unguided:
        return None
    if top is None:
        return _none
    step = top

    def find(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        step(record, out)
        return out

    return find


def _none(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return []


def _type(node: Any, names: frozenset[str], table: Names, within: tuple[str, ...]) -> _Step | None:
    """The step for a value of type ``node``, or None if nothing of interest is below it."""
    node = resolve(node, table)
    if isinstance(node, str):  # a primitive
        return None
    if isinstance(node, list):
        return _union(node, names, table, within)
    kind = node["type"]
    if kind in ("record", "error"):
        return _record(node, names, table, frozenset(), within)
    if kind == "array":
        return _array(node["items"], names, table, within)
    if kind == "map":
        raise _Unguided(f"map in {'.'.join(within)}")
    return None  # enum, fixed, a logical type


def _record(
    node: Mapping[str, Any],
    names: frozenset[str],
    table: Names,
    skip: frozenset[str],
    within: tuple[str, ...],
) -> _Step | None:
    name = str(node["name"])
    if name in within:
        raise _Unguided(f"recursive type {name}")
    fields = [f for f in node["fields"] if f["name"] not in skip]
    matches = not names.isdisjoint(f["name"] for f in fields)
    children: list[tuple[str, _Step]] = []
    for f in fields:
        child = _type(f["type"], names, table, (*within, name))
        if child is not None:
            children.append((f["name"], child))
    if not matches and not children:
        return None

    def record(value: Any, out: list[Mapping[str, Any]]) -> None:
        if matches:
            out.append(value)
        for field, child in children:
            inner = value.get(field)
            if inner is not None:
                child(inner, out)

    return record


def _array(
    items: Any, names: frozenset[str], table: Names, within: tuple[str, ...]
) -> _Step | None:
    each = _type(items, names, table, within)
    if each is None:
        return None

    def array(value: Any, out: list[Mapping[str, Any]]) -> None:
        for item in value:
            if item is not None:
                each(item, out)

    return array


def _union(
    branches: list[Any], names: frozenset[str], table: Names, within: tuple[str, ...]
) -> _Step | None:
    """A union's step runs the step of the branch a value's Python type names (a record or a
    map decodes to a dict, an array to a list); a union with two such branches of one Python
    type, one of which can hold something, cannot be guided."""
    steps: dict[type, _Step] = {}
    kinds: list[type] = []
    for branch in branches:
        resolved = resolve(branch, table)
        if isinstance(resolved, Mapping) and resolved["type"] in ("record", "error", "map"):
            kinds.append(dict)
        elif isinstance(resolved, Mapping) and resolved["type"] == "array":
            kinds.append(list)
        step = _type(resolved, names, table, within)
        if step is not None:
            steps[kinds[-1]] = step
    if not steps:
        return None
    if any(kinds.count(kind) > 1 for kind in steps):
        raise _Unguided(f"a union of types alike in {'.'.join(within)}")

    def union(value: Any, out: list[Mapping[str, Any]]) -> None:
        step = steps.get(type(value))
        if step is not None:
            step(value, out)

    return union
