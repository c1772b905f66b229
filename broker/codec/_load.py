"""Reading the schema folder: shape, pinned references, lint, parsing and fingerprints.

Layout (see ``schemas/README.md``)::

    schemas/vocabulary.json            classifications and practice steps
    schemas/types/<Name>/v<N>.avsc     shared named types (records and enums)
    schemas/events/<Name>/v<N>.avsc    event schemas; the first field is ``header``

A file refers to a shared type by name and pins the version it was written against in a
top-level ``"tiaki.uses": {"nz.tiaki.Address": 1}``. The loader writes each pinned type out in
full, so every version of every schema becomes one standalone Avro schema that never changes
once released: publishing ``Address`` v2 does not silently alter events written against v1.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from broker._yaml import SourceError, parse_json, read_text
from broker.codec._codec import decode
from broker.codec._errors import SchemaError, UnknownSchema
from broker.codec._model import (
    NAMESPACE,
    Schema,
    SchemaKind,
    Vocabulary,
    find_recursion,
    recursion_message,
)
from broker.codec._types import NAMED, PRIMITIVES, collect_names

USES = "tiaki.uses"
PRACTICE_STEP = "tiaki.practice_step"
HEADER_TYPE = f"{NAMESPACE}.EventHeader"
_KINDS: tuple[tuple[str, SchemaKind], ...] = (("types", "type"), ("events", "event"))
_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")


@dataclass(frozen=True)
class _Source:
    name: str
    version: int
    kind: SchemaKind
    raw: Mapping[str, Any]
    path: Path

    @property
    def pins(self) -> dict[str, int]:
        return dict(self.raw.get(USES, {}))


class SchemaSet:
    """Every version of every schema in one folder, looked up by name or by fingerprint."""

    def __init__(self, schemas: list[Schema], vocabulary: Vocabulary, folder: Path) -> None:
        self.folder = folder
        self.vocabulary = vocabulary
        self._by_fingerprint = {schema.fingerprint: schema for schema in schemas}
        self._versions: dict[str, tuple[Schema, ...]] = {}
        for schema in sorted(schemas, key=lambda s: (s.name, s.version)):
            self._versions[schema.name] = (*self._versions.get(schema.name, ()), schema)

    def __iter__(self) -> Iterator[Schema]:
        """Every schema version, by name then version."""
        for versions in self._versions.values():
            yield from versions

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def names(self) -> tuple[str, ...]:
        """Full names of every schema, sorted."""
        return tuple(self._versions)

    def events(self) -> tuple[Schema, ...]:
        """The latest version of every event schema."""
        return tuple(v[-1] for v in self._versions.values() if v[-1].kind == "event")

    def versions(self, name: str) -> tuple[Schema, ...]:
        """Every version of ``name`` (full or short), oldest first."""
        full = name if "." in name else f"{NAMESPACE}.{name}"
        try:
            return self._versions[full]
        except KeyError:
            raise UnknownSchema(f"no schema named {full}") from None

    def latest(self, name: str) -> Schema:
        """The newest version of ``name``."""
        return self.versions(name)[-1]

    def get(self, name: str, version: int) -> Schema:
        """Version ``version`` of ``name``."""
        for schema in self.versions(name):
            if schema.version == version:
                return schema
        raise UnknownSchema(f"no version {version} of schema {self.latest(name).name}")

    def by_fingerprint(self, fingerprint: bytes) -> Schema:
        """The schema whose fingerprint is ``fingerprint``; :class:`UnknownSchema` if none."""
        schema = self._by_fingerprint.get(fingerprint)
        if schema is None:
            raise UnknownSchema(f"no schema has fingerprint {bytes(fingerprint[:8]).hex()}…")
        return schema

    def decode(
        self, data: bytes, fingerprint: bytes, reader: Schema | None = None
    ) -> dict[str, Any]:
        """Decode a record whose writer has ``fingerprint``, read as ``reader``.

        ``reader`` defaults to the newest version of the writer's name, so the broker sees
        every record in the shape its current policies were written for. Raises
        :class:`UnknownSchema`, :class:`MalformedRecord` or :class:`IncompatibleSchema`.
        """
        writer = self.by_fingerprint(fingerprint)
        return decode(data, writer, self.latest(writer.name) if reader is None else reader)


def load_schemas(folder: Path) -> SchemaSet:
    """Load, lint, expand, parse and fingerprint every schema under ``folder``.

    Raises :class:`SchemaError` naming the file (and field) at the first fault; a recursive
    named type is refused, naming the file and the type.
    """
    vocabulary = _load_vocabulary(folder / "vocabulary.json")
    sources = _read_sources(folder)
    for source in sources.values():
        _lint(source, vocabulary)
    owners: dict[str, str] = {}
    schemas = [_build(source, sources, owners) for source in sources.values()]
    seen: dict[tuple[str, bytes], Schema] = {}
    for schema in schemas:
        twin = seen.setdefault((schema.name, schema.fingerprint), schema)
        if twin is not schema:
            raise SchemaError(
                f"{schema.path}: {schema.label} has the same wire form as v{twin.version} "
                "(the canonical form ignores docs, classifications, defaults and logical types): "
                "correct docs or classifications in place; to change a logical type, add a field"
            )
    return SchemaSet(schemas, vocabulary, folder)


def _load_json(path: Path) -> Any:
    try:
        return parse_json(path, read_text(path))
    except SourceError as exc:  # unreadable, not UTF-8, bad JSON or nested too deeply
        raise SchemaError(str(exc)) from None


def _load_vocabulary(path: Path) -> Vocabulary:
    data = _load_json(path)
    parts: dict[str, dict[str, str]] = {}
    for key in ("classifications", "practice_steps"):
        table = data.get(key) if isinstance(data, dict) else None
        if not isinstance(table, dict) or not table:
            raise SchemaError(f"{path}: '{key}' must be a non-empty object of code: meaning")
        for code, meaning in table.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", code) or not isinstance(meaning, str):
                raise SchemaError(f"{path}: {key}: {code!r} must be snake_case with a meaning")
        parts[key] = dict(table)
    return Vocabulary(parts["classifications"], parts["practice_steps"])


def _read_sources(folder: Path) -> dict[tuple[str, int], _Source]:
    if not folder.is_dir():
        raise SchemaError(f"{folder}: schema folder not found")
    sources: dict[tuple[str, int], _Source] = {}
    kinds: dict[str, SchemaKind] = {}
    for subdir, kind in _KINDS:
        base = folder / subdir
        if not base.is_dir():
            continue
        for type_dir in sorted(p for p in base.iterdir() if not p.name.startswith(".")):
            if not type_dir.is_dir():
                raise SchemaError(f"{type_dir}: expected a folder per schema, <Name>/v<N>.avsc")
            full = f"{NAMESPACE}.{type_dir.name}"
            versions: list[int] = []
            for file in sorted(type_dir.iterdir()):
                match = _VERSION_FILE.fullmatch(file.name)
                if match is None:
                    raise SchemaError(f"{file}: schema files are named v<N>.avsc")
                version = int(match.group(1))
                raw = _load_json(file)
                _check_identity(file, raw, type_dir.name)
                if kinds.setdefault(full, kind) != kind:
                    raise SchemaError(f"{file}: {full} is both a type and an event")
                sources[(full, version)] = _Source(full, version, kind, raw, file)
                versions.append(version)
            if sorted(versions) != list(range(1, len(versions) + 1)):
                raise SchemaError(
                    f"{type_dir}: versions must run v1..vN without gaps (keep old versions)"
                )
    if not sources:
        raise SchemaError(f"{folder}: no schemas under types/ or events/")
    return sources


def _check_identity(path: Path, raw: Any, dir_name: str) -> None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not isinstance(kind, str) or kind not in NAMED:
        raise SchemaError(f"{path}: a schema file holds one named type (record or enum)")
    _check_shape(path, raw)
    name = str(raw["name"])
    namespace = raw.get("namespace")
    full = name if "." in name else f"{namespace}.{name}"
    if full != f"{NAMESPACE}.{dir_name}":
        raise SchemaError(
            f"{path}: defines {full!r} but its folder says {NAMESPACE}.{dir_name}; "
            f"use namespace {NAMESPACE!r} and name {dir_name!r}"
        )
    uses = raw.get(USES, {})
    if not isinstance(uses, dict) or not all(
        isinstance(k, str)
        and k.startswith(f"{NAMESPACE}.")
        and isinstance(v, int)
        and not isinstance(v, bool)
        and v >= 1
        for k, v in uses.items()
    ):
        raise SchemaError(f"{path}: '{USES}' maps full type names to versions (integers from 1)")


# -- shape ------------------------------------------------------------------------------------

#: An Avro name (specification, "Names"); a full name joins them with dots. Field paths join
#: field names with ``.``, ``[]`` and ``{}``, so a field name holding one would be ambiguous.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_TYPE_WORDS = ", ".join(("record", "enum", "fixed", "array", "map", "a primitive"))


def _check_shape(path: Path, raw: Mapping[str, Any]) -> None:
    """Check that every node of ``raw`` has the JSON shape Avro gives it, before anything reads it.

    The lint, the expander, fastavro and every walker after them index schemas as Avro says they
    look (a field has a ``type``, ``symbols`` is a list of names, a name is a string). A file
    that does not is refused here, as :class:`SchemaError` naming the file and where in it
    (``fields[1].type``), rather than as a ``KeyError`` or ``TypeError`` from whichever walker
    met it first.
    """
    _shape_named(path, raw, "")


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _shape_error(path: Path, where: str, reason: str) -> SchemaError:
    return SchemaError(f"{path}: {where or 'schema'}: {reason}")


def _json_kind(value: Any) -> str:
    """How JSON names the kind of ``value``, for messages that must not quote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _shape_names(path: Path, node: Mapping[str, Any], key: str, where: str, full: bool) -> None:
    """``node[key]`` (when given) is a list of names: aliases, or an enum's symbols."""
    if key not in node:
        return
    values = node[key]
    pattern = _FULL_NAME if full else _NAME
    if not isinstance(values, list) or not all(
        isinstance(v, str) and pattern.fullmatch(v) for v in values
    ):
        raise _shape_error(path, _at(where, key), "must be a list of Avro names")


