"""Schema evolution: can one version read data written with another?

The rules are Avro's schema resolution (specification, "Schema Resolution"), checked statically
so a break is found by ``tiaki schema check`` and ``make test`` rather than by a consumer at
run time. Two deliberate tightenings: a change of logical type (``timestamp-millis`` to
``long``, ``date`` to ``int``) counts as a type change, because the bytes would still decode
but mean something else; and every version is checked against *every* earlier one, both ways.

Why both ways, transitively: agencies upgrade on their own release cycles. The broker reads with
the newest version (backward: new reads old) while an agency's adapter may still read egress with
an older one (forward: old reads new), and a record may sit in a topic across several releases.
In practice: add or remove only fields that have defaults; add enum symbols only where the enum
has a default; never change a type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from broker.codec._model import Schema
from broker.codec._types import Names, describe, resolve

Direction = Literal["backward", "forward"]

# Writer type -> reader types it may be promoted to.
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


@dataclass(frozen=True)
class Incompatibility:
    """One reason ``reader`` cannot read data written with ``writer``."""

    reader: Schema
    writer: Schema
    field: str
    reason: str

    @property
    def direction(self) -> Direction:
        """``backward`` when a newer version cannot read older data, else ``forward``."""
        return "backward" if self.reader.version > self.writer.version else "forward"

    def __str__(self) -> str:
        where = f"field '{self.field}'" if self.field else "record"
        return (
            f"{self.reader.name}: v{self.reader.version} cannot read data written with "
            f"v{self.writer.version} ({self.direction}): {where}: {self.reason}"
        )


def check_compatibility(reader: Schema, writer: Schema) -> list[Incompatibility]:
    """Every reason ``reader`` cannot read what ``writer`` wrote; empty when it can."""
    problems: list[tuple[str, str]] = []
    _match(reader.definition, writer.definition, reader.names, writer.names, "", problems, set())
    return [Incompatibility(reader, writer, field, reason) for field, reason in problems]


def check_evolution(versions: list[Schema] | tuple[Schema, ...]) -> list[Incompatibility]:
    """Check each version of one schema against every earlier version, in both directions."""
    ordered = sorted(versions, key=lambda s: s.version)
    out: list[Incompatibility] = []
    for index, newer in enumerate(ordered):
        for older in ordered[:index]:
            out += check_compatibility(newer, older)
            out += check_compatibility(older, newer)
    return out


def _name(node: Any) -> str | None:
    return str(node["name"]) if isinstance(node, Mapping) and "name" in node else None


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    return node if isinstance(node, str) else str(node["type"])


def _logical(node: Any) -> str | None:
    return node.get("logicalType") if isinstance(node, Mapping) else None


def _shallow_match(reader: Any, writer: Any) -> bool:
    """Avro's rule for picking a reader union branch for a writer type."""
    r_kind, w_kind = _kind(reader), _kind(writer)
    if r_kind in ("record", "error", "enum", "fixed") or w_kind in (
        "record",
        "error",
        "enum",
        "fixed",
    ):
        aliases = reader.get("aliases", ()) if isinstance(reader, Mapping) else ()
        return r_kind == w_kind and (_name(reader) == _name(writer) or _name(writer) in aliases)
    if r_kind == w_kind:
        return True
    return r_kind in _PROMOTIONS.get(w_kind, set())


def _match(
    reader: Any,
    writer: Any,
    r_names: Names,
    w_names: Names,
    path: str,
    out: list[tuple[str, str]],
    seen: set[tuple[str, str, str]],
) -> None:
    reader, writer = resolve(reader, r_names), resolve(writer, w_names)
    if isinstance(writer, list):
        for branch in writer:
            _match(reader, branch, r_names, w_names, path, out, seen)
        return
    if isinstance(reader, list):
        for branch in reader:
            candidate = resolve(branch, r_names)
            if _shallow_match(candidate, writer):
                _match(candidate, writer, r_names, w_names, path, out, seen)
                return
        out.append((path, f"{describe(writer, w_names)} was made {describe(reader, r_names)}"))
        return
    r_kind, w_kind = _kind(reader), _kind(writer)
    changed = f"type changed from {describe(writer, w_names)} to {describe(reader, r_names)}"
    if _logical(reader) != _logical(writer):
        out.append((path, changed))
        return
    if r_kind != w_kind:
        if r_kind not in _PROMOTIONS.get(w_kind, set()):
            out.append((path, changed))
        return
    if r_kind in ("record", "error", "enum", "fixed") and not _shallow_match(reader, writer):
        out.append((path, f"named type changed from {_name(writer)} to {_name(reader)}"))
        return
    if r_kind in ("record", "error"):
        key = (path, str(_name(reader)), str(_name(writer)))
        if key in seen:
            return
        seen.add(key)
        _match_record(reader, writer, r_names, w_names, path, out, seen)
    elif r_kind == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            out.append(
                (path, f"enum {_name(reader)} lacks symbols {missing} and has no default symbol")
            )
    elif r_kind == "fixed" and reader["size"] != writer["size"]:
        out.append((path, f"fixed size changed from {writer['size']} to {reader['size']}"))
    elif r_kind == "array":
        _match(reader["items"], writer["items"], r_names, w_names, f"{path}[]", out, seen)
    elif r_kind == "map":
        _match(reader["values"], writer["values"], r_names, w_names, f"{path}{{}}", out, seen)


def _match_record(
    reader: Mapping[str, Any],
    writer: Mapping[str, Any],
    r_names: Names,
    w_names: Names,
    path: str,
    out: list[tuple[str, str]],
    seen: set[tuple[str, str, str]],
) -> None:
    written = {fld["name"]: fld for fld in writer["fields"]}
    for fld in reader["fields"]:
        sub = f"{path}.{fld['name']}" if path else str(fld["name"])
        source = next(
            (written[n] for n in (fld["name"], *fld.get("aliases", ())) if n in written), None
        )
        if source is not None:
            _match(fld["type"], source["type"], r_names, w_names, sub, out, seen)
        elif "default" not in fld:
            out.append((sub, "is not in the writer's version and has no default"))
