"""``tiaki quarantine``: what the broker could not process, for the operators who drain it.

Every record on ``tiaki.dlq`` is a QuarantinedRecord sealed to the broker: the rejected
ingress record kept whole, with its reason code, a short detail and where it came from. The
operator's view lists those facts and never the kept bytes or anything opened from them: the
record may be garbage, or a real event whose content only a recipient may see.

Runs with the broker's principal and keys, like ``tiaki review``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker._errors import TiakiError
from broker._settings import Settings
from broker.codec import CodecError, SchemaSet, decode, load_schemas
from broker.envelope import BROKER, EnvelopeError, KeyStore, Kind, Opener
from broker.platform._profiles import load_profile, profile_path
from broker.platform._topics import DLQ
from broker.registry import load_registry
from broker.runtime._pipeline import REASON_HEADER
from broker.transport import KafkaReader, Record

#: Reason shown for a quarantine record that itself does not open (it was not written by
#: this deployment's broker, or its key is gone): listed, never hidden.
UNREADABLE = "unreadable"


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

    def to_json(self) -> dict[str, Any]:
        doc = dict(vars(self))
        doc["received_at"] = self.received_at.isoformat() if self.received_at else None
        return doc


def read_quarantine(
    records: Sequence[Record], opener: Opener, schemas: SchemaSet, now: datetime
) -> list[QuarantineEntry]:
    """The entries of ``tiaki.dlq`` records, oldest first."""
    schema = schemas.latest("QuarantinedRecord")
    entries: list[QuarantineEntry] = []
    for record in records:
        header = dict(record.headers).get(REASON_HEADER, b"").decode(errors="replace")
        try:
            opened = opener.open(record.value, topic=DLQ, now=now, kind=Kind.HOLD, source=BROKER)
            kept = decode(opened.payload, schema)
        except (EnvelopeError, CodecError) as exc:
            entries.append(
                QuarantineEntry(
                    record.partition,
                    record.offset,
                    None,
                    header or UNREADABLE,
                    f"the quarantine record does not open ({exc.quarantine_reason})",
                    None,
                    None,
                    None,
                    None,
                )
            )
            continue
        received = kept["received_at"]
        entries.append(
            QuarantineEntry(
                record.partition,
                record.offset,
                received if isinstance(received, datetime) else None,
                str(kept["reason"]),
                kept.get("detail"),
                str(kept["topic"]),
                int(kept["partition"]),
                int(kept["offset"]),
                len(kept["value"]),
            )
        )
    entries.sort(key=lambda e: (e.received_at or datetime.min.replace(tzinfo=UTC), e.offset))
    return entries


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
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Quarantined records: when, reason, detail, where they came from, their size; and a
    count per reason. Never their content."""
    if fmt not in FORMATS:
        raise TiakiError(f"--format must be one of {', '.join(FORMATS)}")
    settings = Settings.from_env()
    registry = load_registry(settings.registry)
    principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
    ring = KeyStore(settings.keys_dir).load(principals, private_for=[BROKER])
    profile = load_profile(profile_path(settings.profiles_dir, BROKER))

    async def read() -> list[Record]:
        async with KafkaReader(profile) as reader:
            return await reader.read_all(DLQ)

    now = datetime.now(UTC)
    entries = read_quarantine(
        asyncio.run(read()), Opener(BROKER, ring), load_schemas(settings.schemas_dir), now
    )
    if reason is not None:
        entries = [e for e in entries if e.reason == reason]
    if fmt == "json":
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return
    table = Table("dlq position", "received (UTC)", "reason", "from", "bytes", "detail")
    for e in entries:
        table.add_row(
            f"{e.partition}:{e.offset}",
            e.received_at.strftime("%Y-%m-%d %H:%M:%S") if e.received_at else "",
            e.reason,
            f"{e.source_topic}[{e.source_partition}]@{e.source_offset}" if e.source_topic else "",
            str(e.kept_bytes) if e.kept_bytes is not None else "",
            e.detail or "",
        )
    console = Console(width=200)
    console.print(table)
    counts = Counter(e.reason for e in entries)
    summary = ", ".join(f"{r} {n}" for r, n in sorted(counts.items()))
    console.print(f"{len(entries)} quarantined" + (f": {summary}" if summary else ""))
