"""Field plans: an action for every leaf field of one schema, compiled once per rule and schema.

A permit's plan is an allow-list. Each leaf field of the event's schema gets the action of the
most specific selector that reaches it, in this order:

1. the field's own path in the rule's ``fields``;
2. the nearest enclosing path in ``fields`` (``safe_contact: drop`` reaches every leaf below);
3. the field's own class in the rule's ``classes`` -- unless a class of a field that contains
   it is named ``drop`` (``child: drop`` drops a child's name even under ``identifier: keep``);
4. otherwise ``drop``: a field no rule names never leaves (DESIGN.md "Policies"). An enclosing
   field's class never releases a leaf: ``operational: keep`` on the header does not release
   the narrative justification inside it.

A field-level forbid then drops every leaf any of its selectors reaches (own *or* inherited
class, path or enclosing path), whatever the permit said. Address generalisation keeps the
leaves at or above the named level (``suburb``, ``territorial_authority``, ``region``) and
drops the rest; date generalisation turns a date into its year or ``YYYY-MM``.

:meth:`FieldPlan.project` walks a record once through a pre-built tree, so minimising costs one
pass over the released fields and nothing for the dropped ones. Its copy is JSON-ready: a leaf
whose Avro type decodes to something JSON cannot write as it is (a date, a timestamp, a UUID)
is turned into text as it is copied (:func:`json_value`), so the broker writes the minimised
event with ``json.dumps`` and no per-value callback.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from broker.codec import FieldInfo, Schema
from broker.policy._model import ADDRESS_GENERALISATIONS, DATE_GENERALISATIONS

#: A transform applies one field action to one value; pseudonymise is bound to a recipient.
Transform = Callable[[Any], Any]
#: Per name: list/map depth, the subtree of a record (None for a leaf), the leaf's action, and
#: whether the leaf's values are JSON as they are (:func:`_json_plain`).
_Tree = dict[str, tuple[int, "_Tree | None", str | None, bool]]

DEFAULT = "default (no rule names it)"


@dataclass(frozen=True, eq=False)
class FieldPlan:
    """The action on every leaf field of one schema version, and where each action came from."""

    schema: str
    version: int
    actions: Mapping[str, str]
    sources: Mapping[str, str]
    #: Classes (own and inherited) of the released leaves outside the header.
    released_classes: frozenset[str]
    #: True when any leaf is not kept as is.
    minimised: bool
    #: Each leaf's own class (``schemas/vocabulary.json``).
    classes: Mapping[str, str]
    #: True when projecting depends on the recipient (a pseudonymised leaf): otherwise every
    #: recipient of the plan receives the same minimised record.
    recipient_specific: bool
    _tree: _Tree = field(repr=False)
    _projector: _Projector = field(repr=False)

    def project(
        self, record: Mapping[str, Any], transforms: Mapping[str, Transform]
    ) -> dict[str, Any]:
        """The minimised copy of ``record``: released fields only, each transformed, and
        JSON-ready: dates, timestamps and UUIDs are text (:func:`json_value`)."""
        return self._projector(record, transforms)

    def project_by_walk(
        self, record: Mapping[str, Any], transforms: Mapping[str, Transform]
    ) -> dict[str, Any]:
        """:meth:`project` by walking the plan's tree, with values as decoded (not made
        JSON-ready): the reference the compiled projector is tested against (the same output
        once :func:`json_value` is applied to every value, for every record and plan)."""
        return _project(record, self._tree, transforms)


@functools.cache
def leaves(schema: Schema) -> tuple[FieldInfo, ...]:
    """The leaf fields of ``schema`` (the ones that carry values); schemas never change."""
    return tuple(info for info in schema.fields if info.leaf)


def compile_plan(
    schema: Schema,
    fields: Iterable[tuple[str, str]],
    classes: Iterable[tuple[str, str]],
    rule_id: str,
) -> FieldPlan:
    """Resolve a permit's ``fields`` and ``classes`` against every leaf of ``schema``."""
    by_path = dict(fields)
    by_class = dict(classes)
    actions: dict[str, str] = {}
    sources: dict[str, str] = {}
    for info in leaves(schema):
        action, source = _resolve(info, by_path, by_class)
        action = _fit(info, action)
        actions[info.path] = action
        sources[info.path] = f"{rule_id} {source}" if source != DEFAULT else DEFAULT
    return _build(schema, actions, sources)


