"""``tiaki quarantine``: what the broker could not process, for the operators who drain it.

Every record on ``tiaki.dlq`` is a QuarantinedRecord sealed to the broker: the rejected
ingress record kept whole, with its reason code, a short detail and where it came from. The
operator's view lists those facts and never the kept bytes or anything opened from them: the
record may be garbage, or a real event whose content only a recipient may see.

Draining the quarantine means resolving each record, by a named operator with reasons:

=========  =========================================================================
resent     its agency sent it again once the cause was fixed (a key the broker had not
           been given, a schema not yet released): the copy is a new record, with a new
           event id if the first copy was admitted
dismissed  nothing to recover: garbage, test traffic, a duplicate, an incident handled
           elsewhere
=========  =========================================================================

A resolution is a QuarantineResolution record on ``tiaki.dlq`` (sealed to the broker, keyed
by the position it resolves, header ``tiaki-quarantine-resolution``) and an audit record
(action ``quarantine``, the operator as actor, the resolution as outcome, the reasons as
detail), written in one transaction. A record is resolved once; nothing is deleted: records
and resolutions age out with the topic (30 days).

Runs with the broker's principal and keys, like ``tiaki review``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker._errors import TiakiError
from broker._logging import typed_text_looks_personal
from broker.codec import CodecError, SchemaSet, decode
from broker.envelope import BROKER, EnvelopeError, Kind, Opener, Sealer
from broker.platform._topics import DLQ, ingress_agency
from broker.runtime._audit import AuditContext, audit_base
from broker.runtime._metrics import quarantine_reasons
from broker.runtime._operator import BrokerTools
from broker.runtime._pipeline import REASON_HEADER, audit_output, sealed_for_broker
from broker.runtime._review import UNSAFE_REASONS
from broker.transport import Outgoing, Record

#: Reason shown for a quarantine record that itself does not open (it was not written by
#: this deployment's broker, or its key is gone): listed, never hidden.
UNREADABLE = "unreadable"
#: Marks a resolution on ``tiaki.dlq``; its value is the position resolved, ``<p>:<offset>``.
RESOLUTION_HEADER = "tiaki-quarantine-resolution"
#: How an operator may resolve a quarantined record (see the module docs).
RESOLUTIONS = ("resent", "dismissed")
OPEN = "open"


class QuarantineError(TiakiError):
    """A quarantine command cannot be carried out (unknown position, already resolved)."""


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined record, as an operator sees it: where, when, why; never what."""

    partition: int
    offset: int
    received_at: datetime | None
    reason: str
    detail: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    kept_bytes: int | None
    #: ``open``, or how it was resolved (``resent``, ``dismissed``), by whom and when.
    state: str = OPEN
    resolved_by: str | None = None
    resolved_at: datetime | None = None

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def to_json(self) -> dict[str, Any]:
        doc = dict(vars(self))
        doc["received_at"] = self.received_at.isoformat() if self.received_at else None
        doc["resolved_at"] = self.resolved_at.isoformat() if self.resolved_at else None
        return doc


def read_quarantine(
    records: Sequence[Record], opener: Opener, schemas: SchemaSet, now: datetime
) -> list[QuarantineEntry]:
    """The entries of ``tiaki.dlq`` records, oldest first, each with its resolution if any
    (the first one written for its position)."""
    kept_schema = schemas.latest("QuarantinedRecord")
    resolution_schema = schemas.latest("QuarantineResolution")
    entries: list[QuarantineEntry] = []
    resolutions: dict[str, dict[str, Any]] = {}
    for record in records:
        headers = dict(record.headers)
        resolving = RESOLUTION_HEADER in headers
        try:
            opened = opener.open(record.value, topic=DLQ, now=now, kind=Kind.HOLD, source=BROKER)
            doc = decode(opened.payload, resolution_schema if resolving else kept_schema)
        except (EnvelopeError, CodecError) as exc:
            reason = headers.get(REASON_HEADER, b"").decode(errors="replace")
            entries.append(_unreadable(record, reason, exc))
            continue
        if resolving:
            resolutions.setdefault(f"{doc['dlq_partition']}:{doc['dlq_offset']}", doc)
            continue
        received = doc["received_at"]
        entries.append(
            QuarantineEntry(
                record.partition,
                record.offset,
                received if isinstance(received, datetime) else None,
                str(doc["reason"]),
                doc.get("detail"),
                str(doc["topic"]),
                int(doc["partition"]),
                int(doc["offset"]),
                len(doc["value"]),
            )
        )
    entries = [_resolved(e, resolutions.get(e.position)) for e in entries]
    entries.sort(key=lambda e: (e.received_at or datetime.min.replace(tzinfo=UTC), e.offset))
    return entries


def _unreadable(record: Record, reason: str, exc: EnvelopeError | CodecError) -> QuarantineEntry:
    return QuarantineEntry(
        record.partition,
        record.offset,
        None,
        reason or UNREADABLE,
        f"the quarantine record does not open ({exc.quarantine_reason})",
        None,
        None,
        None,
        None,
    )


def _resolved(entry: QuarantineEntry, resolution: dict[str, Any] | None) -> QuarantineEntry:
    if resolution is None:
        return entry
    return replace(
        entry,
        state=str(resolution["resolution"]),
        resolved_by=str(resolution["operator"]),
        resolved_at=resolution["resolved_at"],
    )


