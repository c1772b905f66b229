"""Audit log records as plain values, and the export file format (pure).

The verifier, the indexer and the export all work on :class:`LogEntry` values, whether they
came from Kafka (the edge converts) or from an exported file, so a copied log is checked by
exactly the code that checks the live one.

Export format: JSON Lines. The first line is ``{"format": "tiaki-audit-export/1", ...}``; each
further line is one record of ``tiaki.audit`` or ``tiaki.checkpoints``, with key, header values
and value in base64, exactly as read (nothing decoded, so nothing re-encoded differently).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from broker.audit._errors import AuditError

EXPORT_FORMAT = "tiaki-audit-export/1"
AUDIT_TOPIC = "tiaki.audit"
CHECKPOINT_TOPIC = "tiaki.checkpoints"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One record as read from the audit or checkpoint topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def position(self) -> str:
        """How tools name this record: ``partition P offset O`` (prefixed off the audit topic)."""
        where = f"partition {self.partition} offset {self.offset}"
        return where if self.topic == AUDIT_TOPIC else f"{self.topic} {where}"

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"LogEntry({self.topic}[{self.partition}]@{self.offset})"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dump_lines(entries: Iterable[LogEntry], *, exported_at: str) -> Iterator[str]:
    """The export file, line by line (each without its newline)."""
    yield json.dumps({"format": EXPORT_FORMAT, "exported_at": exported_at})
    for e in entries:
        yield json.dumps(
            {
                "topic": e.topic,
                "partition": e.partition,
                "offset": e.offset,
                "timestamp_ms": e.timestamp_ms,
                "key": None if e.key is None else _b64(e.key),
                "headers": [[k, _b64(v)] for k, v in e.headers],
                "value": _b64(e.value),
            },
            separators=(",", ":"),
        )


def load_lines(lines: Iterable[str]) -> list[LogEntry]:
    """Read an export file back; a malformed line is an error naming the line."""
    entries: list[LogEntry] = []
    it = iter(lines)
    try:
        first = json.loads(next(it))
    except (StopIteration, ValueError):
        raise AuditError("not a Tiaki audit export (empty or unreadable first line)") from None
    if not isinstance(first, dict) or first.get("format") != EXPORT_FORMAT:
        raise AuditError(f"not a Tiaki audit export (expected format {EXPORT_FORMAT})")
    for number, line in enumerate(it, start=2):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            entries.append(
                LogEntry(
                    topic=str(doc["topic"]),
                    partition=int(doc["partition"]),
                    offset=int(doc["offset"]),
                    key=None if doc["key"] is None else base64.b64decode(doc["key"]),
                    value=base64.b64decode(doc["value"]),
                    headers=tuple((str(k), base64.b64decode(v)) for k, v in doc["headers"]),
                    timestamp_ms=int(doc["timestamp_ms"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"export line {number}: malformed record") from None
    return entries
