"""Loaded schemas as values: :class:`Schema`, :class:`FieldInfo` and :class:`Vocabulary`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from broker.codec._errors import SchemaError
from broker.codec._types import Names, describe, resolve

NAMESPACE = "nz.tiaki"

SchemaKind = Literal["event", "type"]


@dataclass(frozen=True)
class Vocabulary:
    """The controlled vocabularies in ``schemas/vocabulary.json``.

    ``classifications`` names every kind of information a field may hold (policies refer to
    these); ``practice_steps`` names the six steps of the multi-agency operating model that
    event schemas map onto. Each maps a code to its meaning.
    """

    classifications: Mapping[str, str]
    practice_steps: Mapping[str, str]


@dataclass(frozen=True)
class FieldInfo:
    """One field of a schema, flattened for the policy engine's field plans.

    ``path`` joins field names with ``.``; ``[]`` marks the items of an array and ``{}`` the
    values of a map, and a nullable union is transparent: ``people[].person.date_of_birth``.
    ``classification`` is the field's own class; ``inherited`` holds the classes of the fields
    that contain it, outermost first, so a rule about ``location`` can reach every leaf of an
    ``Address`` field whatever the leaves are called.
    """

    path: str
    classification: str
    inherited: tuple[str, ...]
    doc: str
    avro_type: str
    nullable: bool
    leaf: bool

    @property
    def classes(self) -> frozenset[str]:
        """The field's own class together with every inherited class."""
        return frozenset((self.classification, *self.inherited))


