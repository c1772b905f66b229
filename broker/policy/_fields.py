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

A path may pick some items of a list by the value of one of their fields:
``people[role=child].person: drop`` applies to the people whose ``role`` is ``child``, and
beats every path without a selector and every class for the leaves it reaches (among
selectors, the most specific path wins). Each such value gives the list a variant plan for its
items; an item whose plan releases nothing is left out of the list. One selecting field per
list, and only for a list of records that is not itself inside a list.

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
#: Per name: list/map depth, the subtree of a record (None for a leaf), the leaf's action,
#: whether the leaf's values are JSON as they are (:func:`_json_plain`), and for a list of
#: records with variants, the selecting field and the items' subtree for each of its values.
_Tree = dict[str, tuple[int, "_Tree | None", str | None, bool, "_Select | None"]]
_Select = tuple[str, dict[str, "_Tree"]]
#: A variant: (list field's path, selecting field, value); its leaves' actions and sources.
VariantKey = tuple[str, str, str]
Variants = Mapping[VariantKey, tuple[Mapping[str, str], Mapping[str, str]]]

#: ``[role=child|other_whanau]`` in a field path.
_SELECTOR = re.compile(r"\[([A-Za-z_][A-Za-z0-9_]*)=([^\[\]]*)\]")


@dataclass(frozen=True)
class Selector:
    """A field path that picks list items: ``people[role=child].person`` (as written)."""

    path: str
    #: The list field: ``people``.
    list_path: str
    #: The items' field whose value picks them: ``role``.
    field: str
    values: tuple[str, ...]
    #: What the path reaches in every item: ``people[].person``.
    plain: str

    @property
    def discriminator(self) -> str:
        """The selecting field's own path: ``people[].role``."""
        return f"{self.list_path}[].{self.field}"

    def reaches(self, path: str) -> bool:
        return _within(path, self.plain)


def parse_selector(path: str) -> Selector | None:
    """The selector in ``path``, or None for a plain path."""
    found = _SELECTOR.search(path)
    if found is None:
        return None
    values = tuple(v.strip() for v in found.group(2).split("|"))
    head, tail = path[: found.start()], path[found.end() :]
    return Selector(path, head, found.group(1), values, f"{head}[]{tail}")


def variant_path(key: VariantKey, leaf: str) -> str:
    """``people[role=child].person.given_names`` for a leaf of variant ``key``."""
    list_path, name, value = key
    return f"{list_path}[{name}={value}]{leaf[len(list_path) + 2 :]}"


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
    #: Per list item variant (``people[role=child]``): its leaves' actions and sources.
    variants: Variants
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
    by_path: dict[str, str] = {}
    selected: list[tuple[Selector, str]] = []
    for path, action in fields:
        selector = parse_selector(path)
        if selector is None:
            by_path[path] = action
        else:
            selected.append((selector, action))
    by_class = dict(classes)
    actions: dict[str, str] = {}
    sources: dict[str, str] = {}
    for info in leaves(schema):
        action, source = _resolve(info, by_path, by_class)
        action = _fit(info, action)
        actions[info.path] = action
        sources[info.path] = f"{rule_id} {source}" if source != DEFAULT else DEFAULT
    return _build(schema, actions, sources, _variants(schema, selected, actions, sources, rule_id))


def _variants(
    schema: Schema,
    selected: list[tuple[Selector, str]],
    actions: Mapping[str, str],
    sources: Mapping[str, str],
    rule_id: str,
) -> dict[VariantKey, tuple[Mapping[str, str], Mapping[str, str]]]:
    """For each value a selector names, every leaf of its list's items: the most specific
    selector path for that value that reaches the leaf, or else the plan's own action."""
    fields_by_list: dict[str, str] = {}
    for selector, _ in selected:
        if fields_by_list.setdefault(selector.list_path, selector.field) != selector.field:
            raise ValueError(
                f"'{selector.list_path}' is picked by two fields ({fields_by_list[selector.list_path]}, "
                f"{selector.field}); one selecting field per list"
            )
    out: dict[VariantKey, tuple[Mapping[str, str], Mapping[str, str]]] = {}
    keys = sorted({(s.list_path, s.field, value) for s, _ in selected for value in s.values})
    for key in keys:
        list_path, name, value = key
        chosen = [
            (s, a)
            for s, a in selected
            if s.list_path == list_path and s.field == name and value in s.values
        ]
        items = f"{list_path}[]"
        v_actions: dict[str, str] = {}
        v_sources: dict[str, str] = {}
        for info in leaves(schema):
            if not _within(info.path, items):
                continue
            best: tuple[Selector, str] | None = None
            for s, a in chosen:
                if s.reaches(info.path) and (best is None or len(s.plain) > len(best[0].plain)):
                    best = (s, a)
            if best is None:
                v_actions[info.path] = actions[info.path]
                v_sources[info.path] = sources[info.path]
            else:
                v_actions[info.path] = _fit(info, best[1])
                v_sources[info.path] = f"{rule_id} fields.{best[0].path}"
        out[key] = (MappingProxyType(v_actions), MappingProxyType(v_sources))
    return out


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
    return _build(schema, actions, dict.fromkeys(actions, DEFAULT), {})


def with_forbidden(plan: FieldPlan, schema: Schema, forbidden: Mapping[str, str]) -> FieldPlan:
    """``plan`` with each path in ``forbidden`` dropped (its value names the forbid rule), in
    every list item variant too."""
    leaf_paths = _leaf_index(schema)[0]
    actions = {path: a for path, a in plan.actions.items() if path in leaf_paths}
    sources = {path: plan.sources[path] for path in actions}
    variants = {key: (dict(a), dict(s)) for key, (a, s) in plan.variants.items()}
    for path, rule_id in forbidden.items():
        for acts, srcs in [(actions, sources), *variants.values()]:
            if acts.get(path, "drop") != "drop":
                acts[path] = "drop"
                srcs[path] = f"{rule_id} (forbid)"
    return _build(schema, actions, sources, variants)


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


