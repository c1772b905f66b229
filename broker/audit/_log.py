"""Audit log records as plain values, and the export file format (pure).

The verifier, the indexer and the export all work on :class:`LogEntry` values, whether they
came from Kafka (the edge converts) or from an exported file, so a copied log is checked by
exactly the code that checks the live one.

Export format: JSON Lines. The first line is ``{"format": "tiaki-audit-export/1", ...}``; each
further line is one record of ``tiaki.audit`` or ``tiaki.checkpoints``, with key, header values
and value in base64, exactly as read (nothing decoded, so nothing re-encoded differently).
Each record keeps its Kafka timestamp (``timestamp_ms``: on topics provisioned with
``LogAppendTime``, when Kafka appended it), and the first line says when the export was made
(``exported_at``), so that ``verify --file`` judges how long a record had gone unsigned by
then, as ``verify`` of the live log does at the time it reads it (every export has both).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from broker._yaml import SourceError, parse_json
from broker.audit._errors import AuditError

EXPORT_FORMAT = "tiaki-audit-export/1"
AUDIT_TOPIC = "tiaki.audit"
CHECKPOINT_TOPIC = "tiaki.checkpoints"
#: The topics an export holds (:func:`dump_lines` of what ``tiaki audit export`` reads).
TOPICS = (AUDIT_TOPIC, CHECKPOINT_TOPIC)


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


def load_lines(lines: Iterable[str], source: Path | None = None) -> list[LogEntry]:
    """Read an export file back; a malformed line is an error naming the line (and the file,
    ``source``, if given). A record is malformed if it is not what :func:`dump_lines` writes
    of a record Kafka could hold: a partition an int32 and an offset an int64, both not
    negative, and a timestamp an int64. A record of another topic than :data:`TOPICS` is
    refused too: an export holds only those, and a line skipped would be a record removed
    from the evidence without a word."""
    where = f"{source}: " if source is not None else ""
    name = source if source is not None else Path("export")
    entries: list[LogEntry] = []
    it = iter(lines)
    try:
        first = parse_json(name, next(it))
    except (StopIteration, SourceError):
        raise AuditError(
            f"{where}not a Tiaki audit export (empty or unreadable first line)"
        ) from None
    if not isinstance(first, dict) or first.get("format") != EXPORT_FORMAT:
        raise AuditError(f"{where}not a Tiaki audit export (expected format {EXPORT_FORMAT})")
    for number, line in enumerate(it, start=2):
        if not line.strip():
            continue
        bad = f"{where}export line {number}: malformed record"
        try:
            doc = parse_json(name, line, number)
            entry = LogEntry(
                topic=str(doc["topic"]),
                partition=int(doc["partition"]),
                offset=int(doc["offset"]),
                key=None if doc["key"] is None else base64.b64decode(doc["key"]),
                value=base64.b64decode(doc["value"]),
                headers=tuple((str(k), base64.b64decode(v)) for k, v in doc["headers"]),
                timestamp_ms=int(doc["timestamp_ms"]),
            )
        except SourceError as exc:  # bad JSON, nested too deeply, an endless integer
            raise AuditError(f"{bad} ({exc.reason})") from None
        except (ValueError, KeyError, TypeError, OverflowError):  # Overflow: int(1e400)
            raise AuditError(bad) from None
        if not (0 <= entry.partition < _INT32 and 0 <= entry.offset < _INT64):
            raise AuditError(f"{bad} (partition or offset out of range)")
        if not -_INT64 <= entry.timestamp_ms < _INT64:
            raise AuditError(f"{bad} (timestamp out of range)")
        if entry.topic not in TOPICS:
            # Named by line only: the topic is whatever the file says, and may be anything.
            raise AuditError(
                f"{where}export line {number}: a record of another topic than "
                f"{' or '.join(TOPICS)} (not from a Tiaki audit export)"
            )
        entries.append(entry)
    return entries


def exported_at(lines: Sequence[str]) -> datetime | None:
    """When the export ``lines`` was made (its first line's ``exported_at``, an ISO 8601 time
    with its UTC offset, as :func:`dump_lines` is given it by ``tiaki audit export``), or None
    if the first line does not say so in a form that can be read."""
    try:
        first = parse_json(Path("export"), lines[0]) if lines else None
        when = datetime.fromisoformat(first["exported_at"]) if isinstance(first, dict) else None
        if when is None or when.utcoffset() is None:
            return None  # a time without its offset could be any of 26 hours
    except (SourceError, ValueError, KeyError, TypeError):
        return None
    return when


#: Kafka's partitions are 32-bit and its offsets and timestamps 64-bit signed integers.
_INT32 = 1 << 31
_INT64 = 1 << 63