def _check_outcome(resolution: str) -> None:
    if resolution not in RESOLUTIONS:
        raise QuarantineError(f"--outcome must be one of {', '.join(RESOLUTIONS)}")


def resolve(
    entry: QuarantineEntry,
    resolution: str,
    *,
    operator: str,
    justification: str,
    now: datetime,
    sealer: Sealer,
    schemas: SchemaSet,
    context: AuditContext,
) -> list[Outgoing]:
    """The records that resolve ``entry``; raise if it is resolved already or the operator
    gave no name or no reasons."""
    _check_outcome(resolution)
    if entry.state != OPEN:
        when = entry.resolved_at.strftime("%Y-%m-%d %H:%M") if entry.resolved_at else "?"
        raise QuarantineError(
            f"quarantine record {entry.position} is already {entry.state} "
            f"(by {entry.resolved_by}, {when} UTC)"
        )
    if not operator.strip():
        raise QuarantineError(
            "a resolution needs the operator's name: the audit record names who acted"
        )
    if not justification.strip():
        raise QuarantineError("a resolution needs a justification (recorded on the audit log)")
    if typed_text_looks_personal(justification):
        raise QuarantineError(UNSAFE_REASONS)
    schema = schemas.latest("QuarantineResolution")
    doc = {
        "dlq_partition": entry.partition,
        "dlq_offset": entry.offset,
        "reason": entry.reason,
        "resolution": resolution,
        "operator": operator,
        "justification": justification,
        "resolved_at": now,
    }
    sealed = sealed_for_broker(sealer, schema, doc, DLQ, now)
    position = entry.position.encode()
    audit = audit_base(replace(context, actor=operator), "quarantine", now) | {
        "source_agency": ingress_agency(entry.source_topic) if entry.source_topic else None,
        "outcome": resolution,
        "reason_codes": [entry.reason],
        "detail": f"dlq {entry.position}: {justification}"[:500],
    }
    return [
        Outgoing(DLQ, position, sealed, ((RESOLUTION_HEADER, position),)),
        audit_output(schemas.latest("AuditRecord"), audit),
    ]


app = typer.Typer(
    help="The quarantine (tiaki.dlq): what the broker could not process, and why.",
    no_args_is_help=True,
)

FORMATS = ("table", "json")


@app.command("list")
def list_command(
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only this reason code (e.g. tampered).")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Include resolved records.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Open quarantined records (--all: resolved ones too): when, why, where from, size,
    state; and a count per reason. Never their content."""
    if fmt not in FORMATS:
        raise TiakiError(f"--format must be one of {', '.join(FORMATS)}")
    listed = (*quarantine_reasons(), UNREADABLE)  # UNREADABLE: a record without its header
    if reason is not None and reason not in listed:
        raise TiakiError(f"--reason: no reason code {reason!r}; one of {', '.join(sorted(listed))}")
    tools = BrokerTools()
    entries = read_quarantine(tools.read(DLQ), tools.opener(), tools.schemas, datetime.now(UTC))
    if reason is not None:
        entries = [e for e in entries if e.reason == reason]
    if not everything:
        entries = [e for e in entries if e.state == OPEN]
    if fmt == "json":
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return
    table = Table("dlq position", "received (UTC)", "reason", "from", "bytes", "state", "detail")
    for e in entries:
        table.add_row(
            e.position,
            e.received_at.strftime("%Y-%m-%d %H:%M:%S") if e.received_at else "",
            e.reason,
            f"{e.source_topic}[{e.source_partition}]@{e.source_offset}" if e.source_topic else "",
            str(e.kept_bytes) if e.kept_bytes is not None else "",
            e.state if e.state == OPEN else f"{e.state} by {e.resolved_by}",
            e.detail or "",
        )
    console = Console(width=200)
    console.print(table)
    counts = Counter(e.reason for e in entries)
    summary = ", ".join(f"{r} {n}" for r, n in sorted(counts.items()))
    label = "quarantined" if everything else "open"
    console.print(f"{len(entries)} {label}" + (f": {summary}" if summary else ""))


@app.command("resolve")
def resolve_command(
    position: Annotated[
        str, typer.Argument(help="The record's dlq position (partition:offset), as listed.")
    ],
    outcome: Annotated[str, typer.Option("--outcome", help="resent or dismissed.")],
    operator: Annotated[
        str, typer.Option("--operator", help="Your name, as the audit log will show it.")
    ],
    justification: Annotated[
        str, typer.Option("--justification", help="Why (recorded; no personal details).")
    ],
) -> None:
    """Resolve a quarantined record (resent by its agency, or dismissed), audited with your
    name and reasons."""
    _check_outcome(outcome)  # before any keys are loaded or Kafka is asked
    tools = BrokerTools()
    now = datetime.now(UTC)

    def act(records: list[Record]) -> tuple[list[Outgoing], str]:
        entries = read_quarantine(records, tools.opener(), tools.schemas, now)
        entry = next((e for e in entries if e.position == position.strip()), None)
        if entry is None:
            raise QuarantineError(
                f"no quarantine record at {position!r} (see `tiaki quarantine list --all`)"
            )
        outputs = resolve(
            entry,
            outcome,
            operator=operator,
            justification=justification,
            now=now,
            sealer=tools.sealer(),
            schemas=tools.schemas,
            context=tools.audit_context(),
        )
        return outputs, entry.position

    resolved = tools.act("quarantine", DLQ, act, now)
    print(f"{resolved}: {outcome} by {operator}")
