"""What each agency would receive: replaying events under a policy, and diffing two policies.

An events file is JSON (a list), JSON lines, or YAML (a list); a folder means every ``*.json``
in it (``schemas/examples`` works as is). Each item is an event in the plain JSON form of
``broker.codec.from_json`` (it has a ``header``), or ``{"record": {...}, "context": {...}}``
where ``context`` sets :class:`DecisionInput` attributes for every recipient (participation,
risk, a request's purpose).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker._yaml import SourceError, load_yaml, parse_json, read_text
from broker.codec import CodecError, Schema, SchemaSet, from_json, validate
from broker.policy._context import CONTEXT_KEYS, check_context
from broker.policy._engine import Engine
from broker.policy._errors import PolicyError
from broker.policy._model import Decision, DecisionInput


@dataclass(frozen=True)
class SimEvent:
    """One event to replay, with the schema it was read as and extra context."""

    label: str
    record: Mapping[str, Any]
    schema: Schema
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """One (event, recipient, field) whose treatment differs between two policies."""

    event: str
    event_type: str
    recipient: str
    field: str
    old: str
    new: str


_EXPECTED = "a JSON list, JSON lines, a YAML list, or a folder of .json files"


def load_events(path: Path, schemas: SchemaSet) -> list[SimEvent]:
    """Read events from ``path`` (see module docs); :class:`PolicyError` naming the item."""
    items: list[tuple[str, Any]] = []
    if path.is_dir():
        for file in sorted(path.glob("*.json")):
            items.append((file.name, _read_json(file)))
    elif path.suffix in (".yaml", ".yml"):
        try:
            data = load_yaml(path)
        except SourceError as exc:
            raise PolicyError(str(exc)) from None
        if not isinstance(data, list | None):
            raise PolicyError(f"{path}: a YAML events file is a list of events")
        items = [(f"{path.name}[{i}]", item) for i, item in enumerate(data or [])]
    else:
        text = _read_text(path)
        try:
            whole = _parse(path, text)
        except PolicyError:  # not one JSON document: JSON lines
            whole = None
        if isinstance(whole, list):
            items = [(f"{path.name}[{i}]", item) for i, item in enumerate(whole)]
        elif isinstance(whole, dict):
            items = [(path.name, whole)]
        else:
            items = [
                (f"{path.name}:{n}", _parse(path, line, n))
                for n, line in enumerate(text.splitlines(), 1)
                if line.strip()
            ]
    if not items:  # an empty file or folder, or the wrong path: saying nothing would mislead
        raise PolicyError(f"{path}: no events (expected {_EXPECTED})")
    return [_event(label, item, schemas) for label, item in items]


def _read_text(path: Path) -> str:
    try:
        return read_text(path)
    except SourceError as exc:  # unreadable, or not UTF-8
        raise PolicyError(str(exc)) from None


def _parse(path: Path, text: str, line: int = 1) -> Any:
    try:
        return parse_json(path, text, line)
    except SourceError as exc:
        raise PolicyError(str(exc)) from None


def _read_json(path: Path) -> Any:
    return _parse(path, _read_text(path))


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, dt.datetime):
        return node.isoformat()
    if isinstance(node, dt.date):
        return node.isoformat()
    return node


def _event(label: str, item: Any, schemas: SchemaSet) -> SimEvent:
    item = _plain(item)
    context: dict[str, Any] = {}
    if isinstance(item, dict) and "record" in item:
        given = item.get("context") or {}
        if not isinstance(given, dict):
            raise PolicyError(f"{label}: 'context' must be a mapping of attribute: value")
        context = dict(given)
        item = item["record"]
    if not isinstance(item, dict) or not isinstance(item.get("header"), dict):
        raise PolicyError(f"{label}: an event needs a 'header' (or 'record' and 'context')")
    try:
        schema = schemas.latest(str(item["header"].get("event_type", "")))
        record = from_json(schema, item)
        validate(schema, record)  # the decision reads the header as the schema has it
    except CodecError as exc:
        raise PolicyError(f"{label}: {exc}") from None
    event_id = str(item["header"].get("event_id", label))
    return SimEvent(f"{label} ({event_id})", record, schema, context)


def input_for(
    engine: Engine, event: SimEvent, recipient: str, *, at: dt.date, participating: bool
) -> DecisionInput:
    """The decision input for ``recipient`` of ``event``; its context wins over ``at`` and
    ``participating``. :class:`PolicyError` naming the event if the context is not one
    (:func:`~broker.policy._context.check_context`)."""
    context, problems = check_context(event.context, engine.policy, keys=SIMULATE_KEYS)
    if problems:
        raise PolicyError(f"{event.label}: context: {'; '.join(problems)}")
    at = context.pop("at", at)
    participates = context.pop("participates", participating)
    return DecisionInput.from_record(
        event.record,
        recipient,
        at=at,
        schema_version=event.schema.version,
        participates=participates,
        **context,
    )


#: What an event's context may set: the recipient is each candidate in turn.
SIMULATE_KEYS = CONTEXT_KEYS - {"recipient"}


def decisions_for(
    engine: Engine,
    event: SimEvent,
    *,
    at: dt.date,
    participating: bool,
    recipients: Iterable[str] = (),
) -> dict[str, Decision]:
    """The decision for every candidate recipient of ``event`` (plus ``recipients``)."""
    header = _header(event)
    source = str(header.get("source_agency", ""))
    names = set(engine.candidates(event.schema.name, source)) | set(recipients)
    return {
        recipient: engine.decide(
            input_for(engine, event, recipient, at=at, participating=participating)
        )
        for recipient in sorted(names)
    }


def _header(event: SimEvent) -> Mapping[str, Any]:
    header = event.record.get("header") or {}
    return header if isinstance(header, Mapping) else {}


def simulate(
    engine: Engine, events: Iterable[SimEvent], *, at: dt.date, participating: bool
) -> list[tuple[SimEvent, dict[str, Decision]]]:
    """What each candidate recipient of each event would receive."""
    return [(e, decisions_for(engine, e, at=at, participating=participating)) for e in events]


def diff(
    old: Engine, new: Engine, events: Iterable[SimEvent], *, at: dt.date, participating: bool
) -> list[Change]:
    """Every (event, recipient, field) whose outcome or field action changes from old to new."""
    changes: list[Change] = []
    for event in events:
        header = _header(event)
        source = str(header.get("source_agency", ""))
        everyone = set(old.candidates(event.schema.name, source)) | set(
            new.candidates(event.schema.name, source)
        )
        before = decisions_for(old, event, at=at, participating=participating, recipients=everyone)
        after = decisions_for(new, event, at=at, participating=participating, recipients=everyone)
        for recipient in sorted(everyone):
            a, b = before[recipient], after[recipient]
            if a.outcome != b.outcome:
                changes.append(
                    Change(
                        event.label, event.schema.name, recipient, "(outcome)", a.outcome, b.outcome
                    )
                )
            a_fields = a.field_actions if a.shares else {}
            b_fields = b.field_actions if b.shares else {}
            for path in sorted(set(a_fields) | set(b_fields)):
                x, y = a_fields.get(path, "drop"), b_fields.get(path, "drop")
                if x != y:
                    changes.append(Change(event.label, event.schema.name, recipient, path, x, y))
    return changes
