"""Walking standalone Avro schemas: name tables and type resolution.

The loader turns every schema into a *standalone* definition in which each named type is written
out once, under its full name, and referred to by full name afterwards (the Parsing Canonical
Form's convention). Every walker in the codec (flattening, validation, JSON conversion,
compatibility) uses the two helpers here, so none of them needs to know about namespaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})

#: A named-type table: full name to its definition.
Names = Mapping[str, Mapping[str, Any]]


def collect_names(node: Any, out: dict[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Return every named type defined inside ``node``, by full name."""
    names: dict[str, Mapping[str, Any]] = {} if out is None else out
    if isinstance(node, list):
        for branch in node:
            collect_names(branch, names)
    elif isinstance(node, Mapping):
        kind = node.get("type")
        if kind in NAMED:
            names[str(node["name"])] = node
            for field in node.get("fields", ()):
                collect_names(field["type"], names)
        elif kind == "array":
            collect_names(node["items"], names)
        elif kind == "map":
            collect_names(node["values"], names)
        elif isinstance(kind, Mapping | list):
            collect_names(kind, names)
    return names


def resolve(node: Any, names: Names) -> Any:
    """Follow a named reference to its definition; unwrap ``{"type": "string"}`` forms.

    Returns a primitive name (``"string"``), a list (a union) or a mapping with a ``type`` key
    that is ``record``, ``enum``, ``fixed``, ``array``, ``map`` or a primitive with a
    ``logicalType``.
    """
    while True:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return node
            return names[node]
        if isinstance(node, Mapping):
            inner = node.get("type")
            if isinstance(inner, Mapping | list) or (
                isinstance(inner, str)
                and inner not in NAMED
                and inner not in ("array", "map")
                and "logicalType" not in node
            ):
                node = inner
                continue
        return node


def describe(node: Any, names: Names) -> str:
    """A short human description of a type: ``string``, ``date``, ``array<nz.tiaki.PersonRef>``."""
    node = resolve(node, names)
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union<" + ",".join(describe(branch, names) for branch in node) + ">"
    kind = node["type"]
    if kind in NAMED:
        return f"{kind} {node['name']}"
    if kind == "array":
        return f"array<{describe(node['items'], names)}>"
    if kind == "map":
        return f"map<{describe(node['values'], names)}>"
    logical = node.get("logicalType")
    return f"{logical}" if logical else str(kind)
