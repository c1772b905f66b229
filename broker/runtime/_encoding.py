"""The pipeline's two per-event records, encoded in parts so that what repeats is encoded once.

Per event the broker writes one decision audit record and one ``SharedEvent`` per recipient
that receives something. Most of their bytes repeat: a decision's route, rules and field
actions are the same for every event a rule decides alike (the engine memoises decisions),
and an event's id, source and time are the same for each of its recipients. Avro writes a
record as its fields one after another (:mod:`broker.codec._segments`), so each record is
joined from parts:

==============  =====================================  ====================================
record          part                                    encoded
==============  =====================================  ====================================
AuditRecord     audit id, event id, case ref, subjects  once per event (written directly)
                the other fields but ``decisions``      once per distinct values (cached)
                each ``decisions`` entry                once per distinct decision (cached)
SharedEvent     event id                                once per event (written directly)
                type, source, schema, times             once per batch (cached by value)
                route, basis, purpose, rules, actions   once per distinct decision (cached)
                ``body_json``                           once per distinct body
==============  =====================================  ====================================

Cached parts are keyed by the decision's values, and by the identity of its field-action
mapping (the plan's own, shared by every decision that uses the plan), checked on every hit so
a reloaded policy whose plan happens to reuse a freed object's id can never pick up a stale
part; a shared event's source part is keyed by every value it holds. The caches are bounded
and simply emptied when full.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from broker.codec import Schema
from broker.codec._segments import (
    ArrayItems,
    Segments,
    array_of,
    nullable_string_of,
    string_of,
)
from broker.runtime._audit import decision_entry
from broker.runtime._decide import Verdict

#: Distinct cached parts kept before a cache is emptied (decisions are few; this is a bound).
CACHE_LIMIT = 4096

#: Where AuditRecord's fields are cut: the parts alternate between one field that changes with
#: every event (written directly) and a run of fields that mostly repeats (kept by value).
_AUDIT_CUTS = (
    "recorded_at",
    "event_id",
    "event_type",
    "case_ref",
    "actor",
    "rule_ids",
    "subject_refs",
    "policy_hash",
    "decisions",
)
#: The fields written directly, by part, as the schema must give them.
_AUDIT_DIRECT = {
    0: ("audit_id", {"type": "string", "logicalType": "uuid"}),
    2: ("event_id", ["null", "string"]),
    4: ("case_ref", ["null", "string"]),
    7: ("subject_refs", {"type": "array", "items": "string"}),
}
#: The runs of strings, nulls and times kept by value, by part.
_AUDIT_SCALAR_RUNS = (1, 3, 5, 8)
#: The run of the lists of rule ids, reason codes, obligations and the field-action map.
_AUDIT_LISTS_RUN = 6
#: A decision record's lists run, all empty, and the key it is kept by (as _decision_head
#: builds it).
_EMPTY_LISTS: dict[str, Any] = {
    "rule_ids": [],
    "reason_codes": [],
    "obligations": [],
    "field_actions": {},
}
_NO_LISTS = (_AUDIT_LISTS_RUN, (), (), (), ())
#: The fields of the scalar runs, in the order RecordParts.decision writes their values.
_DECISION_RUNS = {
    1: ("recorded_at", "action"),
    3: ("event_type", "schema_fingerprint"),
    5: (
        "actor",
        "source_agency",
        "recipient",
        "outcome",
        "route",
        "legal_basis",
        "purpose",
        "consent",
        "person_told",
    ),
    8: ("policy_hash", "detail", "justification_ref", "accountable_ref"),
}


class _PartCache:
    def __init__(self) -> None:
        self._parts: dict[Hashable, tuple[object, bytes]] = {}

    def get(self, key: Hashable, owner: object) -> bytes | None:
        hit = self._parts.get(key)
        return hit[1] if hit is not None and hit[0] is owner else None

    def put(self, key: Hashable, owner: object, part: bytes) -> bytes:
        if len(self._parts) >= CACHE_LIMIT:
            self._parts.clear()
        self._parts[key] = (owner, part)
        return part


class RecordParts:
    """Encodes decision audit records and shared events from parts (not thread-safe)."""

    def __init__(self, audit: Schema, shared: Schema) -> None:
        self._audit = Segments(audit, ["decisions"])
        self._head = Segments(audit, list(_AUDIT_CUTS))
        fields = {f["name"]: f["type"] for f in audit.definition["fields"]}
        for index, (name, kind) in _AUDIT_DIRECT.items():
            if self._head.fields[index] != (name,) or fields[name] != kind:
                raise ValueError(f"{audit.label}: {name} is not where or what RecordParts expects")
        if self._head.fields[_AUDIT_LISTS_RUN] != (
            "rule_ids",
            "reason_codes",
            "obligations",
            "field_actions",
        ):
            raise ValueError(f"{audit.label}: the lists are not where RecordParts expects them")
        for index, names in _DECISION_RUNS.items():
            if self._head.fields[index] != names:
                raise ValueError(f"{audit.label}: part {index} is not {names}")
        self._scalar_runs = [(i, itemgetter(*self._head.fields[i])) for i in _AUDIT_SCALAR_RUNS]
        self._runs = _PartCache()
        self._entry = ArrayItems(audit, "decisions")
        self._shared = Segments(shared, ["event_type", "route", "body_json"])
        # The first and last parts are one string each, written directly (string_of).
        if self._shared.fields[0] != ("event_id",) or self._shared.fields[3] != ("body_json",):
            raise ValueError(f"{shared.label}: event_id is not first or body_json not last")
        self._sources = _PartCache()
        self._entries = _PartCache()
        #: Denials' entries by the verdict itself: the policy decider hands out the same
        #: denial verdicts for every event it rules alike (most candidates of most events),
        #: so their entries are found without building a key. Holding the verdict keeps its
        #: id from being reused while the entry is kept.
        self._denials: dict[int, tuple[Verdict, bytes]] = {}
        self._rulings = _PartCache()

    def decision_record(self, record: Mapping[str, Any], verdicts: Sequence[Verdict]) -> bytes:
        """``record`` (an audit record whose ``decisions`` are left out) with one entry per
        verdict, in order."""
        head = self._decision_head(record)
        if head is None:  # a value of another type: the whole-head encode says which
            head = self._audit.encode(0, record)
        return head + array_of([self._entry_of(v) for v in verdicts])

    def _decision_head(self, record: Mapping[str, Any]) -> bytes | None:
        """Every field before ``decisions``: the audit id, event id, case reference and
        subject references written directly, the runs between them kept by the values they
        hold. None if a value is not of the type its part takes (the cached runs hold only
        strings, nulls and times, so a value of another type never matches one)."""
        try:
            audit_id = record["audit_id"]
            event_id = record["event_id"]
            case_ref = record["case_ref"]
            refs = record["subject_refs"]
            keys = [(i, get(record)) for i, get in self._scalar_runs]
            lists = (
                _AUDIT_LISTS_RUN,
                tuple(record["rule_ids"]),
                tuple(record["reason_codes"]),
                tuple(record["obligations"]),
                tuple(record["field_actions"].items()),
            )
            runs = {i: self._run(i, key, record) for i, key in [*keys, (lists[0], lists)]}
        except (KeyError, TypeError, AttributeError):
            return None
        if (
            type(audit_id) not in (str, uuid.UUID)
            or (event_id is not None and type(event_id) is not str)
            or (case_ref is not None and type(case_ref) is not str)
            or type(refs) is not list
            or any(type(ref) is not str for ref in refs)
        ):
            return None
        return b"".join(
            (
                string_of(str(audit_id)),
                runs[1],
                nullable_string_of(event_id),
                runs[3],
                nullable_string_of(case_ref),
                runs[5],
                runs[6],
                array_of([string_of(ref) for ref in refs]),
                runs[8],
            )
        )

    def decision(
        self,
        verdicts: Sequence[Verdict],
        *,
        audit_id: uuid.UUID,
        recorded_at: datetime,
        event_id: str,
        event_type: str,
        schema_fingerprint: str,
        case_ref: str,
        actor: str,
        source_agency: str,
        consent: str | None,
        subject_refs: Sequence[str],
        policy_hash: str | None,
        justification_ref: str | None,
        accountable_ref: str | None,
    ) -> bytes:
        """What :meth:`decision_record` writes for the decision audit record with these
        values (:func:`~broker.runtime._audit.decision_audit`'s fields; every other field of
        a decision record is empty), without building the record first: the broker writes one
        per event, and building it cost as much as encoding it."""
        run = self._decision_run
        return b"".join(
            (
                string_of(str(audit_id)),
                run(1, (recorded_at, "decision")),
                nullable_string_of(event_id),
                run(3, (event_type, schema_fingerprint)),
                nullable_string_of(case_ref),
                run(5, (actor, source_agency, None, None, None, None, None, consent, None)),
                run(_AUDIT_LISTS_RUN, _NO_LISTS),
                array_of([string_of(ref) for ref in subject_refs]),
                run(8, (policy_hash, None, justification_ref, accountable_ref)),
                array_of([self._entry_of(v) for v in verdicts]),
            )
        )

    def _decision_run(self, index: int, key: tuple[Any, ...]) -> bytes:
        """Run ``index`` of :meth:`decision`, kept under the key :meth:`_decision_head` uses
        for the same values (``key`` holds the run's fields in schema order)."""
        part = self._runs.get((index, key), None)
        if part is None:
            fields = self._head.fields[index]
            values = (
                _EMPTY_LISTS if index == _AUDIT_LISTS_RUN else dict(zip(fields, key, strict=True))
            )
            part = self._run(index, key, values)
        return part

    def _run(self, index: int, key: Hashable, record: Mapping[str, Any]) -> bytes:
        part = self._runs.get((index, key), None)
        if part is None:
            part = self._runs.put((index, key), None, self._head.encode(index, record))
        return part

    def _entry_of(self, v: Verdict) -> bytes:
        kept = self._denials.get(id(v))
        if kept is not None and kept[0] is v:
            return kept[1]
        key = (
            v.recipient,
            v.outcome.value,
            v.route,
            v.legal_basis,
            v.purpose,
            v.rule_ids,
            v.reason_codes,
            v.obligations,
        )
        part = self._entries.get(key, v.field_actions)
        if part is None:
            entry = decision_entry(
                recipient=v.recipient,
                outcome=v.outcome.value,
                route=v.route,
                legal_basis=v.legal_basis,
                purpose=v.purpose,
                rule_ids=v.rule_ids,
                reason_codes=v.reason_codes,
                obligations=v.obligations,
                field_actions=v.field_actions,
            )
            part = self._entries.put(key, v.field_actions, self._entry.encode(entry))
        if v.body is None:
            if len(self._denials) >= CACHE_LIMIT:
                self._denials.clear()
            self._denials[id(v)] = (v, part)
        return part

    def shared_head(
        self,
        *,
        event_id: str,
        event_type: str,
        source_agency: str,
        source_schema: str,
        shared_at: datetime,
    ) -> bytes:
        """The part of a ``SharedEvent`` every recipient of one event has in common.

        All but the event id is the same for every event of one type, source and schema in
        one batch (the worker gives a batch one ``shared_at``): that part is kept by value.
        """
        key = (event_type, source_agency, source_schema, shared_at)
        source = self._sources.get(key, None)
        if source is None:
            values = {
                "event_type": event_type,
                "source_agency": source_agency,
                "source_schema": source_schema,
                "shared_at": shared_at,
                # Shared as decided: only an item a person releases later is shared after
                # it was decided (the review queue's release keeps this time).
                "decided_at": shared_at,
            }
            source = self._sources.put(key, None, self._shared.encode(1, values))
        return string_of(str(event_id)) + source

    def shared_event(self, head: bytes, v: Verdict, body: bytes) -> bytes:
        """A whole ``SharedEvent``: ``head`` from :meth:`shared_head`, the ruling of ``v``,
        and ``body`` from :meth:`body`."""
        key = (v.route, v.legal_basis, v.purpose, v.obligations, v.rule_ids, v.policy_hash)
        ruling = self._rulings.get(key, v.field_actions)
        if ruling is None:
            values = {
                "route": v.route,
                "legal_basis": v.legal_basis,
                "purpose": v.purpose,
                "obligations": list(v.obligations),
                "rule_ids": list(v.rule_ids),
                "field_actions": dict(v.field_actions),
                "policy_hash": v.policy_hash,
            }
            ruling = self._rulings.put(key, v.field_actions, self._shared.encode(2, values))
        return head + ruling + body

    def body(self, text: str) -> bytes:
        """The ``body_json`` part: the record's last field, a string, written directly."""
        return string_of(text)