def forbidden_paths(
    schema: Schema, fields: Iterable[tuple[str, str]], classes: Iterable[tuple[str, str]]
) -> frozenset[str]:
    """The leaves of ``schema`` a field-level forbid withholds."""
    paths = {path for path, _ in fields}
    names = {name for name, _ in classes}
    out = set()
    for info in leaves(schema):
        if info.classes & names or any(_within(info.path, p) for p in paths):
            out.add(info.path)
    return frozenset(out)


def drop_all(schema: Schema) -> FieldPlan:
    """A plan that releases nothing (deny, refer, review with no permit)."""
    actions = {info.path: "drop" for info in leaves(schema)}
    return _build(schema, actions, dict.fromkeys(actions, DEFAULT))


def with_forbidden(plan: FieldPlan, schema: Schema, forbidden: Mapping[str, str]) -> FieldPlan:
    """``plan`` with each path in ``forbidden`` dropped (its value names the forbid rule)."""
    actions = dict(plan.actions)
    sources = dict(plan.sources)
    for path, rule_id in forbidden.items():
        if actions.get(path, "drop") != "drop":
            actions[path] = "drop"
            sources[path] = f"{rule_id} (forbid)"
    return _build(schema, actions, sources)


def _resolve(
    info: FieldInfo, by_path: Mapping[str, str], by_class: Mapping[str, str]
) -> tuple[str, str]:
    if info.path in by_path:
        return by_path[info.path], f"fields.{info.path}"
    best: str | None = None
    for path in by_path:
        if _within(info.path, path) and (best is None or len(path) > len(best)):
            best = path
    if best is not None:
        return by_path[best], f"fields.{best}"
    own = info.classification
    if own not in by_class:
        return "drop", DEFAULT
    for outer in reversed(info.inherited):
        if by_class.get(outer) == "drop":
            return "drop", f"classes.{outer} (enclosing field)"
    return by_class[own], f"classes.{own}"


def _within(path: str, ancestor: str) -> bool:
    """``people[].person.iwi`` is within ``people[].person`` and ``people`` (and itself)."""
    if path == ancestor:
        return True
    if not path.startswith(ancestor):
        return False
    rest = path[len(ancestor) :]
    return rest.startswith(".") or rest.startswith("[]") or rest.startswith("{}")


def _fit(info: FieldInfo, action: str) -> str:
    """Apply generalisations to a leaf: fail closed (drop) where they cannot apply."""
    if action in DATE_GENERALISATIONS:
        return action if ("date" in info.avro_type or "timestamp" in info.avro_type) else "drop"
    kept = ADDRESS_GENERALISATIONS.get(action)
    if kept is not None:
        name = info.path.rpartition(".")[2]
        return action if name in kept else "drop"
    return action


@functools.cache
def _leaf_index(schema: Schema) -> tuple[Mapping[str, FieldInfo], Mapping[str, str]]:
    """Each leaf by path, and each leaf's own class (shared by every plan for ``schema``)."""
    by_path = {info.path: info for info in leaves(schema)}
    classes = MappingProxyType({path: info.classification for path, info in by_path.items()})
    return by_path, classes


