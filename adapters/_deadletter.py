"""The dead-letter folder: received events the handler kept failing on, kept whole.

Each dead letter is two files named by the event id: ``<id>.sealed``, the record exactly as it
arrived (still sealed to the agency, so the folder holds no plaintext), and ``<id>.json``, why
it is there (reason, attempts, event type, where it was read from, when). A person fixes the
cause and re-applies the event with ``tiaki adapter dead-letters replay`` or by hand; nothing
in this folder is deleted by the SDK.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from adapters._private_files import write_private


@dataclass(frozen=True)
class DeadLetter:
    """Why one event is in the dead-letter folder (no field values)."""

    event_id: str
    event_type: str
    source_agency: str
    topic: str
    partition: int
    offset: int
    attempts: int
    reason: str
    dead_lettered_at: str


class DeadLetters:
    """The folder ``path`` (made ``0700`` on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, letter: DeadLetter, sealed: bytes) -> Path:
        """Write both files atomically (temporary name, then rename); return the JSON path."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = letter.event_id.replace("/", "_")
        write_private(self.path / f"{stem}.sealed", sealed)
        target = self.path / f"{stem}.json"
        write_private(target, json.dumps(asdict(letter), indent=2, sort_keys=True).encode() + b"\n")
        return target

    def has(self, event_id: str) -> bool:
        return (self.path / f"{event_id.replace('/', '_')}.json").exists()

    def list(self) -> list[DeadLetter]:
        if not self.path.exists():
            return []
        return [DeadLetter(**json.loads(p.read_text())) for p in sorted(self.path.glob("*.json"))]

    def sealed(self, event_id: str) -> bytes:
        return (self.path / f"{event_id.replace('/', '_')}.sealed").read_bytes()

    def remove(self, event_id: str) -> None:
        stem = event_id.replace("/", "_")
        for suffix in (".json", ".sealed"):
            (self.path / f"{stem}{suffix}").unlink(missing_ok=True)
