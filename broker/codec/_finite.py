"""Refusing NaN and the infinities in ``float`` and ``double`` fields.

Avro's ``float`` and ``double`` are IEEE 754 and can carry NaN, +Infinity and -Infinity, and
fastavro writes and reads them. Tiaki refuses them: the broker hands each minimised event to
its recipients as JSON, which has no such numbers (a strict parser fails on the whole record),
and no field of an event means anything by one (an indicator's value is a count, a proportion
or days). A finite value beyond ``float``'s range is refused too, since the writer would write
it as an infinity.

:func:`non_finite_check` compiles, once per schema, a function that goes down only the fields
whose types can hold a ``float`` or ``double`` and returns where the first such value is
(a field path as :func:`~broker.codec.validate` writes one) and what is wrong with it. A schema
without such a field has no check (None), so its records cost nothing. :func:`number_problem`
is the same judgement for one value, which :func:`~broker.codec.validate` uses.

A check is exact for what fastavro decodes (a record is a dict, an array a list, a ``["null",
T]`` union's value None or a T), for what :func:`~broker.codec.validate` accepts, and for a
union's value in the ``(type name, value)`` notation fastavro's writer also takes. A union of
several types (the loader refuses one) or a recursive type is searched whole for a non-finite
Python float, which is reported at the union's or the recursive field's path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from broker.codec._model import Schema
from broker.codec._types import Names, resolve

#: Where a check found a non-finite value, and what is wrong with it (value-free).
Problem = tuple[str, str]
#: A compiled check: a record in, its first problem out (None if there is none).
Check = Callable[[Mapping[str, Any]], Problem | None]
#: One compiled step: a value of the step's type (never None), its problem relative to itself.
_Step = Callable[[Any], Problem | None]

_INF = math.inf
#: The smallest magnitude a C cast to a 32-bit float rounds to infinity: the largest finite
#: float, 2**128 - 2**104, plus half a unit in the last place.
_FLOAT_LIMIT = 2.0**128 - 2.0**103
NOT_FINITE = "not a finite number"


def number_problem(kind: str, value: Any) -> str | None:
    """What is wrong with writing ``value`` as an Avro ``kind`` (``float`` or ``double``), or
    None; a value that is not a number at all is left to the type checks (None)."""
    try:
        # float() is how the Avro writer converts a value (a str such as "nan" too).
        number = float(value)
    except OverflowError:  # an int too large even for a double
        return f"out of range for {kind}"
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return NOT_FINITE
    if kind == "float" and not -_FLOAT_LIMIT < number < _FLOAT_LIMIT:
        return "out of range for float"
    return None


@functools.cache
def non_finite_check(schema: Schema) -> Check | None:
    """The check for records of ``schema`` (see the module's docstring), or None if no field
    at any depth can hold a ``float`` or ``double``. Compiled once per schema."""
    holds = _holds_number(schema.definition, schema.names, set())
    top = _type(schema.definition, schema.names, ()) if holds else None
    if top is None:
        return None
    step = top

    def check(record: Mapping[str, Any]) -> Problem | None:
        found = step(record)
        if found is None:
            return None
        return found[0].removeprefix("."), found[1]

    return check


def _holds_number(node: Any, names: Names, seen: set[str]) -> bool:
    """Whether a value of type ``node`` can hold a float or double at any depth (``seen``: the
    records already looked into, so a recursive type ends)."""
    node = resolve(node, names)
    if isinstance(node, str):
        return node in ("float", "double")
    if isinstance(node, list):
        return any(_holds_number(branch, names, seen) for branch in node)
    kind = node["type"]
    if kind in ("record", "error"):
        if node["name"] in seen:
            return False
        seen.add(str(node["name"]))
        return any(_holds_number(f["type"], names, seen) for f in node["fields"])
    if kind == "array":
        return _holds_number(node["items"], names, seen)
    if kind == "map":
        return _holds_number(node["values"], names, seen)
    return kind in ("float", "double")  # a number with a logical type fastavro does not know


def _type(node: Any, names: Names, within: tuple[str, ...]) -> _Step | None:
    """The step for a value of type ``node``, or None if it cannot hold a float or double."""
    node = resolve(node, names)
    if isinstance(node, list):
        return _union(node, names, within)
    kind = node if isinstance(node, str) else node["type"]
    if kind == "double":
        return _double
    if kind == "float":
        return _float
    if kind in ("record", "error"):
        return _record(node, names, within)
    if kind == "array":
        return _nested("[]", _type(node["items"], names, within), _items)
    if kind == "map":
        return _nested("{}", _type(node["values"], names, within), _values)
    return None


def _double(value: Any) -> Problem | None:
    if value.__class__ is float and -_INF < value < _INF:  # what the reader returns
        return None
    problem = number_problem("double", value)
    return None if problem is None else ("", problem)


def _float(value: Any) -> Problem | None:
    if value.__class__ is float and -_FLOAT_LIMIT < value < _FLOAT_LIMIT:
        return None
    problem = number_problem("float", value)
    return None if problem is None else ("", problem)


def _record(node: Mapping[str, Any], names: Names, within: tuple[str, ...]) -> _Step | None:
    name = str(node["name"])
    if name in within:
        return _anywhere
    children: list[tuple[str, _Step]] = []
    for f in node["fields"]:
        child = _type(f["type"], names, (*within, name))
        if child is not None:
            children.append((f["name"], child))
    if not children:
        return None

    def record(value: Any) -> Problem | None:
        for field, child in children:
            inner = value.get(field)
            if inner is not None:  # a field left to its default, when encoding
                found = child(inner)
                if found is not None:
                    return f".{field}{found[0]}", found[1]
        return None

    return record


def _items(value: Any) -> Any:
    return value


def _values(value: Any) -> Any:
    return value.values()


def _nested(mark: str, each: _Step | None, members: Callable[[Any], Any]) -> _Step | None:
    """The step for an array (``[]``) or a map (``{}``) whose members have step ``each``."""
    if each is None:
        return None

    def nested(value: Any) -> Problem | None:
        for item in members(value):
            if item is not None:
                found = each(item)
                if found is not None:
                    return mark + found[0], found[1]
        return None

    return nested


def _union(branches: list[Any], names: Names, within: tuple[str, ...]) -> _Step | None:
    """A ``["null", T]`` union's step is T's (its None is skipped where it is read); a union of
    several types is searched whole."""
    others = [b for b in branches if resolve(b, names) != "null"]
    if len(others) != 1:
        return _anywhere if any(_holds_number(b, names, set()) for b in others) else None
    step = _type(others[0], names, within)
    if step is None:
        return None
    only = step

    def union(value: Any) -> Problem | None:
        if isinstance(value, tuple):  # fastavro's writer takes a union's value as (type, value)
            value = value[1]
            if value is None:
                return None
        return only(value)

    return union


def _anywhere(value: Any) -> Problem | None:
    """The first non-finite float anywhere in ``value``, reported at ``value``'s own path."""
    if value.__class__ is float:
        return None if math.isfinite(value) else ("", NOT_FINITE)
    members = (
        value.values()
        if isinstance(value, Mapping)
        else value
        if isinstance(value, list | tuple)
        else ()
    )
    for item in members:
        if _anywhere(item) is not None:
            return "", NOT_FINITE
    return None