def _shape_type(path: Path, node: Any, where: str) -> None:
    if isinstance(node, str):
        if not node:
            raise _shape_error(path, where, "a type name cannot be empty")
    elif isinstance(node, list):
        for index, branch in enumerate(node):
            _shape_type(path, branch, _at(where, index))
    elif isinstance(node, Mapping):
        if "type" not in node:
            raise _shape_error(path, where, "a type object needs 'type'")
        kind = node["type"]
        if not isinstance(kind, str) or kind not in (*PRIMITIVES, *NAMED, "array", "map"):
            raise _shape_error(
                path,
                _at(where, "type"),
                f"must be {_TYPE_WORDS} (a named type is referred to by its name, a string)",
            )
        if kind in NAMED:
            _shape_named(path, node, where)
        elif kind in ("array", "map"):
            inner = "items" if kind == "array" else "values"
            if inner not in node:
                raise _shape_error(path, where, f"{_a(kind)} needs '{inner}'")
            _shape_type(path, node[inner], _at(where, inner))
        elif "logicalType" in node and not isinstance(node["logicalType"], str):
            raise _shape_error(path, _at(where, "logicalType"), "must be a string")
    else:
        raise _shape_error(
            path,
            where,
            f"a type is a name, a union (list) or an object, not {_json_kind(node)}",
        )