def _build(schema: Schema, actions: dict[str, str], sources: dict[str, str]) -> FieldPlan:
    released: set[str] = set()
    by_path, classes = _leaf_index(schema)
    tree: _Tree = {}
    minimised = False
    for path, action in actions.items():
        if action != "keep":
            minimised = True
        if action == "drop":
            continue
        info = by_path[path]
        if not path.startswith("header."):
            released |= info.classes
        _insert(tree, path, action, _json_plain(info.avro_type))
    return FieldPlan(
        schema=schema.name,
        version=schema.version,
        actions=MappingProxyType(actions),
        sources=MappingProxyType(sources),
        released_classes=frozenset(released),
        minimised=minimised,
        classes=classes,
        recipient_specific="pseudonymise" in actions.values(),
        _tree=tree,
        _projector=_compile_tree(tree),
    )


@functools.cache
def _steps(path: str) -> tuple[tuple[str, int], ...]:
    """``people[].person.iwi`` as (name, list/map depth) per step; leaf paths are few."""
    return tuple(
        (part.replace("[]", "").replace("{}", ""), part.count("[]") + part.count("{}"))
        for part in path.split(".")
    )


#: Parts of a described Avro type (:func:`broker.codec.FieldInfo.avro_type`) whose decoded
#: values JSON writes as they are; enums (``enum nz.tiaki.Consent``) decode to text too.
_PLAIN_JSON_TYPES = frozenset(
    {"union", "array", "map", "null", "boolean", "int", "long", "float", "double", "string"}
)


def _json_plain(avro_type: str) -> bool:
    """Whether every value a leaf of ``avro_type`` (``union<null,date>``) decodes to is JSON as
    it is. Logical types (dates, timestamps, UUIDs) and bytes are not; nor is any type this
    does not know, which only costs the leaf a :func:`json_value` call."""
    return all(
        part in _PLAIN_JSON_TYPES or part.startswith("enum ")
        for part in re.split(r"[<>,]", avro_type)
        if part
    )


def json_value(value: Any) -> Any:
    """``value`` as the minimised event's JSON carries it: a date or a timestamp in ISO 8601
    (``isoformat``), a UUID as text, bytes in base64; anything else as it is.

    The one definition of how the broker writes these: :meth:`FieldPlan.project` applies it
    to the leaves that need it, and ``body_json`` uses it for any value still left.
    """
    if isinstance(value, dt.date):  # a datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _insert(tree: _Tree, path: str, action: str, plain: bool) -> None:
    *inner, (name, depth) = _steps(path)
    node = tree
    for step, step_depth in inner:
        entry = node.get(step)
        if entry is None or entry[1] is None:
            sub: _Tree = {}
            node[step] = (step_depth, sub, None, True)
        else:
            sub = entry[1]
        node = sub
    node[name] = (depth, None, action, plain)