@dataclass(frozen=True, eq=False)
class Schema:
    """One version of one named schema, parsed once and identified by its fingerprint.

    ``definition`` is the standalone JSON (shared types written out at their pinned versions,
    full names throughout); ``parsed`` is fastavro's parsed form used on the hot path;
    ``fingerprint`` is the SHA-256 of the Parsing Canonical Form (32 bytes), which is what a
    record carries to name its writer schema.
    """

    name: str
    version: int
    kind: SchemaKind
    definition: Mapping[str, Any]
    parsed: Any = field(repr=False)
    canonical_form: str = field(repr=False)
    fingerprint: bytes
    path: Path
    practice_step: str | None
    names: Names = field(repr=False)

    @property
    def short_name(self) -> str:
        """The name without the ``nz.tiaki.`` namespace."""
        return self.name.rpartition(".")[2]

    @property
    def label(self) -> str:
        """``nz.tiaki.TaskEvent v1``: how messages name a schema version."""
        return f"{self.name} v{self.version}"

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 64 lowercase hex digits."""
        return self.fingerprint.hex()

    @cached_property
    def fields(self) -> tuple[FieldInfo, ...]:
        """Every field at every depth, in declaration order (see :func:`flatten_fields`)."""
        return flatten_fields(self)


def flatten_fields(schema: Schema) -> tuple[FieldInfo, ...]:
    """Return every field of ``schema`` at every depth, in declaration order.

    A field whose type is a record appears itself (``leaf=False``) and is followed by its
    children. A recursive type raises :class:`SchemaError` (the loader refuses one first):
    flattened, its nested fields could only be one leaf, and a policy's action on that leaf
    would reach every class inside it, so the model fails closed instead.
    """
    out: list[FieldInfo] = []
    if schema.definition.get("type") not in ("record", "error"):
        return ()  # an enum or fixed has no fields
    cycle = find_recursion(schema.definition, schema.names)
    if cycle is not None:
        raise SchemaError(f"{schema.path}: {recursion_message(cycle)}")
    _flatten(schema.definition, schema.names, "", (), out)
    return tuple(out)


def find_recursion(node: Any, names: Names) -> tuple[str, ...] | None:
    """The first cycle of named types in ``node`` (``(A, B, A)``: A contains B contains A), or
    ``None`` if no named type contains itself at any depth."""
    done: set[str] = set()

    def walk(node: Any, stack: tuple[str, ...]) -> tuple[str, ...] | None:
        node = resolve(node, names)
        if isinstance(node, list):
            branches: list[Any] = node
        elif isinstance(node, Mapping) and node.get("type") in ("record", "error"):
            name = str(node["name"])
            if name in stack:
                return (*stack[stack.index(name) :], name)
            if name in done:
                return None
            branches = [fld["type"] for fld in node["fields"]]
            stack = (*stack, name)
        elif isinstance(node, Mapping) and node.get("type") == "array":
            branches = [node["items"]]
        elif isinstance(node, Mapping) and node.get("type") == "map":
            branches = [node["values"]]
        else:
            return None
        for branch in branches:
            cycle = walk(branch, stack)
            if cycle is not None:
                return cycle
        if isinstance(node, Mapping) and node.get("type") in ("record", "error"):
            done.add(str(node["name"]))
        return None

    return walk(node, ())


def recursion_message(cycle: tuple[str, ...]) -> str:
    """How errors name a recursive type: ``type nz.tiaki.P is recursive (P -> P)``."""
    chain = " -> ".join(name.rpartition(".")[2] for name in cycle)
    return (
        f"type {cycle[0]} is recursive ({chain}); recursive types are not supported "
        "(the policy engine could not classify the fields nested inside them)"
    )


def field_classifications(schema: Schema) -> tuple[tuple[str, str], ...]:
    """``(path, classification)`` for every field of ``schema``, in declaration order."""
    return tuple((info.path, info.classification) for info in flatten_fields(schema))


def _flatten(
    record: Mapping[str, Any],
    names: Names,
    prefix: str,
    inherited: tuple[str, ...],
    out: list[FieldInfo],
) -> None:
    for fld in record["fields"]:
        path = f"{prefix}{fld['name']}"
        node, suffix, nullable = _unwrap(fld["type"], names)
        classification = str(fld.get("classification", ""))
        nested = (
            node if isinstance(node, Mapping) and node.get("type") in ("record", "error") else None
        )
        out.append(
            FieldInfo(
                path=path,
                classification=classification,
                inherited=inherited,
                doc=str(fld.get("doc", "")),
                avro_type=describe(fld["type"], names),
                nullable=nullable,
                leaf=nested is None,
            )
        )
        if nested is not None:
            _flatten(nested, names, f"{path}{suffix}.", (*inherited, classification), out)


def _unwrap(node: Any, names: Names) -> tuple[Any, str, bool]:
    """Strip nullable unions, arrays and maps; return the inner type, the path suffix, nullability."""
    suffix = ""
    nullable = False
    while True:
        node = resolve(node, names)
        if isinstance(node, list):
            branches = [b for b in node if resolve(b, names) != "null"]
            nullable = nullable or len(branches) < len(node)
            if len(branches) != 1:
                return node, suffix, nullable
            node = branches[0]
        elif isinstance(node, Mapping) and node.get("type") == "array":
            suffix += "[]"
            node = node["items"]
        elif isinstance(node, Mapping) and node.get("type") == "map":
            suffix += "{}"
            node = node["values"]
        else:
            return node, suffix, nullable


def enum_symbols(schemas: Iterable[Schema], full_name: str) -> frozenset[str]:
    """The symbols of the enum named ``full_name`` (``nz.tiaki.PersonRole``) wherever
    ``schemas`` define it, inline or as a shared type; empty if none does."""
    symbols: set[str] = set()

    def walk(node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, namespace)
        elif isinstance(node, dict):
            space = node.get("namespace", namespace)
            name = node.get("name")
            if node.get("type") == "enum" and isinstance(name, str):
                full = name if "." in name else f"{space}.{name}"
                if full == full_name:
                    symbols.update(node.get("symbols", ()))
            for value in node.values():
                walk(value, space)

    for schema in schemas:
        walk(schema.definition, "")
    return frozenset(symbols)