def _shape_named(path: Path, node: Mapping[str, Any], where: str) -> None:
    kind = node["type"]
    name = node.get("name")
    if not isinstance(name, str) or not _FULL_NAME.fullmatch(name):
        raise _shape_error(path, _at(where, "name"), f"{_a(kind)} needs a 'name' (an Avro name)")
    namespace = node.get("namespace", "")
    if not isinstance(namespace, str) or (namespace and not _FULL_NAME.fullmatch(namespace)):
        raise _shape_error(path, _at(where, "namespace"), "must be dotted Avro names")
    _shape_names(path, node, "aliases", where, full=True)
    if kind in ("record", "error"):
        fields = node.get("fields")
        if not isinstance(fields, list):
            raise _shape_error(path, _at(where, "fields"), f"{_a(kind)} needs a list of fields")
        seen: set[str] = set()
        for index, fld in enumerate(fields):
            at = _at(_at(where, "fields"), index)
            if not isinstance(fld, Mapping):
                raise _shape_error(path, at, f"a field is an object, not {_json_kind(fld)}")
            field_name = fld.get("name")
            if not isinstance(field_name, str) or not _NAME.fullmatch(field_name):
                raise _shape_error(
                    path, _at(at, "name"), "a field needs a 'name' (letters, digits, '_')"
                )
            if field_name in seen:
                raise _shape_error(path, _at(at, "name"), f"a second field named {field_name!r}")
            seen.add(field_name)
            if "type" not in fld:
                raise _shape_error(path, at, f"field {field_name!r} needs 'type'")
            _shape_type(path, fld["type"], _at(at, "type"))
            _shape_names(path, fld, "aliases", at, full=False)
    elif "fields" in node:  # the lint and the expander would walk them as a record's
        raise _shape_error(path, _at(where, "fields"), f"{_a(kind)} has no fields")
    if kind == "enum":
        if not isinstance(node.get("symbols"), list):
            raise _shape_error(path, _at(where, "symbols"), "an enum needs a list of symbols")
        _shape_names(path, node, "symbols", where, full=False)
        if "default" in node and node["default"] not in node["symbols"]:
            raise _shape_error(path, _at(where, "default"), "must be one of the enum's symbols")
    elif kind == "fixed":
        size = node.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _shape_error(path, _at(where, "size"), "a fixed needs a 'size' (0 or more)")