def _project(
    record: Mapping[str, Any], tree: _Tree, transforms: Mapping[str, Transform]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (depth, sub, action, _) in tree.items():
        if name in record:
            out[name] = _value(record[name], depth, sub, action, transforms)
    return out


def _value(
    value: Any,
    depth: int,
    sub: _Tree | None,
    action: str | None,
    transforms: Mapping[str, Transform],
) -> Any:
    if value is None:
        return None
    if depth:
        items = value.values() if isinstance(value, Mapping) else value
        return [_value(item, depth - 1, sub, action, transforms) for item in items]
    if sub is not None:
        return _project(value, sub, transforms)
    transform = transforms[action or "drop"]
    if isinstance(value, list):
        return [transform(item) for item in value]
    return transform(value)


#: A compiled projection: record and transforms in, minimised copy out.
_Projector = Callable[[Mapping[str, Any], Mapping[str, Transform]], dict[str, Any]]
_ValueFn = Callable[[Any, Mapping[str, Transform]], Any]


def _compile_tree(tree: _Tree) -> _Projector:
    """The tree as nested closures, so projecting does no per-leaf dispatch at run time.

    Minimising is on the broker's hot path (one projection per recipient per event), and the
    tree walk spent most of its time deciding, leaf by leaf, what each node was. Here each node
    is decided once: kept scalar leaves are copied by name (as text if they are dates, times
    or UUIDs), everything else calls its own closure. Output is :func:`_project`'s with
    :func:`json_value` applied to every value (a test holds them together).
    """
    kept: list[str] = []
    kept_text: list[str] = []
    others: list[tuple[str, _ValueFn]] = []
    for name, (depth, sub, action, plain) in tree.items():
        if depth == 0 and sub is None and action == "keep":
            (kept if plain else kept_text).append(name)
        else:
            others.append((name, _compile_value(depth, sub, action, plain)))

    def project(record: Mapping[str, Any], transforms: Mapping[str, Transform]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in kept:
            if name in record:
                value = record[name]
                out[name] = list(value) if type(value) is list else value
        for name in kept_text:
            if name in record:
                value = record[name]
                if type(value) is list:
                    out[name] = [json_value(item) for item in value]
                else:
                    out[name] = json_value(value)
        for name, fn in others:
            if name in record:
                out[name] = fn(record[name], transforms)
        return out

    return project


def _compile_value(depth: int, sub: _Tree | None, action: str | None, plain: bool) -> _ValueFn:
    if depth == 1 and sub is not None:  # a list of records, the commonest list: one call each
        each = _compile_tree(sub)

        def records(value: Any, transforms: Mapping[str, Transform]) -> Any:
            if value is None:
                return None
            values = value if type(value) is list else _items(value)
            return [None if item is None else each(item, transforms) for item in values]

        return records
    if depth:
        inner = _compile_value(depth - 1, sub, action, plain)

        def items(value: Any, transforms: Mapping[str, Transform]) -> Any:
            if value is None:
                return None
            values = value if type(value) is list else _items(value)
            return [inner(item, transforms) for item in values]

        return items
    if sub is not None:
        projector = _compile_tree(sub)

        def record(value: Any, transforms: Mapping[str, Transform]) -> Any:
            return None if value is None else projector(value, transforms)

        return record
    name = action or "drop"

    def leaf(value: Any, transforms: Mapping[str, Transform]) -> Any:
        if value is None:
            return None
        transform = transforms[name]
        if isinstance(value, list):
            return [transform(item) for item in value]
        return transform(value)

    def text_leaf(value: Any, transforms: Mapping[str, Transform]) -> Any:
        if value is None:
            return None
        transform = transforms[name]
        if isinstance(value, list):
            return [json_value(transform(item)) for item in value]
        return json_value(transform(value))

    return leaf if plain else text_leaf


def _items(value: Any) -> Any:
    """The items of a list or map value (a map's values, as :func:`_value` takes them)."""
    return value.values() if isinstance(value, Mapping) else value


def keep(value: Any) -> Any:
    """``keep``: the value as it is."""
    return value


def mask(value: Any) -> Any:
    """``mask``: the field is shown to exist, its value is not (``***`` for text)."""
    return "***" if isinstance(value, str) else None


def year(value: Any) -> Any:
    """``generalise:year``: a date or timestamp becomes its year."""
    if isinstance(value, dt.date):
        return value.year
    if isinstance(value, str) and value[:4].isdigit():
        return int(value[:4])
    return None


def month(value: Any) -> Any:
    """``generalise:month``: a date or timestamp becomes ``YYYY-MM``."""
    if isinstance(value, dt.date):
        return f"{value.year:04d}-{value.month:02d}"
    if isinstance(value, str) and len(value) >= 7:
        return value[:7]
    return None


def transforms_for(pseudonym: Transform) -> dict[str, Transform]:
    """Every field action as a function, with ``pseudonymise`` bound to one recipient."""
    table: dict[str, Transform] = {
        "keep": keep,
        "mask": mask,
        "pseudonymise": pseudonym,
        "generalise:year": year,
        "generalise:month": month,
    }
    for level in ADDRESS_GENERALISATIONS:
        table[level] = keep  # the leaf survived generalisation: its value goes as is
    return table
