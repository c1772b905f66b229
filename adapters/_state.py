"""The adapter's local durable state: one SQLite file with the outbox, the idempotency keys of
events already handled, and events waiting for another handler attempt.

Why SQLite: it is in the standard library, survives a crash with ``synchronous=FULL`` in WAL
mode (a row the SDK said was stored is on disk), and one file is easy for an agency IT team
to back up, inspect and size. Every call is short and synchronous; the SDK calls it from the
event loop because a local commit is far cheaper than a Kafka round trip.

What the tables hold, and why:

``outbox``
    Events accepted by :meth:`AdapterClient.publish` and not yet acknowledged by Kafka, in
    the order they were accepted (``seq``). The payload is the agency's own event as Avro,
    not sealed: it is sealed when it is sent, so an outbox that waited out a long outage does
    not send records the broker would refuse as stale. ``content_hash`` (SHA-256 of what the
    caller gave, see :meth:`AdapterClient.publish`) stays after sending, so an event id reused
    with other content is refused while the id is known. The file is ``0600`` in a ``0700``
    folder; protect it like the case system it came from. Sent rows keep their event id (not
    the payload) for ``keep_sent`` so publishing the same event id again is a no-op.
``handled``
    Idempotency keys (event ids) of received events whose handler succeeded, so a record
    delivered twice (a crash before the offset commit) reaches the handler once.
``retries``
    Received records whose handler failed, still sealed as they arrived, with the attempt
    count, the next attempt time and the last reason.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapters._errors import OutboxError
from broker.transport import Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    case_id TEXT NOT NULL,
    fingerprint BLOB,
    payload BLOB,
    accepted_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    content_hash BLOB
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE sent_ms IS NULL;
CREATE TABLE IF NOT EXISTS handled (
    event_id TEXT PRIMARY KEY,
    handled_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retries (
    event_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """One outbox row waiting to be sent."""

    seq: int
    event_id: str
    event_type: str
    case_id: str
    fingerprint: bytes
    payload: bytes
    attempts: int

    def __repr__(self) -> str:  # the payload is personal data
        return f"Pending(#{self.seq} {self.event_type} {self.event_id})"


@dataclass(frozen=True, slots=True)
class Parked:
    """A received record waiting for another handler attempt (still sealed)."""

    event_id: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    attempts: int
    next_ms: int
    reason: str

    def __repr__(self) -> str:
        return f"Parked({self.event_id}, attempts={self.attempts})"

    @classmethod
    def of(cls, record: Record, event_id: str) -> Parked:
        """A record not yet attempted."""
        return cls(
            event_id,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            0,
            0,
            "",
        )


class StateStore:
    """The adapter's SQLite file (``path``), or a private in-memory database (``None``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                path.touch(mode=0o600, exist_ok=True)
            self._db = sqlite3.connect(
                str(path) if path is not None else ":memory:", isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"{path}: cannot open the adapter's state: {exc}") from None

    def _migrate(self) -> None:
        """Bring a state file of an older SDK up to this schema. Adding a nullable column is
        a change of SQLite's schema record only (no row is rewritten); rows stored before it
        have no content hash, and their event ids keep the old rule (a reuse is a no-op)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "content_hash" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN content_hash BLOB")

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path or ':memory:'}: {exc}") from None

    # -- outbox --------------------------------------------------------------------------

    def enqueue(
        self,
        event_id: str,
        event_type: str,
        case_id: str,
        fingerprint: bytes,
        payload: bytes,
        now_ms: int,
        content_hash: bytes | None = None,
    ) -> Literal["stored", "same", "different"]:
        """Store an event to send: ``"stored"``; or, its id already known, nothing stored and
        ``"same"`` (the same content hash, or a row without one) or ``"different"``."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO outbox (event_id, event_type, case_id, fingerprint,"
                " payload, accepted_ms, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, event_type, case_id, fingerprint, payload, now_ms, content_hash),
            )
            if cursor.rowcount == 1:
                return "stored"
            (known,) = db.execute(
                "SELECT content_hash FROM outbox WHERE event_id = ?", (event_id,)
            ).fetchone()
        if known is None or content_hash is None or known == content_hash:
            return "same"
        return "different"

    def pending(self, limit: int = 100) -> list[Pending]:
        """The oldest unsent events, in the order they were accepted."""
        rows = self._db.execute(
            "SELECT seq, event_id, event_type, case_id, fingerprint, payload, attempts"
            " FROM outbox WHERE sent_ms IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [Pending(*row) for row in rows]

    def pending_count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_ms IS NULL").fetchone()
        return int(count)

    def sent(self, seq: int, now_ms: int) -> None:
        """Kafka acknowledged ``seq``: drop its payload, keep its event id."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET sent_ms = ?, payload = NULL, fingerprint = NULL WHERE seq = ?",
                (now_ms, seq),
            )

    def drop(self, seq: int) -> None:
        """Forget an unsent row (it was moved to the dead letters)."""
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE seq = ? AND sent_ms IS NULL", (seq,))

    def attempted(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def prune(self, before_ms: int) -> int:
        """Forget sent event ids and handled keys older than ``before_ms``; how many went."""
        with self._tx() as db:
            a = db.execute(
                "DELETE FROM outbox WHERE sent_ms IS NOT NULL AND sent_ms < ?", (before_ms,)
            ).rowcount
            b = db.execute("DELETE FROM handled WHERE handled_ms < ?", (before_ms,)).rowcount
        return int(a) + int(b)

    # -- idempotency keys ----------------------------------------------------------------

    def was_handled(self, event_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM handled WHERE event_id = ?", (event_id,)).fetchone()
        return row is not None

    def mark_handled(self, event_id: str, now_ms: int) -> None:
        """Record success and forget any retry of it, in one local transaction."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO handled (event_id, handled_ms) VALUES (?, ?)",
                (event_id, now_ms),
            )
            db.execute("DELETE FROM retries WHERE event_id = ?", (event_id,))

    def handled_count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM handled").fetchone()
        return int(count)

    # -- retries -------------------------------------------------------------------------

    def park(self, parked: Parked) -> None:
        with self._tx() as db:
            db.execute(
                'INSERT OR REPLACE INTO retries (event_id, topic, partition, "offset", key,'
                " value, attempts, next_ms, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    parked.event_id,
                    parked.topic,
                    parked.partition,
                    parked.offset,
                    parked.key,
                    parked.value,
                    parked.attempts,
                    parked.next_ms,
                    parked.reason,
                ),
            )

    def unpark(self, event_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM retries WHERE event_id = ?", (event_id,))

    def due(self, now_ms: int) -> list[Parked]:
        rows = self._db.execute(
            'SELECT event_id, topic, partition, "offset", key, value, attempts, next_ms, reason'
            " FROM retries WHERE next_ms <= ? ORDER BY next_ms, event_id",
            (now_ms,),
        ).fetchall()
        return [Parked(*row) for row in rows]

    def parked(self, event_id: str) -> Parked | None:
        row = self._db.execute(
            'SELECT event_id, topic, partition, "offset", key, value, attempts, next_ms, reason'
            " FROM retries WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        return Parked(*row) if row else None

    def parked_count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM retries").fetchone()
        return int(count)
