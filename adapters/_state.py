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
    the payload) for ``keep_sent`` so publishing the same event id again is a no-op, and
    where Kafka put the record (``sent_partition``, ``sent_offset``), so a refusal notice
    that names only that position (the broker could not open the record) finds its row. A
    refused row keeps the reason (``refused``) and whether the broker had read its event id
    (``refused_seen``), which decide what publishing that id again does (see
    :meth:`StateStore.enqueue`).
``handled``
    Idempotency keys (``<source>/<event id>``) of received events whose handler succeeded,
    so a record delivered twice (a crash before the offset commit) reaches the handler once.
    An older SDK recorded bare event ids; the client still consults those.
``retries``
    Received records whose handler failed, still sealed as they arrived, with the attempt
    count, the next attempt time and the last reason, by idempotency key (bare event id for
    a row an older SDK parked).
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
    content_hash BLOB,
    sent_partition INTEGER,
    sent_offset INTEGER,
    refused TEXT,
    refused_seen INTEGER
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
class Refused:
    """What :meth:`StateStore.enqueue` answers for an event id the broker refused after it
    had read the id: the broker counts it as seen, so the id cannot be used again."""

    reason: str


#: What :meth:`StateStore.enqueue` did with an event.
Enqueued = Literal["stored", "requeued", "same", "different"] | Refused


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


#: An outbox row as :meth:`StateStore.enqueue` inserts it.
_ROW = (
    "outbox (event_id, event_type, case_id, fingerprint, payload, accepted_ms, content_hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

#: Columns added to ``outbox`` since the first SDK, for :meth:`StateStore._migrate`.
_ADDED_COLUMNS = (
    ("content_hash", "BLOB"),
    ("sent_partition", "INTEGER"),
    ("sent_offset", "INTEGER"),
    ("refused", "TEXT"),
    ("refused_seen", "INTEGER"),
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
        have no content hash, and their event ids keep the old rule (a reuse is a no-op), and
        rows sent before it have no position, so a refusal naming only a position is logged
        without finding them."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in columns:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")

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
    ) -> Enqueued:
        """Store an event to send: ``"stored"``. Its id already known, it depends on the row:

        ============================================  ==========================================
        the row                                       answer
        ============================================  ==========================================
        refused after the broker read its id          :class:`Refused` (nothing stored): a
                                                      resend would be refused as ``replayed``
        refused unread, the same content              ``"requeued"``: stored again as a new
                                                      row (last in line), to be sent afresh
        otherwise, the same content (or no hash)      ``"same"`` (nothing stored)
        otherwise                                     ``"different"`` (nothing stored)
        ============================================  ==========================================
        """
        row = (event_id, event_type, case_id, fingerprint, payload, now_ms, content_hash)
        with self._tx() as db:
            cursor = db.execute(f"INSERT OR IGNORE INTO {_ROW}", row)
            if cursor.rowcount == 1:
                return "stored"
            known, refused, seen = db.execute(
                "SELECT content_hash, refused, refused_seen FROM outbox WHERE event_id = ?",
                (event_id,),
            ).fetchone()
            same = known is None or content_hash is None or known == content_hash
            if refused is not None and seen:
                return Refused(refused)
            if refused is not None and same:
                # Deleted and inserted, not updated: a new seq puts it behind the rows
                # accepted meanwhile, so the outbox order stays the order of publish.
                db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))
                db.execute(f"INSERT INTO {_ROW}", row)
                return "requeued"
        return "same" if same else "different"

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

    def sent(self, seq: int, now_ms: int, partition: int, offset: int) -> None:
        """Kafka acknowledged ``seq`` at ``partition``/``offset``: drop its payload, keep its
        event id and where it went."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET sent_ms = ?, payload = NULL, fingerprint = NULL,"
                " sent_partition = ?, sent_offset = ? WHERE seq = ?",
                (now_ms, partition, offset, seq),
            )

    def refused(
        self, reason: str, *, event_id: str | None, partition: int, offset: int
    ) -> str | None:
        """Record the broker's refusal of a sent row; return its event id, or None if no row
        is known (pruned, or sent by another program of the agency).

        A notice that names the event id comes from a record the broker opened, which it
        counts as seen (``refused_seen``); one without came from a record it could not open,
        found here by where Kafka put it."""
        with self._tx() as db:
            if event_id is not None:
                found = db.execute(
                    "SELECT event_id FROM outbox WHERE event_id = ?", (event_id,)
                ).fetchone()
            else:
                found = db.execute(
                    "SELECT event_id FROM outbox WHERE sent_partition = ? AND sent_offset = ?",
                    (partition, offset),
                ).fetchone()
            if found is None:
                return None
            db.execute(
                "UPDATE outbox SET refused = ?, refused_seen = ? WHERE event_id = ?",
                (reason, event_id is not None, found[0]),
            )
        return str(found[0])

    def refusal(self, event_id: str) -> tuple[str, bool] | None:
        """The broker's refusal of ``event_id`` (reason, whether it read the id), if any."""
        row = self._db.execute(
            "SELECT refused, refused_seen FROM outbox WHERE event_id = ? AND refused IS NOT NULL",
            (event_id,),
        ).fetchone()
        return (str(row[0]), bool(row[1])) if row else None

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

    def mark_handled(self, key: str, now_ms: int, parked_as: str | None = None) -> None:
        """Record success and forget any retry of it (parked under ``key``, or ``parked_as``
        for a row an older SDK parked by event id), in one local transaction."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO handled (event_id, handled_ms) VALUES (?, ?)",
                (key, now_ms),
            )
            db.execute("DELETE FROM retries WHERE event_id IN (?, ?)", (key, parked_as or key))

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