def _build(
    schema: Schema,
    actions: dict[str, str],
    sources: dict[str, str],
    variants: Mapping[VariantKey, tuple[Mapping[str, str], Mapping[str, str]]],
) -> FieldPlan:
    by_path, classes = _leaf_index(schema)
    tree = _tree(by_path, actions)
    every = [actions, *(v_actions for v_actions, _ in variants.values())]
    released = {
        cls
        for acts in every
        for path, action in acts.items()
        if action != "drop" and not path.startswith("header.")
        for cls in by_path[path].classes
    }
    shown = dict(actions)
    shown_sources = dict(sources)
    selects: dict[str, _Select] = {}
    for key, (v_actions, v_sources) in variants.items():
        list_path, name, value = key
        _node(tree, list_path, create=True)
        items = _node(_tree(by_path, v_actions), list_path, create=False)
        select = selects.setdefault(list_path, (name, {}))
        select[1][value] = items[1] if items is not None and items[1] is not None else {}
        for path, v_action in v_actions.items():
            if v_action != actions[path] or v_sources[path] != sources[path]:
                shown[variant_path(key, path)] = v_action
                shown_sources[variant_path(key, path)] = v_sources[path]
    for list_path, select in selects.items():
        parent, last = _parent(tree, list_path)
        depth, sub, list_action, plain, _ = parent[last]
        parent[last] = (depth, sub if sub is not None else {}, list_action, plain, select)
    return FieldPlan(
        schema=schema.name,
        version=schema.version,
        actions=MappingProxyType(shown),
        sources=MappingProxyType(shown_sources),
        released_classes=frozenset(released),
        minimised=any(action != "keep" for acts in every for action in acts.values()),
        classes=classes,
        recipient_specific=any("pseudonymise" in acts.values() for acts in every),
        variants=MappingProxyType(dict(variants)),
        _tree=tree,
        _projector=_compile_tree(tree),
    )


def _tree(by_path: Mapping[str, FieldInfo], actions: Mapping[str, str]) -> _Tree:
    """The projection tree of the leaves ``actions`` releases."""
    tree: _Tree = {}
    for path, action in actions.items():
        if action != "drop":
            _insert(tree, path, action, _json_plain(by_path[path].avro_type))
    return tree


def _parent(tree: _Tree, list_path: str) -> tuple[_Tree, str]:
    """The subtree holding the list field ``list_path`` (a path through records only), and the
    list's name in it."""
    *outer, last = list_path.split(".")
    node = tree
    for step in outer:
        sub = node[step][1]
        assert sub is not None
        node = sub
    return node, last


def _node(
    tree: _Tree, list_path: str, *, create: bool
) -> tuple[int, _Tree | None, str | None, bool, _Select | None] | None:
    """The list field's entry in ``tree``; with ``create``, made (empty) where the plan
    releases nothing in the list's items, so that its variants have a node to hang on."""
    *outer, last = list_path.split(".")
    node = tree
    for step in outer:
        entry = node.get(step)
        if entry is None or entry[1] is None:
            if not create:
                return None
            entry = (0, {}, None, True, None)
            node[step] = entry
        assert entry[1] is not None
        node = entry[1]
    if last not in node:
        if not create:
            return None
        node[last] = (1, {}, None, True, None)
    return node[last]


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
            node[step] = (step_depth, sub, None, True, None)
        else:
            sub = entry[1]
        node = sub
    node[name] = (depth, None, action, plain, None)


def _project(
    record: Mapping[str, Any], tree: _Tree, transforms: Mapping[str, Transform]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (depth, sub, action, _, select) in tree.items():
        if name in record:
            if select is not None:
                out[name] = _selected(record[name], sub, select, transforms)
            else:
                out[name] = _value(record[name], depth, sub, action, transforms)
    return out


def _selected(
    value: Any, sub: _Tree | None, select: _Select, transforms: Mapping[str, Transform]
) -> Any:
    """A list of records with item variants: each item through its own variant's tree, and
    an item whose tree releases nothing left out."""
    if value is None:
        return None
    name, trees = select
    out: list[dict[str, Any] | None] = []
    for item in value:
        if item is None:
            out.append(None)
            continue
        tree = trees.get(item.get(name), sub) if isinstance(item.get(name), str) else sub
        if tree:
            out.append(_project(item, tree, transforms))
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
    for name, (depth, sub, action, plain, select) in tree.items():
        if select is not None:
            others.append((name, _compile_selected(sub, select)))
        elif depth == 0 and sub is None and action == "keep":
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


def _compile_selected(sub: _Tree | None, select: _Select) -> _ValueFn:
    """:func:`_selected`, compiled: each variant's items projector built once."""
    name, trees = select
    base = _compile_tree(sub) if sub else None
    chosen = {value: _compile_tree(tree) if tree else None for value, tree in trees.items()}

    def selected(value: Any, transforms: Mapping[str, Transform]) -> Any:
        if value is None:
            return None
        out: list[dict[str, Any] | None] = []
        for item in value:
            if item is None:
                out.append(None)
                continue
            picked = item.get(name)
            fn = chosen.get(picked, base) if isinstance(picked, str) else base
            if fn is not None:
                out.append(fn(item, transforms))
        return out

    return selected


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