# -- lint -------------------------------------------------------------------------------------


def _lint(source: _Source, vocabulary: Vocabulary) -> None:
    """Check the rules the policy engine relies on, in this file's own definitions."""
    raw, path = source.raw, source.path
    if source.kind == "event":
        step = raw.get(PRACTICE_STEP)
        if not isinstance(step, str) or step not in vocabulary.practice_steps:
            known = ", ".join(vocabulary.practice_steps)
            raise SchemaError(f"{path}: '{PRACTICE_STEP}' must be one of: {known}")
        fields = raw.get("fields") if raw.get("type") == "record" else None
        first = fields[0] if isinstance(fields, list) and fields else {}
        if first.get("name") != "header" or _full(first.get("type")) != HEADER_TYPE:
            raise SchemaError(
                f"{path}: the first field of an event must be 'header' of type EventHeader"
            )
    elif PRACTICE_STEP in raw:
        raise SchemaError(f"{path}: only events carry '{PRACTICE_STEP}'")
    _lint_named(raw, path, "", vocabulary)


def _full(name: Any) -> Any:
    if isinstance(name, str) and name not in PRIMITIVES and "." not in name:
        return f"{NAMESPACE}.{name}"
    return name


def _lint_named(node: Mapping[str, Any], path: Path, where: str, vocabulary: Vocabulary) -> None:
    label = f"{where} ({node.get('name')})" if where else str(node.get("name"))
    if not isinstance(node.get("doc"), str) or not node["doc"].strip():
        raise SchemaError(f"{path}: type {label}: missing 'doc'")
    for fld in node.get("fields", ()):
        field_path = f"{where}.{fld.get('name')}" if where else str(fld.get("name"))
        if not isinstance(fld.get("doc"), str) or not fld["doc"].strip():
            raise SchemaError(f"{path}: field '{field_path}': missing 'doc'")
        classification = fld.get("classification")
        if not isinstance(classification, str) or classification not in vocabulary.classifications:
            known = ", ".join(vocabulary.classifications)
            raise SchemaError(
                f"{path}: field '{field_path}': classification {classification!r} "
                f"is not in the vocabulary ({known})"
            )
        _lint_type(fld["type"], path, field_path, vocabulary)


def _lint_type(node: Any, path: Path, where: str, vocabulary: Vocabulary) -> None:
    if isinstance(node, list):
        if len(node) != 2 or node[0] != "null" or node[1] == "null":
            raise SchemaError(
                f"{path}: field '{where}': unions must be [\"null\", T] (optional values only)"
            )
        _lint_type(node[1], path, where, vocabulary)
    elif isinstance(node, Mapping):
        kind = node.get("type")
        if kind in NAMED:
            _lint_named(node, path, where, vocabulary)
        elif kind == "array":
            _lint_type(node.get("items"), path, f"{where}[]", vocabulary)
        elif kind == "map":
            _lint_type(node.get("values"), path, f"{where}{{}}", vocabulary)


# -- expansion --------------------------------------------------------------------------------


