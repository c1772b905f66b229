"""The subject report: which agencies received which classes of information about one person,
when and why (pure: index rows and schema classifications in, report lines out).

Why classes and not fields: the report goes to a compliance officer, possibly to the person
themselves (IPP 6); "Corrections received identity and risk information under FVA s20 for a
risk assessment" is the answer the law asks for, and the schema's classification of each field
(``tiaki schema fields NAME``) is the vocabulary privacy officers already use.

A disclosure is a decision that shared (outcome ``share``) or a held item a person released
(action ``review``, outcome ``approve``). The fields disclosed are those whose action was not
``drop``; ``pseudonymise``, ``generalise`` and ``mask`` still disclose something of the field,
so their class counts. A path that picks list items by a field's value
(``people[role=child].person.date_of_birth``, a policy's item selector) has the class of the
field it reaches in every item (``people[].person.date_of_birth``): :func:`classified_path`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.audit._index import Row
from broker.codec import CodecError, SchemaSet, field_classifications
from broker.policy._fields import parse_selector

#: Field action that discloses nothing of the field.
WITHHELD = "drop"


@dataclass(frozen=True)
class Disclosure:
    recipient: str
    at: datetime
    event_type: str | None
    event_id: str | None
    source_agency: str | None
    classes: tuple[str, ...]
    legal_basis: str | None
    purpose: str | None
    route: str | None
    rule_ids: tuple[str, ...]
    via: str  # "decision" or "review"

    def to_json(self) -> dict[str, Any]:
        doc = dict(vars(self))
        doc["at"] = self.at.isoformat()
        doc["classes"] = list(self.classes)
        doc["rule_ids"] = list(self.rule_ids)
        return doc


def disclosed(row: Row) -> bool:
    """Whether ``row`` records information actually leaving for its recipient."""
    return (row.action == "decision" and row.outcome == "share") or (
        row.action == "review" and row.outcome == "approve"
    )


def classified_path(path: str) -> str:
    """``path`` as the schema's classification names it: each item selector
    (``[role=child|other_whanau]``) written as the list it picks from (``[]``)."""
    while (selector := parse_selector(path)) is not None:
        path = selector.plain
    return path


def classifier(schemas: SchemaSet) -> Callable[[str | None, str | None], Mapping[str, str]]:
    """Field path -> classification, by the event's writer fingerprint or else its type."""
    cache: dict[tuple[str | None, str | None], Mapping[str, str]] = {}

    def classes_of(fingerprint: str | None, event_type: str | None) -> Mapping[str, str]:
        key = (fingerprint, event_type)
        if key not in cache:
            schema = None
            try:
                if fingerprint:
                    schema = schemas.by_fingerprint(bytes.fromhex(fingerprint))
                elif event_type:
                    schema = schemas.latest(event_type)
            except (CodecError, ValueError, KeyError):
                schema = None
            cache[key] = dict(field_classifications(schema)) if schema is not None else {}
        return cache[key]

    return classes_of


def subject_report(
    rows: Sequence[Row], classes_of: Callable[[str | None, str | None], Mapping[str, str]]
) -> list[Disclosure]:
    """Every disclosure among ``rows`` (one person's rows), by recipient then time."""
    out: list[Disclosure] = []
    for row in rows:
        if not disclosed(row) or row.recipient is None:
            continue
        paths = classes_of(row.schema_fingerprint, row.event_type)
        kept = {p for p, action in row.field_actions.items() if action != WITHHELD}
        classes = sorted({paths.get(classified_path(p), "unclassified") for p in kept})
        out.append(
            Disclosure(
                recipient=row.recipient,
                at=row.recorded_at,
                event_type=row.event_type,
                event_id=row.event_id,
                source_agency=row.source_agency,
                classes=tuple(classes),
                legal_basis=row.legal_basis,
                purpose=row.purpose,
                route=row.route,
                rule_ids=row.rule_ids,
                via=row.action,
            )
        )
    out.sort(key=lambda d: (d.recipient, d.at, d.event_id or ""))
    return out
