"""Publishing a regional hub's monthly table: count the tallies, apply the output rules, seal.

``tiaki hub publish`` (:mod:`broker.aggregate._cli`) runs this as one operator act: it reads
``tiaki.state.tallies`` (the broker's de-identified counted units, :mod:`broker.runtime._tallies`),
counts one region's month of one measure by territorial authority and ethnic group, applies
the Stats NZ output rules (:func:`apply_output_rules`), and writes, in one transaction, the
table sealed to each of the region's hubs on ``tiaki.hub.<region>`` and its audit records.

The Māori column is a Māori data breakdown (MDS-04, the policy's ``review-maori-breakdown``):
it is withheld, with whatever would let it be derived, until a person named as approving for
Māori data governance publishes the table with the governance reference; that approval is an
audit record of its own, under the approver's name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from broker._errors import TiakiError
from broker._logging import typed_text_looks_personal
from broker.aggregate._rules import WITHHELD_GOVERNANCE, Cell, Table, apply_output_rules
from broker.codec import CodecError, SchemaSet, decode, encode
from broker.envelope import Kind, Sealer
from broker.platform._topics import hub
from broker.registry import Registry
from broker.runtime._audit import AuditContext, audit_base
from broker.runtime._pipeline import audit_output
from broker.runtime._tallies import EPISODES, GROUPS, INDICATOR_PREFIX, MAORI, NZ, UNKNOWN
from broker.transport import Outgoing, Record

#: The output rules every table is published under, by LAW.md reference.
OUTPUT_RULES = (
    "IDI-01 random rounding to base 3, totals rounded independently",
    "IDI-02 counts from fewer than 6 suppressed",
    "IDI-06 secondary suppression",
    "MDS-04 Maori breakdown only after governance approval",
)
#: How a table shows a figure it does not publish: "S" for any output rule (which rule would
#: tell a reader which hidden counts are small), "G" for a governance hold.
SUPPRESSED_MARK = "S"
GOVERNANCE_MARK = "G"
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
MAORI_COLUMN = GROUPS[MAORI]
COLUMNS = tuple(GROUPS.values())


class HubError(TiakiError):
    """A table that cannot be published as asked (a one-line reason)."""


@dataclass(frozen=True)
class Approval:
    """A person approving the Māori breakdown for Māori data governance."""

    approver: str
    reference: str


@dataclass(frozen=True)
class Publication:
    """What one act publishes: the table, and the records that carry it."""

    table_id: str
    table: Table
    governance: str
    outputs: list[Outgoing]
    hubs: tuple[str, ...]


def rounding_key(subject_key: bytes) -> bytes:
    """The output rules' rounding key: the deployment's, stable for as long as tables may be
    published again (another key would round the same counts otherwise, and two roundings of
    one count narrow it down)."""
    return hmac.new(subject_key, b"tiaki rr3 rounding key v1", hashlib.sha256).digest()


def previous_month(now: datetime) -> str:
    """The calendar month before ``now``'s, in New Zealand time, as ``YYYY-MM`` (``--month
    last``, for a scheduled run early in the month)."""
    local = now.astimezone(NZ)
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def counts_digest(counts: Mapping[tuple[str, str], int], key: bytes) -> str:
    """A keyed digest of the true counts a table was made from, for its audit record: two
    releases of one table (withheld, then approved) protect each other only if they were
    made from the same counts, and compliance can see whether they were without seeing any
    count."""
    canonical = "\x1e".join(
        f"{row}\x1f{column}\x1f{n}" for (row, column), n in sorted(counts.items()) if n
    )
    return hmac.new(key, b"counts\x1d" + canonical.encode(), hashlib.sha256).hexdigest()[:16]


def check_request(
    registry: Registry, indicators: Iterable[str], region: str, month: str, measure: str
) -> tuple[str, ...]:
    """The region's hub agencies; a :class:`HubError` for a region without a hub, a month
    not ``YYYY-MM`` or a measure no tally counts."""
    hubs = tuple(
        a.id for a in registry.agencies if a.kind.value == "regional_hub" and a.region == region
    )
    if not hubs:
        known = ", ".join(registry.hub_regions) or "none"
        raise HubError(
            f"no regional hub is registered for region '{region}' (hub regions: {known})"
        )
    if not _MONTH.match(month):
        raise HubError(f"--month must be YYYY-MM, not '{month}'")
    measures = [EPISODES, *(f"{INDICATOR_PREFIX}{name}" for name in indicators)]
    if measure not in measures:
        raise HubError(f"unknown measure '{measure}' (one of: {', '.join(measures)})")
    return hubs


def check_person(role: str, name: str, reasons: str) -> None:
    """A person's name and reasons, kept in clear on the audit log: both given, neither
    holding anything personal about anyone else."""
    if not name.strip():
        raise HubError(f"the {role}'s name is needed: the audit record names who acted")
    if not reasons.strip():
        raise HubError(f"the {role}'s reasons are needed: they are kept on the audit log")
    if typed_text_looks_personal(reasons):
        raise HubError(
            f"the {role}'s reasons look like they hold a personal identifier, a date or an "
            "address; they go to the audit log in clear, so state them without identifying anyone"
        )


def count(
    records: Iterable[Record], schemas: SchemaSet, *, region: str, month: str, measure: str
) -> tuple[Counter[tuple[str, str]], int]:
    """True counts by (territorial authority, ethnic group label) of one region's month of
    one measure, from ``tiaki.state.tallies`` as read (oldest first: a key's last record
    stands, a tombstone ends it); and how many records could not be read."""
    schema = schemas.latest("Tally")
    last: dict[bytes, bytes] = {}
    for record in records:
        last[record.key or b""] = record.value
    counts: Counter[tuple[str, str]] = Counter()
    unreadable = 0
    for value in last.values():
        if not value:
            continue
        try:
            tally = decode(value, schema)
        except CodecError:
            unreadable += 1
            continue
        if (tally["region"], tally["month"], tally["measure"]) == (region, month, measure):
            group = GROUPS.get(tally["ethnicity_group"], GROUPS["9"])
            counts[(tally["territorial_authority"], group)] += 1
    return counts, unreadable


def publish(
    counts: Mapping[tuple[str, str], int],
    *,
    region: str,
    month: str,
    measure: str,
    hubs: Sequence[str],
    operator: str,
    justification: str,
    approval: Approval | None,
    key: bytes,
    schemas: SchemaSet,
    sealer: Sealer,
    context: AuditContext,
    now: datetime,
) -> Publication:
    """The table of ``counts`` under the output rules, sealed to each hub, with its audit
    records: the publication (under ``operator``) and, given ``approval``, the governance
    approval of its Māori column (under the approver)."""
    check_person("operator", operator, justification)
    if approval is not None:
        check_person("governance approver", approval.approver, approval.reference)
    authorities = sorted({row for row, _ in counts} - {UNKNOWN})
    rows = [*authorities, UNKNOWN] if any(row == UNKNOWN for row, _ in counts) else authorities
    if not rows:
        rows = [UNKNOWN]  # nothing counted: a table of zeros says so
    table_id = f"{region}/{month}/{measure}"
    table = apply_output_rules(
        counts,
        rows,
        COLUMNS,
        key=key,
        context=f"{region}|{month}|{measure}",
        withheld_columns=() if approval is not None else (MAORI_COLUMN,),
    )
    governance = "approved" if approval is not None else "withheld"
    cells = list(_cells(table))
    record = {
        "table_id": table_id,
        "region": region,
        "month": month,
        "measure": measure,
        "cells": cells,
        "output_rules": list(OUTPUT_RULES),
        "governance": governance,
        "published_at": now,
    }
    schema = schemas.latest("AggregateTable")
    body = encode(schema, record)
    topic = hub(region)
    key_bytes = table_id.encode()
    outputs: list[Outgoing] = []
    hidden = sum(1 for cell in cells if cell["value"] is None)
    # One publication: one event id and one audit detail, whichever hub it is sealed to.
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"tiaki:{table_id}:{now.isoformat()}"))
    detail = (
        f"{table_id}: {len(cells)} figures, {hidden} not published, counts "
        f"{counts_digest(counts, key)}; {justification}"
    )[:500]
    audit_schema = schemas.latest("AuditRecord")
    for agency in hubs:
        sealed = sealer.seal(
            body,
            kind=Kind.EGRESS,
            topic=topic,
            recipient=agency,
            event_id=event_id,
            schema_fingerprint=schema.fingerprint,
            now=now,
        )
        outputs.append(Outgoing(topic, key_bytes, sealed))
        audit = audit_base(replace(context, actor=operator), "decision", now) | {
            "event_id": event_id,
            "event_type": "AggregateTable",
            "schema_fingerprint": schema.fingerprint_hex,
            "recipient": agency,
            "outcome": "share_minimised",
            "purpose": "monitoring",
            "rule_ids": ["refer-aggregates-to-publisher", "review-maori-breakdown"],
            "reason_codes": ["aggregate_published", f"maori_breakdown_{governance}"],
            "obligations": ["apply_output_rules"],
            "detail": detail,
        }
        outputs.append(audit_output(audit_schema, audit))
    if approval is not None:
        audit = audit_base(replace(context, actor=approval.approver), "review", now) | {
            "event_type": "AggregateTable",
            "outcome": "approve",
            "purpose": "monitoring",
            "rule_ids": ["review-maori-breakdown"],
            "reason_codes": ["maori_breakdown", "review_approve"],
            "detail": f"{table_id}: {approval.reference}"[:500],
        }
        outputs.append(audit_output(audit_schema, audit))
    return Publication(table_id, table, governance, outputs, tuple(hubs))


def _cells(table: Table) -> Iterable[dict[str, Any]]:
    """The table's figures as AggregateCell records: every cell, then the row totals, the
    column totals and the grand total."""
    entries = [
        *((row, column, cell) for (row, column), cell in table.cells.items()),
        *((row, "total", cell) for row, cell in table.row_totals.items()),
        *(("total", column, cell) for column, cell in table.column_totals.items()),
        ("total", "total", table.total),
    ]
    for row, column, cell in entries:
        yield {"row": row, "column": column, "value": cell.value, "suppressed": mark(cell)}


def mark(cell: Cell) -> str | None:
    """Why ``cell`` is not published, as a table says it (``S`` or ``G``); None if it is."""
    if cell.value is not None:
        return None
    return GOVERNANCE_MARK if cell.suppressed == WITHHELD_GOVERNANCE else SUPPRESSED_MARK


def shown(cell: Cell) -> str:
    """A figure as a table shows it: the rounded count, ``S`` or ``G``."""
    return str(cell.value) if cell.value is not None else str(mark(cell))