def _build(
    source: _Source, sources: Mapping[tuple[str, int], _Source], owners: dict[str, str]
) -> Schema:
    expander = _Expander(sources, owners)
    definition = expander.named(source, NAMESPACE)
    if source.kind == "event":
        definition[PRACTICE_STEP] = source.raw[PRACTICE_STEP]
    unused = set(source.pins) - expander.referenced
    if unused:
        raise SchemaError(f"{source.path}: '{USES}' pins types it never uses: {sorted(unused)}")
    try:
        parsed = parse_schema(definition)
        canonical = to_parsing_canonical_form(parsed)
    except Exception as exc:  # fastavro raises several types for a bad schema; translate them all
        raise SchemaError(f"{source.path}: not a valid Avro schema: {exc}") from None
    names = collect_names(definition)
    # Avro allows a type to contain itself; the field model cannot give the fields inside it
    # their own paths and classes, so a policy would act on the whole nested record at once.
    cycle = find_recursion(definition, names)
    if cycle is not None:
        raise SchemaError(f"{source.path}: {recursion_message(cycle)}")
    return Schema(
        name=source.name,
        version=source.version,
        kind=source.kind,
        definition=definition,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=hashlib.sha256(canonical.encode("utf-8")).digest(),
        path=source.path,
        practice_step=source.raw.get(PRACTICE_STEP),
        names=names,
    )


class _Expander:
    """Writes one schema out standalone: pinned types in full at first use, names afterwards."""

    def __init__(self, sources: Mapping[tuple[str, int], _Source], owners: dict[str, str]) -> None:
        self.sources = sources
        self.owners = owners  # named type -> the file folder that defines it, across all files
        self.defined: dict[str, int | None] = {}  # name -> pinned version (None: defined inline)
        self.referenced: set[str] = set()
        self.source: _Source | None = None
        self.top: _Source | None = None

    def named(self, source: _Source, namespace: str) -> dict[str, Any]:
        outer, self.source = self.source, source
        self.top = self.top or source
        try:
            return self._definition(source.raw, namespace, source.version)
        finally:
            self.source = outer

    def _definition(
        self, raw: Mapping[str, Any], namespace: str, version: int | None
    ) -> dict[str, Any]:
        assert self.source is not None  # set by named()
        name = str(raw["name"])
        full = name if "." in name else f"{raw.get('namespace', namespace)}.{name}"
        owner = self.source.name
        if self.owners.setdefault(full, owner) != owner:
            raise SchemaError(
                f"{self.source.path}: type {full} is already defined by {self.owners[full]}; "
                "move it to schemas/types/ and pin it"
            )
        self.defined[full] = version if full == owner else None
        inner_ns = full.rpartition(".")[0]
        out: dict[str, Any] = {
            k: v for k, v in raw.items() if k not in ("namespace", USES, PRACTICE_STEP)
        }
        out["name"] = full
        if "fields" in raw:
            out["fields"] = [
                {**fld, "type": self._type(fld["type"], inner_ns)} for fld in raw["fields"]
            ]
        return out

    def _type(self, node: Any, namespace: str) -> Any:
        assert self.source is not None
        if isinstance(node, list):
            return [self._type(branch, namespace) for branch in node]
        if isinstance(node, Mapping):
            kind = node.get("type")
            if kind in NAMED:
                return self._definition(node, namespace, None)
            if kind == "array":
                return {**node, "items": self._type(node["items"], namespace)}
            if kind == "map":
                return {**node, "values": self._type(node["values"], namespace)}
            return dict(node)
        if not isinstance(node, str) or node in PRIMITIVES:
            return node
        full = node if "." in node else f"{namespace}.{node}"
        pins = self.source.pins
        if full in pins and self.source is self.top:
            self.referenced.add(full)
        if full in self.defined:
            pinned = pins.get(full)
            if pinned is not None and self.defined[full] not in (None, pinned):
                raise SchemaError(
                    f"{self.source.path}: pins {full} v{pinned}, but v{self.defined[full]} "
                    "is already in use in the same schema"
                )
            return full
        if full not in pins:
            raise SchemaError(
                f"{self.source.path}: refers to {full} without pinning its version in '{USES}'"
            )
        target = self.sources.get((full, pins[full]))
        if target is None:
            raise SchemaError(
                f"{self.source.path}: pins {full} v{pins[full]}, which does not exist"
            )
        return self.named(target, NAMESPACE)
