"""Reading a policy folder into a :class:`PolicySet`, checking every name against its vocabulary.

Layout (``policies/``)::

    policy.yaml         name, version, required approvals, where everything else is
    vocabulary.yaml     purposes, routes (in LAW.md's order), legal bases, obligations,
                        reason codes, review queues, LAW.md references
    agencies.yaml       the agency registry (broker.registry)
    rules/*.yaml        sharing rules
    tests/*.yaml        scenarios (``tiaki policy test``)
    approvals/*.json    officers' signatures over the policy hash (``tiaki policy sign``)

Field classes come from ``schemas/vocabulary.json`` and field paths from the event schemas,
so a policy can never name a class or field the schemas do not have. Every fault is collected
with its ``file:line:column`` and raised together as :class:`PolicyValidationError`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from broker.codec import CodecError, Schema, SchemaSet, enum_symbols, load_schemas
from broker.policy._errors import PolicySourceError, PolicyValidationError
from broker.policy._fields import Selector, parse_selector
from broker.policy._model import (
    ADDRESS_GENERALISATIONS,
    CHILD_CONSULTED,
    CONSENT,
    DATE_GENERALISATIONS,
    FIELD_ACTIONS,
    PARTIES,
    PROVENANCE,
    REQUESTER_ROLES,
    RISK_LEVELS,
    Conditions,
    Effect,
    LegalBasis,
    PartyCondition,
    PolicySet,
    PolicyVocabulary,
    RequestKind,
    Route,
    Rule,
    Trigger,
    Where,
)
from broker.policy._reader import Reader, suggest
from broker.registry import NATIONAL, AgencyKind, Registry, RegistryError, StatusKind, load_registry

#: The routes LAW.md names, in the order it tries them; a vocabulary may add others between.
LAW_ROUTE_ORDER = ("imminent_danger", "ota_s66", "fva_s20", "ota_s66c", "privacy_ipp11")

_SETTINGS_KEYS = {
    "format",
    "name",
    "version",
    "required_approvals",
    "registry",
    "schemas",
    "vocabulary",
    "rules",
    "tests",
    "approvals",
    "roster",
}
#: A permit's ``purpose`` that matches every stated purpose, ``unknown`` included.
ANY_PURPOSE = "any"
_VOCAB_KEYS = {"purposes", "routes", "legal_bases", "obligations", "reasons", "queues", "law"}
_RULE_KEYS = {
    "id",
    "effect",
    "description",
    "law",
    "legal_basis",
    "purpose",
    "when",
    "valid_from",
    "valid_until",
    "fields",
    "classes",
    "obligations",
    "reason",
    "queue",
    "health_rule",
}
_PARTY_KEYS = {"agency", "kind", "status", "region", "kaupapa_maori", "can_act", "overseas"}
_WORD_CONDITIONS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "risk": ("risk", RISK_LEVELS),
    "consent": ("consent", CONSENT),
    "child_consulted": ("child_consulted", CHILD_CONSULTED),
    "provenance": ("provenance", PROVENANCE),
    "requester_role": ("requester_role", REQUESTER_ROLES),
    "on_behalf_of": ("on_behalf_of", PARTIES),
}
_FLAG_CONDITIONS = (
    "same_region",
    "imminent_danger",
    "privileged",
    "suppression_order",
    "maori_data",
    "participates",
    "child_involved",
    "addressee",
)
_WHEN_KEYS = (
    {"kind", "event", "source", "recipient", "legal_route", "purpose"}
    | set(_WORD_CONDITIONS)
    | set(_FLAG_CONDITIONS)
)


#: Hand-over triggers no route may be exempt from (``exempt_triggers``), with the LAW.md rule
#: that says so. The others are judgements a statute may settle for its route (OTA s66 lets
#: only privilege be withheld; imminent danger shares at once and reviews after), but no route
#: makes privileged or suppressed material shareable without a person, and none makes an
#: unconfirmed statutory status good enough.
NEVER_EXEMPT: Mapping[str, str] = {
    Trigger.PRIVILEGED_MATERIAL.value: (
        "LAW.md FVA-08 (data classed privileged or suppressed goes to review, "
        "never automatic share)"
    ),
    Trigger.RECIPIENT_STATUS_UNCONFIRMED.value: (
        'LAW.md FVA-01 (unknown status is never "allowed")'
    ),
    # It fires only on the FVA s20 and OTA s66C routes; imminent danger is outside it.
    Trigger.JUSTIFICATION_MISSING.value: (
        "LAW.md FVA-03 (a justification and an accountable person or role travel with "
        "proactive disclosures and requests)"
    ),
    Trigger.RECIPIENT_OVERSEAS.value: "LAW.md PA-06 (recipients outside New Zealand need a basis)",
}

#: Routes open only to parties with a statutory status, and the statuses that open them.
_ROUTE_STATUS = {
    "fva_s20": frozenset({"family_violence_agency", "social_services_practitioner_employer"}),
    "ota_s66c": frozenset({"child_welfare_protection_agency"}),
}
_ROUTE_LAW = {"fva_s20": "LAW.md FVA-01", "ota_s66c": "LAW.md OT-01"}


def load_policy_set(folder: Path) -> PolicySet:
    """Read and check the policy set in ``folder``.

    Raises :class:`PolicyValidationError` listing every fault with its ``file:line:column``.
    """
    errors: list[PolicySourceError] = []
    result = _Loader(folder, errors).run()
    if errors or result is None:
        if not errors:  # pragma: no cover - the loader records why it gave up
            errors.append(PolicySourceError(folder / "policy.yaml", 1, 1, "policy set unreadable"))
        raise PolicyValidationError(errors)
    return result


class _Loader:
    def __init__(self, folder: Path, errors: list[PolicySourceError]) -> None:
        self.folder = folder
        self.errors = errors

    def run(self) -> PolicySet | None:
        settings_path = self.folder / "policy.yaml"
        reader = Reader(settings_path, self.errors)
        data = reader.load()
        if data is None:
            return None
        settings = reader.mapping(data, "policy.yaml")
        if settings is None:
            return None
        reader.keys(settings, _SETTINGS_KEYS, "policy.yaml")
        name = reader.text(settings, "name", "policy.yaml", required=True) or ""
        version = reader.text(settings, "version", "policy.yaml", required=True) or ""
        approvals = settings.get("required_approvals", 2)
        if not isinstance(approvals, int) or isinstance(approvals, bool) or approvals < 1:
            reader.error((settings, "required_approvals"), "required_approvals must be 1 or more")
            approvals = 1

        def where(key: str, default: str) -> Path | None:
            value = reader.text(settings, key, "policy.yaml") or default
            # No file system takes a NUL in a path, and Python refuses one with a bare
            # ValueError: refuse it here, at the value, like any other bad setting.
            if "\0" in value:
                reader.error((settings, key), f"'{key}' must be a path without NUL characters")
                return None
            return (self.folder / value).resolve()

        registry = self._registry(where("registry", "agencies.yaml"))
        schemas = self._schemas(where("schemas", "../schemas"), reader, settings)
        vocabulary = self._vocabulary(where("vocabulary", "vocabulary.yaml"))
        rules_folder = where("rules", "rules")
        if registry is None or schemas is None or vocabulary is None or rules_folder is None:
            return None
        rules = _RuleReader(vocabulary, registry, schemas, self.errors).read_folder(rules_folder)
        _check_shadowed(rules, registry, self.errors)
        tests = where("tests", "tests")
        approvals_folder = where("approvals", "approvals")
        roster = where("roster", "officers.yaml")
        if tests is None or approvals_folder is None or roster is None:
            return None
        return PolicySet(
            folder=self.folder,
            name=name,
            version=version,
            required_approvals=approvals,
            vocabulary=vocabulary,
            rules=tuple(rules),
            registry=registry,
            schemas=schemas,
            tests_folder=tests,
            approvals_folder=approvals_folder,
            roster_path=roster,
        )

    def _registry(self, path: Path | None) -> Registry | None:
        if path is None:  # refused where it was given
            return None
        try:
            return load_registry(path)
        except RegistryError as exc:
            self.errors.append(PolicySourceError(exc.path, exc.line, exc.column, exc.reason))
            return None

    def _schemas(
        self, path: Path | None, reader: Reader, settings: CommentedMap
    ) -> SchemaSet | None:
        if path is None:  # refused where it was given
            return None
        try:
            return load_schemas(path)
        except CodecError as exc:
            spot = (settings, "schemas") if "schemas" in settings else None
            reader.error(spot, f"schemas: {exc}")
            return None

    def _vocabulary(self, path: Path | None) -> PolicyVocabulary | None:
        if path is None:  # refused where it was given
            return None
        reader = Reader(path, self.errors)
        data = reader.load()
        if data is None:
            return None
        root = reader.mapping(data, "the vocabulary")
        if root is None:
            return None
        reader.keys(root, _VOCAB_KEYS, "the vocabulary")
        tables: dict[str, dict[str, str]] = {}
        for key in ("purposes", "obligations", "reasons", "queues", "law"):
            tables[key] = self._table(reader, root, key)
        routes = self._routes(reader, root)
        route_ids = {r.id for r in routes}
        bases: dict[str, LegalBasis] = {}
        node = root.get("legal_bases")
        if reader.mapping(node, "legal_bases", (root, "legal_bases")) is not None:
            assert isinstance(node, CommentedMap)
            for basis_id, body in node.items():
                entry = reader.mapping(body, f"legal basis '{basis_id}'", (node, basis_id))
                if entry is None:
                    continue
                reader.keys(entry, {"route", "description"}, f"legal basis '{basis_id}'")
                route = reader.text(entry, "route", f"legal basis '{basis_id}'", required=True)
                if route is not None and route not in route_ids:
                    reader.error(
                        (entry, "route"), f"unknown route '{route}'{suggest(route, route_ids)}"
                    )
                bases[str(basis_id)] = LegalBasis(
                    str(basis_id), route or "", reader.text(entry, "description", "") or ""
                )
        return PolicyVocabulary(
            purposes=tables["purposes"],
            routes=routes,
            legal_bases=bases,
            obligations=tables["obligations"],
            reasons=tables["reasons"],
            queues=tables["queues"],
            law=tables["law"],
        )

    def _table(self, reader: Reader, root: CommentedMap, key: str) -> dict[str, str]:
        node = root.get(key)
        if node is None:
            reader.error_at(root, f"the vocabulary needs '{key}'")
            return {}
        if reader.mapping(node, key, (root, key)) is None:
            return {}
        assert isinstance(node, CommentedMap)
        out = {}
        for code, meaning in node.items():
            if not isinstance(meaning, str) or not meaning.strip():
                reader.error((node, code), f"{key}: '{code}' needs a meaning")
            out[str(code)] = str(meaning)
        return out

    def _routes(self, reader: Reader, root: CommentedMap) -> tuple[Route, ...]:
        node = root.get("routes")
        if not isinstance(node, CommentedSeq):
            reader.error((root, "routes") if "routes" in root else None, "routes must be a list")
            return ()
        routes: list[Route] = []
        for index, body in enumerate(node):
            entry = reader.mapping(body, "a route", (node, index))
            if entry is None:
                continue
            reader.keys(entry, {"id", "description", "exempt_triggers"}, "a route")
            route_id = reader.text(entry, "id", "a route", required=True) or ""
            exempt = reader.words(entry, "exempt_triggers", [t.value for t in Trigger], "trigger")
            if exempt:
                self._never_exempt(reader, entry, route_id)
            routes.append(
                Route(
                    route_id,
                    reader.text(entry, "description", "") or "",
                    frozenset(Trigger(t) for t in exempt or ()),
                )
            )
        order = [r.id for r in routes if r.id in LAW_ROUTE_ORDER]
        if tuple(order) != LAW_ROUTE_ORDER:
            reader.error(
                (root, "routes"),
                "routes must include " + ", ".join(LAW_ROUTE_ORDER) + " in that order (LAW.md)",
                value=False,
            )
        return tuple(routes)

    def _never_exempt(self, reader: Reader, entry: CommentedMap, route_id: str) -> None:
        for item, spot in reader.items(entry, "exempt_triggers"):
            law = NEVER_EXEMPT.get(item) if isinstance(item, str) else None
            if law is not None:
                reader.error(spot, f"route '{route_id}' cannot be exempt from {item}: {law}")


class _RuleReader:
    """Reads rule files, checking each name against the vocabularies, registry and schemas."""

    def __init__(
        self,
        vocabulary: PolicyVocabulary,
        registry: Registry,
        schemas: SchemaSet,
        errors: list[PolicySourceError],
    ) -> None:
        self.vocabulary = vocabulary
        self.registry = registry
        self.schemas = schemas
        self.errors = errors
        self.classes = tuple(schemas.vocabulary.classifications)
        self.events = {s.short_name: s.name for s in schemas.events()}
        self.regions = (*registry.regions, NATIONAL)
        self.seen: dict[str, Where] = {}

    def read_folder(self, folder: Path) -> list[Rule]:
        files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        if not files:
            self.errors.append(PolicySourceError(folder, 1, 1, "no rule files (*.yaml) found"))
        rules: list[Rule] = []
        for path in files:
            rules.extend(self.read_file(path))
        return rules

    def read_file(self, path: Path) -> list[Rule]:
        reader = Reader(path, self.errors)
        data = reader.load()
        if data is None:
            return []
        root = reader.mapping(data, "a rule file")
        if root is None:
            return []
        reader.keys(root, {"rules"}, "a rule file")
        node = root.get("rules")
        if not isinstance(node, CommentedSeq):
            reader.error_at(root, "a rule file needs 'rules:', a list of rules")
            return []
        out = []
        for index, body in enumerate(node):
            rule = self.read_rule(reader, node, index, body)
            if rule is not None:
                out.append(rule)
        return out

    def read_rule(self, reader: Reader, parent: CommentedSeq, index: int, body: Any) -> Rule | None:
        node = reader.mapping(body, "a rule", (parent, index))
        if node is None:
            return None
        line, column = reader.start(node)
        where = Where(reader.path, line, column)
        reader.keys(node, _RULE_KEYS, "a rule")
        vocab = self.vocabulary
        rule_id = reader.text(node, "id", "a rule", required=True) or f"<rule at {where}>"
        if "id" in node:
            first = self.seen.get(rule_id)
            if first is not None:
                reader.error((node, "id"), f"duplicate rule id '{rule_id}' (first at {first})")
            else:
                self.seen[rule_id] = where
        effect_word = reader.text(node, "effect", f"rule '{rule_id}'", required=True)
        effects = [e.value for e in Effect]
        if effect_word is not None and effect_word not in effects:
            reader.error(
                (node, "effect"), f"unknown effect '{effect_word}'{suggest(effect_word, effects)}"
            )
            effect_word = None
        effect = Effect(effect_word) if effect_word else Effect.FORBID
        law = reader.words(node, "law", vocab.law, "LAW.md reference") or frozenset()
        legal_basis = reader.text(node, "legal_basis", f"rule '{rule_id}'")
        if legal_basis is not None and legal_basis not in vocab.legal_bases:
            reader.error(
                (node, "legal_basis"),
                f"unknown legal basis '{legal_basis}'{suggest(legal_basis, vocab.legal_bases)}",
            )
        if node.get("purpose") == ANY_PURPOSE and effect is Effect.PERMIT:
            # Whatever purpose the source states, or none: for a route whose law asks for
            # none (a report of concern, OTA s15: anyone may report, and it always reaches
            # Oranga Tamariki). Written out, so no permit forgets its purpose by omission.
            purposes = None
        else:
            purposes = reader.words(node, "purpose", vocab.purposes, "purpose")
        if effect is Effect.PERMIT:
            if "legal_basis" not in node:
                reader.error_at(
                    node, f"permit '{rule_id}' needs a legal_basis (every permit names one)"
                )
            if purposes is None and "purpose" not in node:
                reader.error_at(
                    node, f"permit '{rule_id}' needs a purpose (every permit names one)"
                )
        elif "legal_basis" in node:
            reader.error(
                (node, "legal_basis"),
                f"only a permit takes a legal_basis ('{rule_id}' is a {effect})",
                value=False,
            )
        reason = reader.text(node, "reason", f"rule '{rule_id}'")
        if reason is not None and reason not in vocab.reasons:
            reader.error(
                (node, "reason"), f"unknown reason code '{reason}'{suggest(reason, vocab.reasons)}"
            )
        if effect is not Effect.PERMIT and reason is None:
            reader.error_at(
                node, f"{effect} '{rule_id}' needs a reason code (a decision records why)"
            )
        queue = reader.text(node, "queue", f"rule '{rule_id}'")
        if queue is not None and queue not in vocab.queues:
            reader.error((node, "queue"), f"unknown queue '{queue}'{suggest(queue, vocab.queues)}")
        if effect in (Effect.REVIEW, Effect.REFER) and queue is None:
            reader.error_at(node, f"{effect} '{rule_id}' needs a queue")
        obligations = (
            reader.words(node, "obligations", vocab.obligations, "obligation") or frozenset()
        )
        valid_from = reader.date(node, "valid_from")
        valid_until = reader.date(node, "valid_until")
        if valid_from and valid_until and valid_until < valid_from:
            reader.error((node, "valid_until"), "valid_until is before valid_from")
        when = self.conditions(reader, node, rule_id, purposes)
        if effect is Effect.PERMIT and legal_basis is not None and legal_basis in vocab.legal_bases:
            self.check_route_status(
                reader, node, rule_id, vocab.legal_bases[legal_basis].route, when
            )
        schemas = self.event_schemas(when)
        if effect is Effect.FORBID:
            fields = self.forbid_fields(reader, node, schemas)
            classes = self.forbid_classes(reader, node)
        elif effect is Effect.PERMIT:
            fields = self.plan_fields(reader, node, schemas)
            classes = self.plan_classes(reader, node)
        else:
            for key in ("fields", "classes"):
                if key in node:
                    reader.error((node, key), f"a {effect} rule has no field plan", value=False)
            fields, classes = (), ()
        health_rule = reader.flag(node, "health_rule") or False
        return Rule(
            id=rule_id,
            effect=effect,
            description=reader.text(node, "description", "") or "",
            when=when,
            law=tuple(sorted(law)),
            legal_basis=legal_basis if effect is Effect.PERMIT else None,
            valid_from=valid_from,
            valid_until=valid_until,
            fields=fields,
            classes=classes,
            obligations=tuple(sorted(obligations)),
            reason=reason,
            queue=queue,
            health_rule=health_rule,
            where=where,
        )

    def conditions(
        self, reader: Reader, rule: CommentedMap, rule_id: str, purposes: frozenset[str] | None
    ) -> Conditions:
        if not reader.given(rule, "when"):
            return Conditions(purposes=purposes)
        node = reader.mapping(rule["when"], "'when'", (rule, "when"))
        if node is None:
            return Conditions(purposes=purposes)
        if not node:
            _empty(reader, rule, "when", "'when'")
        reader.keys(node, _WHEN_KEYS, f"'when' of rule '{rule_id}'")
        if "purpose" in node:
            reader.error(
                (node, "purpose"), "purpose goes on the rule itself, not under 'when'", value=False
            )
        kinds = reader.words(node, "kind", [k.value for k in RequestKind], "request kind")
        events: frozenset[str] | None = None
        if reader.given(node, "event"):
            if isinstance(node["event"], CommentedSeq) and not node["event"]:
                reader.error(
                    (node, "event"), "an empty list of event types matches nothing; leave it out"
                )
            found = set()
            for item, spot in reader.items(node, "event"):
                name = str(item).rpartition(".")[2]
                if name not in self.events:
                    reader.error(spot, f"unknown event type '{item}'{suggest(name, self.events)}")
                else:
                    found.add(self.events[name])
            events = frozenset(found)
        routes = [r.id for r in self.vocabulary.routes] + ["unknown"]
        words: dict[str, Any] = {}
        for key, (attr, choices) in _WORD_CONDITIONS.items():
            words[attr] = reader.words(node, key, choices, key.replace("_", " "))
        flags: dict[str, Any] = {key: reader.flag(node, key) for key in _FLAG_CONDITIONS}
        return Conditions(
            kinds=kinds if kinds is not None else frozenset({RequestKind.DISCLOSURE.value}),
            events=events,
            source=self.party(reader, node, "source"),
            recipient=self.party(reader, node, "recipient"),
            purposes=purposes,
            legal_routes=reader.words(node, "legal_route", routes, "legal route"),
            **words,
            **flags,
        )

    def check_route_status(
        self, reader: Reader, node: CommentedMap, rule_id: str, route: str, when: Conditions
    ) -> None:
        """FVA-01 and OT-01: a status-based route needs the status of both parties."""
        needed = _ROUTE_STATUS.get(route)
        if needed is None:
            return
        for side in ("source", "recipient"):
            statuses = getattr(when, side).statuses
            if statuses is None or not statuses <= needed:
                reader.error_at(
                    node,
                    f"permit '{rule_id}' on route {route} must require the {side}'s status to be "
                    f"one of: {', '.join(sorted(needed))} ({_ROUTE_LAW[route]})",
                )

    def party(self, reader: Reader, when: CommentedMap, key: str) -> PartyCondition:
        if not reader.given(when, key):
            return PartyCondition()
        node = reader.mapping(when[key], f"'{key}'", (when, key))
        if node is None:
            return PartyCondition()
        if not node:
            _empty(reader, when, key, f"'{key}'")
        reader.keys(node, _PARTY_KEYS, f"'{key}'")
        return PartyCondition(
            agencies=reader.words(node, "agency", self.registry.ids, "agency"),
            kinds=reader.words(node, "kind", [k.value for k in AgencyKind], "agency kind"),
            statuses=reader.words(
                node, "status", [s.value for s in StatusKind], "statutory status"
            ),
            regions=reader.words(node, "region", self.regions, "region"),
            kaupapa_maori=reader.flag(node, "kaupapa_maori"),
            can_act=reader.flag(node, "can_act"),
            overseas=reader.flag(node, "overseas"),
        )

    def event_schemas(self, when: Conditions) -> list[Schema]:
        names = sorted(when.events) if when.events is not None else sorted(self.events.values())
        return [schema for name in names for schema in self.schemas.versions(name)]

    def plan_fields(
        self, reader: Reader, rule: CommentedMap, schemas: list[Schema]
    ) -> tuple[tuple[str, str], ...]:
        if not reader.given(rule, "fields"):
            return ()
        node = rule["fields"]
        if reader.mapping(node, "fields", (rule, "fields")) is None:
            return ()
        assert isinstance(node, CommentedMap)
        known = _paths(schemas)
        out = []
        picked_by: dict[str, str] = {}
        for path, action in node.items():
            path = str(path)
            selector = parse_selector(path)
            if selector is not None:
                target = self.selector(reader, node, selector, known, schemas)
                if target is None:
                    continue
                earlier = picked_by.setdefault(selector.list_path, selector.field)
                if earlier != selector.field:
                    reader.error(
                        (node, path),
                        f"'{selector.list_path}' items are already picked by '{earlier}' in "
                        "this rule; pick them by one field",
                        value=False,
                    )
                    continue
            elif path not in known:
                reader.error(
                    (node, path),
                    f"unknown field '{path}' in these event types{suggest(path, known)}",
                    value=False,
                )
                continue
            else:
                target = known[path]
            if not self.action(reader, node, path, action):
                continue
            action = str(action)
            infos = [target]
            if action in DATE_GENERALISATIONS and not all(
                i.leaf and ("date" in i.avro_type or "timestamp" in i.avro_type) for i in infos
            ):
                reader.error(
                    (node, path),
                    f"{action} applies to a date field; '{path}' is {infos[0].avro_type}",
                )
                continue
            if action in ADDRESS_GENERALISATIONS and infos[0].classification != "location":
                reader.error(
                    (node, path),
                    f"{action} applies to a location field; '{path}' is class {infos[0].classification}",
                )
                continue
            out.append((path, action))
        return tuple(out)

    def selector(
        self,
        reader: Reader,
        node: CommentedMap,
        selector: Selector,
        known: Mapping[str, Any],
        schemas: list[Schema],
    ) -> Any:
        """The field ``selector`` reaches in each picked item, or None after an error."""
        spot = (node, selector.path)
        problem = None
        listed = known.get(selector.list_path)
        picker = known.get(selector.discriminator)
        if parse_selector(selector.plain) is not None:
            problem = "one [field=value] selector per path"
        elif "[]" in selector.list_path or "{}" in selector.list_path:
            problem = "[field=value] picks items of a list that is not itself inside a list"
        elif listed is None or "array<record" not in listed.avro_type:
            problem = (
                f"'{selector.list_path}' is not a list of records in these event types; "
                "[field=value] picks some of a list's items"
            )
        elif picker is None or not picker.leaf:
            fields = sorted(
                p.rpartition(".")[2]
                for p, i in known.items()
                if i.leaf and p.rpartition(".")[0] == f"{selector.list_path}[]"
            )
            problem = (
                f"the items of '{selector.list_path}' have no field '{selector.field}'"
                f"{suggest(selector.field, fields)}"
            )
        elif selector.plain != f"{selector.list_path}[]" and selector.plain not in known:
            problem = f"unknown field '{selector.plain}' in these event types{suggest(selector.plain, known)}"
        else:
            choices = _enum_symbols(schemas, picker.avro_type)
            for value in selector.values:
                if not value:
                    problem = f"an empty value in [{selector.field}=...]"
                elif choices is not None and value not in choices:
                    problem = (
                        f"'{value}' is not a {selector.field} of '{selector.list_path}'"
                        f"{suggest(value, choices)}"
                    )
                if problem:
                    break
        if problem is not None:
            reader.error(spot, problem, value=False)
            return None
        return known.get(selector.plain, listed)

    def plan_classes(self, reader: Reader, rule: CommentedMap) -> tuple[tuple[str, str], ...]:
        if not reader.given(rule, "classes"):
            return ()
        node = rule["classes"]
        if reader.mapping(node, "classes", (rule, "classes")) is None:
            return ()
        assert isinstance(node, CommentedMap)
        out = []
        for name, action in node.items():
            name = str(name)
            if name not in self.classes:
                reader.error(
                    (node, name),
                    f"unknown field class '{name}'{suggest(name, self.classes)}",
                    value=False,
                )
                continue
            if not self.action(reader, node, name, action):
                continue
            action = str(action)
            if action in DATE_GENERALISATIONS:
                reader.error(
                    (node, name), f"{action} applies to a date field; name the field under 'fields'"
                )
                continue
            if action in ADDRESS_GENERALISATIONS and name != "location":
                reader.error((node, name), f"{action} applies to class location, not '{name}'")
                continue
            out.append((name, action))
        return tuple(out)

    def action(self, reader: Reader, node: CommentedMap, key: str, action: Any) -> bool:
        if action is None:
            reader.error(
                (node, key), f"'{key}' has no action: give one, or leave '{key}' out", value=False
            )
            return False
        if action not in FIELD_ACTIONS:
            reader.error(
                (node, key), f"unknown field action '{action}'{suggest(str(action), FIELD_ACTIONS)}"
            )
            return False
        return True

    def forbid_fields(
        self, reader: Reader, rule: CommentedMap, schemas: list[Schema]
    ) -> tuple[tuple[str, str], ...]:
        if not reader.given(rule, "fields"):
            return ()
        if isinstance(rule["fields"], CommentedSeq) and not rule["fields"]:
            reader.error(
                (rule, "fields"), "an empty list of fields names nothing to withhold; leave it out"
            )
        known = _paths(schemas)
        out = []
        for item, spot in reader.items(rule, "fields"):
            path = str(item)
            if parse_selector(path) is not None:
                reader.error(
                    spot,
                    "a forbid withholds a field from every item; [field=value] belongs in a "
                    "permit's fields",
                )
            elif path not in known:
                reader.error(
                    spot, f"unknown field '{path}' in these event types{suggest(path, known)}"
                )
            else:
                out.append((path, "drop"))
        return tuple(out)

    def forbid_classes(self, reader: Reader, rule: CommentedMap) -> tuple[tuple[str, str], ...]:
        names = reader.words(rule, "classes", self.classes, "field class")
        return tuple((name, "drop") for name in sorted(names or ()))


def _empty(reader: Reader, node: CommentedMap, key: str, what: str) -> None:
    """An empty condition mapping: written, it reads as "any", which no one means to write."""
    reader.error(
        (node, key),
        f"an empty {what} means any case; name a condition, or leave '{key}' out",
        value=False,
    )


def _enum_symbols(schemas: list[Schema], avro_type: str) -> frozenset[str] | None:
    """The symbols of the enum ``avro_type`` names (``enum nz.tiaki.PersonRole``, possibly in a
    union), or None when it is not an enum (free text takes any value)."""
    found = re.search(r"enum ([\w.]+)", avro_type)
    return None if found is None else enum_symbols(schemas, found.group(1))


def _paths(schemas: list[Schema]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for schema in schemas:
        for info in schema.fields:
            out.setdefault(info.path, info)
    return out


#: What matching needs to know about one agency, precomputed once per registry.
AgencyFacts = tuple[str, str, str, bool, bool, bool, frozenset[str], frozenset[str]]


def agency_facts(registry: Registry) -> tuple[AgencyFacts, ...]:
    """(id, kind, region, kaupapa Māori, can act, overseas, confirmed, unconfirmed statuses)."""
    return tuple(
        (
            a.id,
            a.kind.value,
            a.region,
            a.kaupapa_maori,
            a.can_act,
            a.overseas,
            frozenset(k.value for k in StatusKind if a.has_status(k)),
            frozenset(k.value for k, s in a.statutory.items() if s.status.value == "unconfirmed"),
        )
        for a in registry.agencies
    )


def party_matches(
    condition: PartyCondition, facts: tuple[AgencyFacts, ...]
) -> tuple[frozenset[str], frozenset[str]]:
    """(agencies that match for sure, agencies that match but for an unconfirmed status).

    Status is a fact in the registry: confirmed counts; ``unconfirmed`` is neither yes nor no,
    and a permit that would apply but for it goes to a person (LAW.md FVA-01).
    """
    sure: set[str] = set()
    unsure: set[str] = set()
    c = condition
    for agency_id, kind, region, maori, can_act, overseas, confirmed, unconfirmed in facts:
        if (
            (c.agencies is not None and agency_id not in c.agencies)
            or (c.kinds is not None and kind not in c.kinds)
            or (c.regions is not None and region not in c.regions)
            or (c.kaupapa_maori is not None and maori != c.kaupapa_maori)
            or (c.can_act is not None and can_act != c.can_act)
            or (c.overseas is not None and overseas != c.overseas)
        ):
            continue
        if c.statuses is None or c.statuses & confirmed:
            sure.add(agency_id)
        elif c.statuses & unconfirmed:
            unsure.add(agency_id)
    return frozenset(sure), frozenset(unsure)


def _covers(outer: Collection[str] | None, inner: Collection[str] | None) -> bool:
    return outer is None or (inner is not None and set(inner) <= set(outer))


def _check_shadowed(rules: list[Rule], registry: Registry, errors: list[PolicySourceError]) -> None:
    """A permit that a whole-decision forbid matches in every case can never apply: an error."""
    facts = agency_facts(registry)
    forbids = [r for r in rules if r.effect is Effect.FORBID and not r.field_forbid]
    permits = [r for r in rules if r.effect is Effect.PERMIT]
    for permit in permits:
        for forbid in forbids:
            if _forbid_covers(forbid, permit, facts):
                where = permit.where or Where(Path("?"), 1, 1)
                errors.append(
                    PolicySourceError(
                        where.path,
                        where.line,
                        where.column,
                        f"permit '{permit.id}' can never apply: forbid '{forbid.id}' "
                        f"(at {forbid.where}) matches every case it matches",
                    )
                )
                break


def _forbid_covers(forbid: Rule, permit: Rule, facts: tuple[AgencyFacts, ...]) -> bool:
    f, p = forbid.when, permit.when
    if not set(p.kinds) <= set(f.kinds) or not _covers(f.events, p.events):
        return False
    for side in ("source", "recipient"):
        f_sure, f_unsure = party_matches(getattr(f, side), facts)
        p_sure, p_unsure = party_matches(getattr(p, side), facts)
        if not (p_sure | p_unsure) <= (f_sure | f_unsure):
            return False
    if f.same_region is not None and f.same_region != p.same_region:
        return False
    for name in (
        "purposes",
        "legal_routes",
        "risk",
        "consent",
        "child_consulted",
        "provenance",
        "requester_role",
        "on_behalf_of",
    ):
        if not _covers(getattr(f, name), getattr(p, name)):
            return False
    for name in (
        "imminent_danger",
        "privileged",
        "suppression_order",
        "maori_data",
        "participates",
        "child_involved",
    ):
        mine = getattr(f, name)
        if mine is not None and mine != getattr(p, name):
            return False
    if forbid.valid_from and (permit.valid_from is None or permit.valid_from < forbid.valid_from):
        return False
    return not (
        forbid.valid_until
        and (permit.valid_until is None or permit.valid_until > forbid.valid_until)
    )
