"""Scenario files: an event, a context and the decision a privacy officer expects.

``policies/tests/*.yaml``::

    defaults: {at: 2025-03-05}          # any context key, for every case in the file
    cases:
      - name: "LAW scenario 1: police report of concern to Oranga Tamariki"
        event: ReportOfConcern          # schemas/examples/ReportOfConcern.json
        version: 1                      # optional: that schema version (default: latest)
        changes: {child.iwi: []}        # optional: edits to the example (dotted path: value)
        context:                        # what the broker learns outside the event, and
                                        # header values; the rest is derived as the broker
                                        # derives it (DecisionInput.shared_values), and a
                                        # context contradicting a derived value is an error
          source: police
          recipient: oranga-tamariki
          purpose: child_assess_risk_or_need
          participates: true            # also: lead, risk (the case's tier), request:
                                        #   {requester, requester_role, on_behalf_of}
        expect:
          outcome: share                # share, share_minimised, review, deny, refer
          route: ota_s15                # optional checks from here on
          legal_basis: ota_s15_report_of_concern
          queue: review
          rules: [report-of-concern-to-ot]     # each must be among the decision's rule ids
          reasons: [permitted]                 # each must be among its reason codes
          obligations: [tag_no_criminal_use]   # exactly these
          law: [OT-08]                         # each must be among its LAW.md references
          fields:                              # path: action, or class:<class>: action
            location.street_address: keep      #   (every leaf whose own class it is)
            class:health: drop

A case without ``event`` (breach, deletion…) asks about no event (``event_type`` empty).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from broker._yaml import SourceError, load_json
from broker.codec import CodecError, from_json, validate
from broker.policy._context import value_problem
from broker.policy._engine import Engine
from broker.policy._errors import PolicySourceError, PolicyValidationError
from broker.policy._fields import parse_selector, variant_path
from broker.policy._model import (
    DERIVED,
    FIELD_ACTIONS,
    Decision,
    DecisionInput,
    Outcome,
    RequestFacts,
    RequestKind,
    Where,
)
from broker.policy._reader import Reader, suggest

_CASE_KEYS = {"name", "event", "version", "changes", "context", "expect"}
_EXPECT_KEYS = {
    "outcome",
    "route",
    "legal_basis",
    "queue",
    "rules",
    "reasons",
    "obligations",
    "law",
    "fields",
}
_CONTEXT_KEYS = {f.name for f in dataclasses.fields(DecisionInput)} - {
    "event_type",
    "schema_version",
} | {"lead", "request"}
#: Context keys the broker computes from the event (and the request it answers, and the
#: case's lead): a case may repeat them but not contradict them. Change the event instead.
_COMPUTED = (*DERIVED, "addressee")
_REQUEST_KEYS = {"requester", "requester_role", "on_behalf_of", "legal_route"}


@dataclass(frozen=True)
class Scenario:
    """One case from a scenario file."""

    name: str
    where: Where
    inp: DecisionInput
    expect: Mapping[str, Any]


@dataclass
class ScenarioReport:
    """What ``tiaki policy test`` found."""

    passed: list[Scenario] = field(default_factory=list)
    failed: list[tuple[Scenario, list[str]]] = field(default_factory=list)
    exercised: set[str] = field(default_factory=set)

    def summary(self) -> str:
        """``N passed, N failed``."""
        return f"{len(self.passed)} passed, {len(self.failed)} failed"


def load_scenarios(folder: Path, engine: Engine) -> list[Scenario]:
    """Read every ``*.yaml`` scenario file in ``folder``; :class:`PolicyValidationError` if bad."""
    errors: list[PolicySourceError] = []
    out: list[Scenario] = []
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        errors.append(PolicySourceError(folder, 1, 1, "no scenario files (*.yaml) found"))
    for path in files:
        out.extend(_ScenarioReader(path, engine, errors).read())
    if errors:
        raise PolicyValidationError(errors)
    return out


def run_scenarios(engine: Engine, scenarios: Iterable[Scenario]) -> ScenarioReport:
    """Decide every scenario and compare with what it expects."""
    report = ScenarioReport()
    for scenario in scenarios:
        decision = engine.decide(scenario.inp)
        report.exercised.update(decision.rule_ids)
        problems = check(decision, scenario.expect)
        if problems:
            report.failed.append((scenario, problems))
        else:
            report.passed.append(scenario)
    return report


def check(decision: Decision, expect: Mapping[str, Any]) -> list[str]:
    """Differences between ``decision`` and ``expect`` (empty when it is as expected)."""
    problems: list[str] = []
    for key in ("outcome", "route", "legal_basis", "queue"):
        if key in expect and str(getattr(decision, key)) != str(expect[key]):
            problems.append(f"{key}: expected {expect[key]}, got {getattr(decision, key)}")
    for key, attr in (("rules", "rule_ids"), ("reasons", "reason_codes"), ("law", "law")):
        missing = [item for item in expect.get(key, ()) if item not in getattr(decision, attr)]
        if missing:
            problems.append(f"{key}: expected {missing} among {list(getattr(decision, attr))}")
    if "obligations" in expect and sorted(expect["obligations"]) != list(decision.obligations):
        problems.append(
            f"obligations: expected {sorted(expect['obligations'])}, got {list(decision.obligations)}"
        )
    for selector, action in expect.get("fields", {}).items():
        for path in _select(decision, selector):
            got = _action(decision, path)
            if got != action:
                problems.append(f"field {path}: expected {action}, got {got}")
    return problems


#: Context keys the broker reads from an event's header, and where.
_HEADER_CONTEXT = {
    "source": ("source_agency",),
    **{
        key: ("sharing", key)
        for key in (
            "purpose",
            "legal_route",
            "consent",
            "child_consulted",
            "provenance",
            "imminent_danger",
            "privileged",
            "suppression_order",
        )
    },
}
#: A sharing context as an event without one would carry it, for a scenario that sets part
#: of it: the schema's defaults, and ``unknown`` where the schema has none.
_EMPTY_SHARING = {
    "purpose": "unknown",
    "legal_route": "unknown",
    "justification": None,
    "accountable_role": None,
    "consent": "unknown",
    "child_consulted": "unknown",
    "child_not_consulted_reason": None,
    "provenance": "unknown",
    "imminent_danger": False,
    "contains_maori_data": False,
    "privileged": False,
    "suppression_order": False,
}


def _into_header(record: dict[str, Any], values: dict[str, Any]) -> None:
    """Move the context's header-borne values (``source``, ``purpose``, ``legal_route``,
    consent, child consultation, provenance, the flags) out of ``values`` into ``record``'s
    header."""
    header = record["header"]
    for key, path in _HEADER_CONTEXT.items():
        if key not in values:
            continue
        value = values.pop(key)
        if len(path) == 1:
            header[path[0]] = value
            continue
        if header.get("sharing") is None:
            header["sharing"] = dict(_EMPTY_SHARING)
        header["sharing"][path[1]] = value


def _unselected(path: str) -> str:
    """``people[role=child].person.iwi`` as the leaf it is in every item."""
    selector = parse_selector(path)
    return path if selector is None else selector.plain


def _action(decision: Decision, path: str) -> str:
    """The action on ``path``; for an item variant (``people[role=child].person.iwi``), the
    variant's, which the plan lists only where it differs from the other items'."""
    actions = decision.field_actions
    selector = parse_selector(path)
    if selector is None:
        return actions.get(path, "drop")
    got = {
        actions.get(
            variant_path((selector.list_path, selector.field, value), selector.plain),
            actions.get(selector.plain, "drop"),
        )
        for value in selector.values
    }
    return got.pop() if len(got) == 1 else " / ".join(sorted(got))


def _select(decision: Decision, selector: str) -> list[str]:
    if not selector.startswith("class:"):
        return [selector]
    wanted = selector.removeprefix("class:")
    plan = decision.plan
    if plan is None:
        return []
    return [path for path, source in plan.classes.items() if source == wanted]


class _ScenarioReader:
    def __init__(self, path: Path, engine: Engine, errors: list[PolicySourceError]) -> None:
        self.reader = Reader(path, errors)
        self.engine = engine
        self.policy = engine.policy
        self.examples = self.policy.schemas.folder / "examples"

    def read(self) -> list[Scenario]:
        reader = self.reader
        data = reader.load()
        if data is None:
            return []
        root = reader.mapping(data, "a scenario file")
        if root is None:
            return []
        reader.keys(root, {"defaults", "cases"}, "a scenario file")
        defaults = root.get("defaults") or CommentedMap()
        if reader.mapping(defaults, "defaults", (root, "defaults")) is None:
            defaults = CommentedMap()
        self.context_keys(defaults)
        cases = root.get("cases")
        if not isinstance(cases, CommentedSeq):
            reader.error_at(root, "a scenario file needs 'cases:', a list")
            return []
        out = []
        for index, body in enumerate(cases):
            case = reader.mapping(body, "a case", (cases, index))
            if case is not None:
                scenario = self.case(case, defaults)
                if scenario is not None:
                    out.append(scenario)
        return out

    def context_keys(self, node: CommentedMap) -> None:
        self.reader.keys(node, _CONTEXT_KEYS, "a context")

    def case(self, case: CommentedMap, defaults: CommentedMap) -> Scenario | None:
        reader = self.reader
        errors_before = len(reader.errors)
        reader.keys(case, _CASE_KEYS, "a case")
        line, column = reader.start(case)
        name = reader.text(case, "name", "a case", required=True) or f"case at line {line}"
        context = case.get("context") or CommentedMap()
        if reader.mapping(context, "context", (case, "context")) is None:
            return None
        self.context_keys(context)
        values: dict[str, Any] = {"at": dt.date(2025, 3, 5)}
        for node in (defaults, context):
            for key, value in node.items():
                if key in _CONTEXT_KEYS:  # an unknown key is already an error; never an input
                    values[key] = self.context_value(node, key, value)
        record: dict[str, Any] = {}
        version = case.get("version")
        event_type = ""
        if case.get("event") is not None:
            event = str(case["event"])
            names = {s.short_name: s for s in self.policy.schemas.events()}
            schema = names.get(event.rpartition(".")[2])
            if schema is None:
                reader.error(
                    (case, "event"), f"unknown event type '{event}'{suggest(event, names)}"
                )
                return None
            if version is not None:
                schema = next(
                    (s for s in self.policy.schemas.versions(schema.name) if s.version == version),
                    None,
                )
                if schema is None:
                    reader.error((case, "version"), f"no version {version} of {event}")
                    return None
            record = self.example(case, schema.short_name, schema)
            event_type = schema.name
            version = schema.version
        for key in ("source", "recipient"):
            given = values.get(key)
            if isinstance(given, str) and given and given not in self.policy.registry.ids:
                spot = (context, key) if key in context else (defaults, key)
                reader.error(
                    spot,
                    f"unknown agency '{given}'{suggest(given, self.policy.registry.ids)}",
                )
        try:
            recipient = str(values.pop("recipient"))
        except KeyError:
            reader.error_at(case, "a case needs context.recipient")
            return None
        at = values.pop("at")
        participates = bool(values.pop("participates", False))
        lead = bool(values.pop("lead", False))
        request = self.request(context, values.pop("request", None))
        if record:
            # What the broker reads from the event's header is written into the header, so
            # the scenario is decided on an event the broker could receive, not on an input
            # it could never build (a purpose or route the header does not carry).
            # (Only for a disclosure: the other kinds are requests the broker's decider never
            # builds from an event, e.g. an aggregate's 'monitoring' purpose.)
            if values.get("kind", RequestKind.DISCLOSURE.value) == RequestKind.DISCLOSURE.value:
                _into_header(record, values)
            try:
                assert schema is not None
                if len(reader.errors) == errors_before:  # a value refused above: said once
                    validate(schema, record)
            except CodecError as exc:
                reader.error_at(
                    context, f"the context makes an event the broker would refuse: {exc}"
                )
                return None
            # The broker's own derivation (DecisionInput.shared_values); the context's risk
            # is the case's tier, which the event's own risk may raise.
            common, addressees = DecisionInput.shared_values(
                record,
                at=at,
                schema_version=version,
                request=request,
                case_risk=str(values.pop("risk", "unknown")),
                leads=(recipient,) if lead else (),
            )
            computed = {**common, "addressee": recipient in addressees}
            for key in _COMPUTED:
                if key in values and values[key] != computed[key]:
                    reader.error(
                        (context, key) if key in context else (defaults, key),
                        f"context.{key}: {values[key]!r}, but the broker computes "
                        f"{computed[key]!r} from this event; change the event ('changes:') "
                        "or the request ('context.request') instead",
                    )
                values.pop(key, None)
            inp = DecisionInput.for_one(
                common, recipient, participates, recipient in addressees, values
            )
        else:
            inp = DecisionInput(
                event_type="",
                recipient=recipient,
                at=at,
                participates=participates,
                **{"source": "", "purpose": "unknown", **values},
            )
        expect = self.expect(case, event_type, version)
        return Scenario(name, Where(reader.path, line, column), inp, expect)

    def context_value(self, node: CommentedMap, key: str, value: Any) -> Any:
        if key == "at":
            return self.reader.date(node, key) or dt.date(2025, 3, 5)
        # A list or a mapping is refused here, before anything hashes it or compares it with
        # a word: 'purpose: [a, b]' reads like "either purpose", which a decision never is.
        if key in ("source", "recipient", "purpose") and not isinstance(value, str):
            self.reader.error((node, key), f"'{key}' must be one word, not {value!r}")
        elif key == "lead" and not isinstance(value, bool):
            self.reader.error((node, key), f"'lead' must be true or false, not {value!r}")
        elif (
            key == "purpose" and value not in self.policy.vocabulary.purposes and value != "unknown"
        ):
            self.reader.error(
                (node, key),
                f"unknown purpose '{value}'{suggest(str(value), self.policy.vocabulary.purposes)}",
            )
        elif key != "purpose" and (problem := value_problem(key, value, self.policy)):
            self.reader.error((node, key), problem)
        return value

    def request(self, context: CommentedMap, node: Any) -> RequestFacts | None:
        """``context.request``: what the request book knows of the request the event answers."""
        if node is None:
            return None
        if self.reader.mapping(node, "context.request", (context, "request")) is None:
            return None
        assert isinstance(node, CommentedMap)
        self.reader.keys(node, _REQUEST_KEYS, "context.request")
        if "requester" not in node:
            self.reader.error_at(node, "context.request needs 'requester', an agency")
            return None
        return RequestFacts(
            str(node["requester"]),
            str(node.get("requester_role", "unknown")),
            str(node.get("on_behalf_of", "unknown")),
            str(node.get("legal_route", "unknown")),
        )

    def example(self, case: CommentedMap, name: str, schema: Any) -> dict[str, Any]:
        """The example event, with the case's ``changes`` (``dotted.path: value``, a number
        indexing a list), checked against the schema: a scenario is about an event the broker
        could receive."""
        path = self.examples / f"{name}.json"
        try:
            document = load_json(path)
        except SourceError as exc:  # unreadable, not UTF-8, bad JSON, nested too deeply
            self.reader.error((case, "event"), f"cannot read example {exc}")
            return {}
        if isinstance(document, dict):  # an older version: the fields its writers knew
            names = {info.path for info in schema.fields}
            document = {k: v for k, v in document.items() if k in names}
        changes = case.get("changes")
        if changes is not None:
            if self.reader.mapping(changes, "changes", (case, "changes")) is None:
                return {}
            for key, value in changes.items():
                if not _change(document, str(key).split("."), _plain(value)):
                    self.reader.error(
                        (changes, key), f"no field '{key}' in {name}'s example", value=False
                    )
        try:
            record = from_json(schema, document)
            validate(schema, record)
        except CodecError as exc:
            self.reader.error((case, "changes" if changes else "event"), f"invalid {name}: {exc}")
            return {}
        return record

    def expect(self, case: CommentedMap, event_type: str, version: Any) -> dict[str, Any]:
        reader = self.reader
        node = case.get("expect")
        if reader.mapping(node, "expect", (case, "expect")) is None:
            return {"outcome": "?"}
        assert isinstance(node, CommentedMap)
        reader.keys(node, _EXPECT_KEYS, "expect")
        outcomes = [o.value for o in Outcome]
        if node.get("outcome") not in outcomes:
            reader.error(
                (node, "outcome") if "outcome" in node else None,
                f"expect.outcome must be one of {', '.join(outcomes)}{suggest(str(node.get('outcome')), outcomes)}",
            )
        rule_ids = [rule.id for rule in self.policy.rules]
        for key, choices in (
            ("rules", rule_ids),
            ("obligations", self.policy.vocabulary.obligations),
            ("law", self.policy.vocabulary.law),
        ):
            if key in node:
                reader.words(node, key, choices, key.rstrip("s").replace("law", "LAW.md reference"))
        out: dict[str, Any] = {key: node[key] for key in node if key != "fields"}
        for key in ("rules", "reasons", "obligations", "law"):
            if key in out and isinstance(out[key], str):
                out[key] = [out[key]]
        fields = node.get("fields")
        if (
            fields is not None
            and reader.mapping(fields, "expect.fields", (node, "fields")) is not None
        ):
            assert isinstance(fields, CommentedMap)
            known: set[str] = set()
            if event_type:
                schema = self.policy.schemas.get(event_type, int(version))
                known = {info.path for info in schema.fields if info.leaf}
            classes = set(self.policy.schemas.vocabulary.classifications)
            for selector, action in fields.items():
                selector = str(selector)
                if selector.startswith("class:"):
                    if selector.removeprefix("class:") not in classes:
                        reader.error(
                            (fields, selector),
                            f"unknown field class '{selector}'{suggest(selector.removeprefix('class:'), classes)}",
                            value=False,
                        )
                elif _unselected(selector) not in known:
                    reader.error(
                        (fields, selector),
                        f"unknown field '{selector}'{suggest(selector, known)}",
                        value=False,
                    )
                if action not in FIELD_ACTIONS:
                    reader.error(
                        (fields, selector),
                        f"unknown field action '{action}'{suggest(str(action), FIELD_ACTIONS)}",
                    )
            out["fields"] = {str(k): str(v) for k, v in fields.items()}
        return out


def _plain(value: Any) -> Any:
    """YAML nodes as plain JSON values (dates as ISO text, as the examples write them)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _change(document: Any, path: list[str], value: Any) -> bool:
    """Set ``path`` in ``document`` to ``value``; False if a step does not exist."""
    head, rest = path[0], path[1:]
    if isinstance(document, list):
        if not head.isdigit() or int(head) >= len(document):
            return False
        if not rest:
            document[int(head)] = value
            return True
        return _change(document[int(head)], rest, value)
    if not isinstance(document, dict) or head not in document:
        return False
    if not rest:
        document[head] = value
        return True
    return _change(document[head], rest, value)
