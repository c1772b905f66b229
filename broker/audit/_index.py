"""The audit index: the audit topic as tables a compliance officer can query.

Why a separate index at all: the audit topic is the record of proof (chained, signed,
append-only) but it can only be read front to back; questions like "who received what about
this person" need an index by subject reference, recipient and time. The index is derived
data: it can always be rebuilt from the topic, and ``tiaki audit verify`` checks the topic,
not the index.

Shape (one row per audit record, one per (record, decision), one per (record, subject)):

- ``records``: where it sits (partition, offset, chain, seq), when, what, and the record's
  own Avro bytes (decoded again for the rows a query returns): in the row on PostgreSQL; on
  SQLite appended to a value log beside the database (``<index>.values``,
  :class:`ValueLog`), the row saying where;
- ``decisions``: one row per candidate recipient of a decision record (AuditRecord v2's
  ``decisions``), or the single top-level recipient of any other record;
- ``subjects``: the keyed hashes of the people a record is about;
- ``positions``: the next offset to read per partition, so indexing resumes;
- ``completed``: when the last indexing run that read the topic (or export) through ended
  (:meth:`AuditIndex.complete`); empty until one has, and ``tiaki audit query``,
  ``subject-report`` and ``grounds`` refuse such an index;
- ``access_log``: every read of the audit data, hash-chained
  (:meth:`AuditIndex.record_access`, :meth:`AuditIndex.access_log`);
- ``layout``: the version of this shape (:data:`LAYOUT`).

SQLite (stdlib) by default, with WAL and batched ``executemany`` in one transaction per
batch; PostgreSQL by URL through the same small :class:`Database` interface when the
``psycopg`` driver is installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import fastavro
import structlog

from broker.audit._chain import CHAIN_HEADER, SCHEMA_HEADER, SEQ_HEADER, parse_seq
from broker.audit._errors import IndexFailure, LogTampered, QueryError
from broker.audit._log import AUDIT_TOPIC, LogEntry
from broker.audit._skim import Skim, SkimError, Wanted
from broker.codec import CodecError, SchemaSet

log = structlog.get_logger("tiaki.audit")

#: A record id is its position packed into one integer: unique, and ordered like the topic.
_PARTITION_SHIFT = 1 << 40
#: So a record id fits a signed 64-bit column, a partition is below 2**23 (and an offset
#: below 2**40): other positions (a hand-made export's) are refused, never wrapped or merged.
_MAX_PARTITION = 1 << 23

#: The index's table layout; an index of another layout is rebuilt from the topic
#: (:meth:`AuditIndex.open` with ``rebuild``), never read.
LAYOUT = 3
#: Tables derived from the topic, dropped when an index is rebuilt (the access log is not).
_DERIVED = ("records", "decisions", "subjects", "positions", "value_log", "completed")
#: The tables every layout of the index has had: a database with a ``records`` table and
#: not all of these is someone else's, never rebuilt (its tables would be dropped).
_CORE = frozenset({"records", "decisions", "subjects", "positions", "access_log"})
#: Every table any layout of the index makes: a database with tables and none of these is
#: someone else's, and never gets the index's tables added to it.
_OURS = _CORE | {"layout", "value_log", "completed"}
#: The ``layout`` version a read that found a stored value altered leaves behind, so that
#: the next ``tiaki audit index`` rebuilds the index (no layout was ever negative).
_DAMAGED = -1

#: Tables; ``{pk}`` is the clustered-key clause (SQLite: ``WITHOUT ROWID``, so the subject
#: and decision tables are each one B-tree, not a table and an index).
#:
#: Why decisions are clustered by recipient and have no other index: each B-tree a decision
#: row lands in costs about as much as the row itself, and there are two or three decision
#: rows per record. Queries naming a recipient read their range of that one B-tree in the
#: order they return rows; queries about a person go through ``subjects`` to the records and
#: read the decisions from the records' own bytes; any other query scans the decision rows
#: (about a second per million records), which a compliance search can afford and indexing
#: at the log's pace could not.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS layout (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS records (
        id {id_type} PRIMARY KEY, partition INTEGER NOT NULL, log_offset BIGINT NOT NULL,
        chain TEXT, seq BIGINT, recorded_at BIGINT NOT NULL, action TEXT NOT NULL,
        event_id TEXT, event_type TEXT, source_agency TEXT, writer TEXT NOT NULL,
        value {blob}, value_at BIGINT, value_size INTEGER)""",
    # recipient is '' for a record about no recipient: key columns cannot be NULL.
    """CREATE TABLE IF NOT EXISTS decisions (
        record_id BIGINT NOT NULL, ordinal INTEGER NOT NULL, recorded_at BIGINT NOT NULL,
        action TEXT NOT NULL, event_type TEXT, source_agency TEXT, recipient TEXT NOT NULL,
        outcome TEXT, legal_basis TEXT,
        PRIMARY KEY (recipient, recorded_at, record_id, ordinal)){pk}""",
    """CREATE TABLE IF NOT EXISTS subjects (subject_ref TEXT NOT NULL,
        record_id BIGINT NOT NULL, PRIMARY KEY (subject_ref, record_id)){pk}""",
    "CREATE TABLE IF NOT EXISTS positions (partition INTEGER PRIMARY KEY, next_offset BIGINT)",
    # Where the value log's committed bytes end (SQLite), so opening checks it at once.
    "CREATE TABLE IF NOT EXISTS value_log (end_offset BIGINT NOT NULL)",
    # When the last indexing run that read its source through ended (AuditIndex.complete).
    # Added to layout 3 without a new layout: an index without it is one no run completed
    # since this table was added, and the next run (which reads only what is new) marks it.
    "CREATE TABLE IF NOT EXISTS completed (at_ms BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS access_log (
        seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, operator TEXT NOT NULL,
        command TEXT NOT NULL, query TEXT NOT NULL, results BIGINT NOT NULL,
        prev TEXT NOT NULL, link TEXT NOT NULL)""",
    # Review actions by event (AuditIndex.about); partial, so decision records cost nothing.
    """CREATE INDEX IF NOT EXISTS records_review_event ON records (event_id)
        WHERE action IN ('review', 'escalation')""",
)

#: Statements use ``?`` placeholders; the PostgreSQL driver's ``%s`` is substituted there.
_INSERT_RECORD = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_DECISION = "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: ``ordinal`` of the one row of a record without decision entries (its top-level fields).
TOP_LEVEL = -1


class ValueLog:
    """The records' Avro bytes beside a SQLite index, appended in one write per batch.

    Why not in the ``records`` table: a record's bytes are most of its size, and written into
    the B-tree (then into the WAL, then checkpointed) they were a tenth of indexing's cost;
    here they are one buffered append. Each row keeps where its bytes start and how long
    they are. Bytes are appended before the batch's transaction commits, so a crash leaves
    at most bytes no row points to (harmless, after the end); a log shorter than its rows say
    is found when the index opens (:meth:`AuditIndex.open` refuses it, or rebuilds).

    Every process that has the log open holds a shared lock on it, and a rebuild empties it
    only under an exclusive one: a query that opened the index before the rebuild would
    otherwise read the rebuilt log's new bytes at its old rows' offsets, another record's.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            _owner_only(path)
            self._file = open(path, "ab+")  # noqa: SIM115 - held open with the database
            fcntl.flock(self._file.fileno(), fcntl.LOCK_SH)  # waits while a rebuild empties it
        except OSError as exc:
            raise IndexFailure(f"cannot open the index's value log at {path}: {exc}") from None

    def append(self, values: Sequence[bytes]) -> list[int]:
        """Append ``values``; where each one starts."""
        self._file.seek(0, io.SEEK_END)
        at = self._file.tell()
        starts = []
        for value in values:
            starts.append(at)
            at += len(value)
        try:
            self._file.write(b"".join(values))
            self._file.flush()
        except OSError as exc:
            raise IndexFailure(f"index value log write failed: {exc}") from None
        return starts

    def read(self, at: int, size: int) -> bytes:
        try:
            value = os.pread(self._file.fileno(), size, at)
        except OSError as exc:
            raise IndexFailure(f"index value log read failed: {exc}") from None
        if len(value) != size:
            raise IndexFailure("the index's value log is shorter than its records say")
        return value

    def size(self) -> int:
        self._file.seek(0, io.SEEK_END)
        return self._file.tell()

    def clear(self) -> None:
        """Empty the log, if no other process has it open; raise otherwise (the caller's
        transaction then rolls back, and the index stays as it was)."""
        fd = self._file.fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)  # the conversion may have dropped the shared lock
            raise IndexFailure(
                "the audit index is open in another process (a query, or another "
                "`tiaki audit index`): rebuild it once that has finished; nothing was changed"
            ) from None
        try:
            self._file.truncate(0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)

    def close(self) -> None:
        self._file.close()


class Database(Protocol):
    """The little an index needs from a SQL database; SQLite and PostgreSQL implement it."""

    #: Table-definition details that differ: ``{"id_type": ..., "blob": ..., "pk": ...}``,
    #: and ``"tables"``, the query listing the tables there are.
    ddl: Mapping[str, str]
    #: Where the records' bytes are kept, if not in the ``records`` table.
    values: ValueLog | None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def transaction(self) -> Any: ...

    def close(self) -> None: ...


def _refuse_foreign(tables: set[str]) -> None:
    """Refuse a database that is not an index (someone else's, given to ``--db`` by
    mistake): one with a ``records`` table, since rebuilding it would drop that table (every
    layout of the index has had all of :data:`_CORE`), and one with tables but none of the
    index's, which would otherwise get the index's tables added to it. SQLite's own tables
    (``sqlite_sequence``, ``sqlite_stat1``) are no one's: a database with only those is
    empty."""
    if "records" in tables and not _CORE.issubset(tables):
        raise IndexFailure(
            "the database given has a records table but is not a Tiaki audit index (it lacks "
            f"{', '.join(sorted(_CORE - tables))}): nothing was changed; give the index a "
            "file or database of its own"
        )
    theirs = {name for name in tables if not name.startswith("sqlite_")}
    if theirs and not theirs & _OURS:
        raise IndexFailure(
            "the database given has tables but none of a Tiaki audit index's: nothing was "
            "changed; give the index a file or database of its own"
        )


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of the SQLite file at ``path``, read without changing it (no mode, journal
    or side file): an empty set if it does not exist yet."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        names = conn.execute(SqliteDatabase.ddl["tables"]).fetchall()
    finally:
        conn.close()
    return {str(name) for (name,) in names}


def _owner_only(path: Path) -> None:
    """Create ``path`` as ``0600`` if it does not exist, and make it ``0600`` if it does (an
    index made before this rule, under a ``022`` umask, was ``0644``). No umask change: that
    is process-wide, and would race with other threads creating files."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SqliteDatabase:
    """SQLite through the standard library: WAL, so queries run while indexing writes, and no
    fsync (``synchronous=OFF``): the index is derived data, rebuilt from the topic if a power
    cut loses its last batches, so durability is not worth paying for here.

    Owner-only: the index holds subject references (a classed identifier) and the access log,
    so its folder is created ``0700`` and the database and its value log are ``0600``. SQLite
    gives its side files (``-wal``, ``-shm``, ``-journal``) the database file's mode when it
    creates them; any left from before this rule are narrowed when the index opens."""

    ddl: Mapping[str, str] = {
        "id_type": "INTEGER",
        "blob": "BLOB",
        "pk": " WITHOUT ROWID",
        "tables": "SELECT name FROM sqlite_master WHERE type = 'table'",
    }

    def __init__(self, path: Path) -> None:
        try:
            _refuse_foreign(_sqlite_tables(path))  # before anything here changes the file
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _owner_only(path)  # before SQLite creates it, so its side files follow its mode
            self.values: ValueLog | None = ValueLog(path.with_name(path.name + ".values"))
            self._conn = sqlite3.connect(str(path), isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=OFF")
            self._conn.execute("PRAGMA cache_size=-65536")
            for suffix in ("-wal", "-shm", "-journal"):
                with suppress(FileNotFoundError):
                    path.with_name(path.name + suffix).chmod(0o600)
        except (sqlite3.Error, OSError) as exc:
            raise IndexFailure(f"cannot open the index at {path}: {exc}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise IndexFailure(f"index query failed: {exc}") from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise IndexFailure(f"index write failed: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._conn.rollback()
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()
        if self.values is not None:
            self.values.close()


class PostgresDatabase:
    """PostgreSQL through psycopg 3 (installed separately: ``pip install psycopg[binary]``)."""

    ddl: Mapping[str, str] = {
        "id_type": "BIGINT",
        "blob": "BYTEA",
        "pk": "",
        "tables": "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema()",
    }
    #: PostgreSQL keeps large values out of its tables' pages by itself (TOAST).
    values: ValueLog | None = None

    def __init__(self, url: str) -> None:
        try:  # an optional driver, needed only where an agency runs PostgreSQL
            psycopg: Any = importlib.import_module("psycopg")
        except ImportError:
            raise IndexFailure("a PostgreSQL index needs the psycopg package") from None
        self._psycopg: Any = psycopg
        try:
            self._conn: Any = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise IndexFailure(
                f"cannot connect to the index database: {type(exc).__name__}"
            ) from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), tuple(params))
                return list(cur.fetchall()) if cur.description else []
        except self._psycopg.Error as exc:
            raise IndexFailure(f"index query failed: {type(exc).__name__}") from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), list(rows))
        except self._psycopg.Error as exc:
            raise IndexFailure(f"index write failed: {type(exc).__name__}") from None

    def transaction(self) -> Any:
        return self._conn.transaction()

    def close(self) -> None:
        self._conn.close()


def open_database(target: str | Path) -> Database:
    """A database from a path (SQLite) or a ``postgresql://`` URL."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    return SqliteDatabase(Path(text))


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _number(value: Any) -> int | None:
    """A stored integer, or None if the database holds something else there (a value altered
    by hand: SQLite keeps text in an INTEGER column)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _within(value: Any, low: int, high: int) -> int | None:
    """A stored integer from ``low`` up to (not including) ``high``, or None: a value out of
    that range was altered too, and read on it would crash (a huge size allocated, a record
    id's partition past what packs) or mislead (a resume position past the topic's end)."""
    number = _number(value)
    return number if number is not None and low <= number < high else None


#: Where each stored number of the index lies (low, high); outside, it was altered.
_PARTITIONS = (0, _MAX_PARTITION)
_OFFSETS = (0, _PARTITION_SHIFT)
_NEXT_OFFSETS = (0, _PARTITION_SHIFT + 1)  # one past a partition's last indexed offset
_IDS = (0, _MAX_PARTITION * _PARTITION_SHIFT)
_SIZES = (0, 1 << 63)  # a place in, or a length of, the value log: a 64-bit column
#: Which entry of a record's decisions a decision row is: :data:`TOP_LEVEL`, or an index.
_ORDINALS = (TOP_LEVEL, 1 << 31)


#: What every "rebuild the index" message adds: rebuilding loses no record of who read it.
_KEPT = "(its access log is kept)"


def _damage(where: str) -> IndexFailure:
    """The error for a stored value that does not read, naming its table and column (never
    the value: it may be a person's)."""
    return IndexFailure(
        f"the audit index is damaged (a value in {where} is altered or out of range): run "
        f"`tiaki audit index` to rebuild it from the audit topic {_KEPT}"
    )


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def record_id(partition: int, offset: int) -> int:
    return partition * _PARTITION_SHIFT + offset


#: The fields of an audit record that become index columns (:func:`index_rows` reads no
#: other); the rest stays in the record's bytes, decoded whole for the rows a query returns.
_PER_DECISION = ("recipient", "outcome", "legal_basis")
INDEXED: Wanted = {
    **dict.fromkeys(
        ("recorded_at", "action", "event_id", "event_type", "source_agency", "subject_refs"),
        True,
    ),
    **dict.fromkeys(_PER_DECISION, True),  # a record without decisions has them at top level
    "decisions": dict.fromkeys(_PER_DECISION, True),
}


def index_rows(
    entry: LogEntry, record: Mapping[str, Any], writer: str
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[str, int]]]:
    """The rows one decoded audit record becomes (pure).

    A decision record (AuditRecord v2) becomes one decision row per candidate recipient; any
    other record one row from its top-level recipient fields. Only what queries filter on
    becomes a column; the record itself is kept as its Avro bytes (``writer`` names its
    schema) and decoded again for the few rows a query returns, which is what makes
    indexing fast: no re-encoding of lists and maps per row.
    """
    return _index_rows(entry, dict(reversed(entry.headers)), record, writer)


def _chain_name(chain: bytes | None) -> str | None:
    """A record's chain, as its header names it; None if it names none in UTF-8, or one with
    a NUL (which PostgreSQL's text refuses). Such a record is indexed all the same: ``tiaki
    audit verify`` reports its headers."""
    try:
        name = chain.decode() if chain is not None else None
    except UnicodeDecodeError:
        return None
    return None if name is None or "\0" in name else name


#: The times (ms since the epoch) a query can turn into a date: the years 1 to 9999.
_EARLIEST_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
_LATEST_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)


def _chain_seq(seq: bytes | None) -> int | None:
    """A record's place in its chain, as the verifier reads it (:func:`parse_seq`); None if
    it has none, or one a signed 64-bit column cannot hold (the verifier reports the first;
    no writer reaches the second)."""
    number = None if seq is None else parse_seq(seq)
    return number if number is not None and number < 1 << 63 else None


def _index_rows(
    entry: LogEntry, headers: Mapping[str, bytes], record: Mapping[str, Any], writer: str
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[str, int]]]:
    """:func:`index_rows` given the entry's headers by name (the first of each name, as
    :meth:`LogEntry.header` reads them)."""
    rid = entry.partition * _PARTITION_SHIFT + entry.offset
    at = record["recorded_at"]
    if type(at) is not int:
        at = _ms(at)
    if not _EARLIEST_MS <= at <= _LATEST_MS:
        # Indexed, every query that met it would fail and call the index damaged, and a
        # rebuild would index it again: refused here, as a record that does not decode is.
        raise IndexFailure("audit record's recorded_at is outside the years 1 to 9999")
    chain = headers.get(CHAIN_HEADER)
    seq = headers.get(SEQ_HEADER)
    action = str(record["action"])
    event_type = record.get("event_type")
    source = record.get("source_agency")
    row = (
        rid,
        entry.partition,
        entry.offset,
        _chain_name(chain),
        _chain_seq(seq),
        at,
        action,
        record.get("event_id"),
        event_type,
        source,
        writer,
        entry.value,
    )
    entries = record.get("decisions")
    if entries:
        rows = [
            (
                rid,
                i,
                at,
                action,
                event_type,
                source,
                d["recipient"],
                d["outcome"],
                d.get("legal_basis"),
            )
            for i, d in enumerate(entries)
        ]
    else:
        rows = [
            (
                rid,
                TOP_LEVEL,
                at,
                action,
                event_type,
                source,
                record.get("recipient") or "",
                record.get("outcome"),
                record.get("legal_basis"),
            )
        ]
    refs = record.get("subject_refs") or ()
    return row, rows, [(ref, rid) for ref in dict.fromkeys(refs)]


class Decoder:
    """Audit record bytes to dicts, by writer fingerprint, with the writer's own schema.

    Why not :meth:`SchemaSet.decode`: the index reads each record exactly as written (a v1
    record simply has no ``decisions``), and it wants times as epoch milliseconds and ids as
    text, so it reads each writer schema without logical types. Indexing skims
    (:meth:`skim`: the indexed fields only); a query decodes the few records it returns
    whole (:meth:`decode`). Bytes that do not skim raise :class:`IndexFailure`; bytes that
    do not decode are None.
    """

    def __init__(
        self, schemas: SchemaSet | None, definitions: Mapping[str, Any] | None = None
    ) -> None:
        self._schemas = schemas
        self._definitions = dict(definitions or {})
        self._parsed: dict[str, Any] = {}
        self._skims: dict[str, Skim] = {}

    @classmethod
    def from_definitions(cls, definitions: Mapping[str, Any]) -> Decoder:
        """A decoder knowing only ``definitions`` (writer fingerprint to schema JSON)."""
        return cls(None, definitions)

    def definitions(self) -> dict[str, Any]:
        """Every AuditRecord version's definition by fingerprint (for decoding processes)."""
        found = dict(self._definitions)
        if self._schemas is not None:
            for schema in self._schemas.versions("AuditRecord"):
                found[schema.fingerprint_hex] = schema.definition
        return found

    def _definition(self, writer: str) -> Any:
        definition = self._definitions.get(writer)
        if definition is None and self._schemas is not None:
            try:
                definition = self._schemas.by_fingerprint(bytes.fromhex(writer)).definition
            except (CodecError, ValueError):
                definition = None
        if definition is None:
            raise IndexFailure("audit record of an unknown schema")
        return _without_logical(definition)

    def _plain(self, writer: str) -> Any:
        parsed = self._parsed.get(writer)
        if parsed is None:
            parsed = self._parsed[writer] = fastavro.parse_schema(self._definition(writer))
        return parsed

    def decode(self, value: bytes, writer: str) -> dict[str, Any] | None:
        """The whole record (for the rows a query returns), or None if the bytes do not
        decode (the index then says which of its values was altered)."""
        parsed = self._plain(writer)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(value), parsed, None)
        except Exception:  # truncated or corrupt bytes: EOFError, IndexError, UnicodeError...
            return None
        return record if isinstance(record, dict) else None

    def skim(self, value: bytes, writer: str) -> dict[str, Any]:
        """Only the fields :func:`index_rows` reads (:data:`INDEXED`), two and a half times
        as fast as :meth:`decode` (see :mod:`broker.audit._skim`)."""
        try:
            return self.skimmer(writer)(value)
        except SkimError:
            raise IndexFailure("audit record does not decode") from None

    def skimmer(self, writer: str) -> Skim:
        """The skim of one writer schema (raising :class:`SkimError` on bad bytes)."""
        skim = self._skims.get(writer)
        if skim is None:
            skim = self._skims[writer] = Skim(self._definition(writer), INDEXED)
        return skim


def _recorded_at(record: Mapping[str, Any]) -> datetime | None:
    """When a decoded record was written, or None if its time is none a datetime holds."""
    try:
        return datetime.fromtimestamp(_ms(record["recorded_at"]) / 1000, UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def _row(record: Mapping[str, Any], ordinal: int, partition: int, offset: int) -> Row:
    """A query row from a decoded record and which of its decisions (or its top level)."""
    d = record if ordinal == TOP_LEVEL else record["decisions"][ordinal]
    return Row(
        recorded_at=datetime.fromtimestamp(_ms(record["recorded_at"]) / 1000, UTC),
        action=str(record["action"]),
        event_type=record.get("event_type"),
        event_id=record.get("event_id"),
        source_agency=record.get("source_agency"),
        recipient=d.get("recipient"),
        outcome=d.get("outcome"),
        route=d.get("route"),
        legal_basis=d.get("legal_basis"),
        purpose=d.get("purpose"),
        person_told=d.get("person_told"),
        rule_ids=tuple(d.get("rule_ids") or ()),
        reason_codes=tuple(d.get("reason_codes") or ()),
        field_actions=dict(d.get("field_actions") or {}),
        schema_fingerprint=record.get("schema_fingerprint"),
        partition=partition,
        offset=offset,
        actor=record.get("actor"),
    )


#: Records for :meth:`AuditIndex._record_rows`: those about a person, and the review actions
#: on one source's event (an event id is unique only within its source, and only for a day:
#: the replay cache forgets it after that).
_PERSON_RECORDS = (
    "SELECT r.id, r.value, r.value_at, r.value_size, r.writer, r.partition, r.log_offset"
    " FROM subjects s JOIN records r ON r.id = s.record_id WHERE s.subject_ref = ?"
)
_REVIEW_RECORDS = (
    "SELECT r.id, r.value, r.value_at, r.value_size, r.writer, r.partition, r.log_offset"
    " FROM records r WHERE r.action IN ('review', 'escalation') AND r.event_id = ?"
    " AND r.source_agency = ?"
)


def _matches(row: Row, q: Query) -> bool:
    """Whether ``row`` has every field ``q`` names (but the person and the times)."""
    return all(
        wanted is None or wanted == have
        for wanted, have in (
            (q.recipient, row.recipient),
            (q.source, row.source_agency),
            (q.event_type, row.event_type),
            (q.legal_basis, row.legal_basis),
            (q.outcome, row.outcome),
            (q.action, row.action),
        )
    )


def _without_logical(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _without_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical(v) for v in node]
    return node


Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[str, int]]]
#: Entries per unit of work handed to a decoding process.
_CHUNK = 2000


def rows_of(decoder: Decoder, entries: Sequence[LogEntry]) -> Rows:
    """(record rows, decision rows, subject rows) of audit-topic entries."""
    records: list[tuple[Any, ...]] = []
    decisions: list[tuple[Any, ...]] = []
    subjects: list[tuple[str, int]] = []
    skims: dict[bytes, tuple[str, Skim]] = {}  # by schema header: the loop's one lookup
    entry: LogEntry | None = None
    try:
        for entry in entries:
            headers = dict(reversed(entry.headers))
            header = headers.get(SCHEMA_HEADER)
            if header is None:
                raise IndexFailure("audit record without a schema header")
            known = skims.get(header)
            if known is None:
                writer = header.decode(errors="replace")
                known = skims[header] = (writer, decoder.skimmer(writer))
            writer, skim = known
            row, rows, refs = _index_rows(entry, headers, skim(entry.value), writer)
            records.append(row)
            decisions.extend(rows)
            subjects.extend(refs)
    except (IndexFailure, SkimError) as exc:  # named by the entry the loop stopped at
        reason = "audit record does not decode" if isinstance(exc, SkimError) else exc
        raise IndexFailure(f"{entry.position if entry else 'audit log'}: {reason}") from None
    return records, decisions, subjects


_worker_decoder: Decoder | None = None


def _start_worker(definitions: Mapping[str, Any]) -> None:
    global _worker_decoder  # one decoder per worker process, made once
    _worker_decoder = Decoder.from_definitions(definitions)


#: An entry as it crosses to a decoding process: plain tuples pickle several times faster than
#: a dataclass.
_Wire = tuple[int, int, tuple[tuple[str, bytes], ...], bytes]


def _rows_in_worker(wires: Sequence[_Wire]) -> Rows:
    """Rows of the entries without the record bytes, which the writing process already has
    (so they cross the process boundary once, not twice)."""
    if _worker_decoder is None:  # the pool initializer always runs first
        raise IndexFailure("decoding process not started")
    entries = [LogEntry(AUDIT_TOPIC, p, o, None, v, h, 0) for p, o, h, v in wires]
    records, decisions, subjects = rows_of(_worker_decoder, entries)
    return [(*r[:-1], None) for r in records], decisions, subjects


@dataclass(frozen=True)
class Query:
    """What ``tiaki audit query`` asks; every field optional (all given are ANDed)."""

    subject_ref: str | None = None
    recipient: str | None = None
    source: str | None = None
    event_type: str | None = None
    legal_basis: str | None = None
    outcome: str | None = None
    action: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 1000

    def described(self) -> dict[str, Any]:
        """The query as the access log records it: never an identifier, only its hash."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Row:
    """One (audit record, decision) pair, as queries return it."""

    recorded_at: datetime
    action: str
    event_type: str | None
    event_id: str | None
    source_agency: str | None
    recipient: str | None
    outcome: str | None
    route: str | None
    legal_basis: str | None
    purpose: str | None
    person_told: str | None
    rule_ids: tuple[str, ...]
    reason_codes: tuple[str, ...]
    field_actions: dict[str, str]
    schema_fingerprint: str | None
    partition: int
    offset: int
    #: Who acted: ``broker`` for its decisions, the named person for a review action.
    actor: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = dict(vars(self))
        doc["recorded_at"] = self.recorded_at.isoformat()
        doc["rule_ids"] = list(self.rule_ids)
        doc["reason_codes"] = list(self.reason_codes)
        return doc


@dataclass(frozen=True)
class StatedGrounds:
    """What one decision record keeps of the grounds its discloser stated (FVA-07)."""

    recorded_at: datetime
    source_agency: str | None
    justification_ref: str | None
    accountable_ref: str | None
    partition: int
    offset: int


_DECISION_RECORDS = (
    "SELECT value, value_at, value_size, writer, partition, log_offset FROM records"
    " WHERE event_id = ? AND action = 'decision'"
)

ACCESS_CONTEXT = b"tiaki/v1/access-link\x00"


def access_link(
    seq: int, prev: str, at_ms: int, operator: str, command: str, query: str, results: int
) -> str:
    body = _json([seq, prev, at_ms, operator, command, query, results]).encode()
    return hashlib.sha256(ACCESS_CONTEXT + body).hexdigest()


@dataclass(frozen=True)
class Access:
    seq: int
    at: datetime
    operator: str
    command: str
    query: dict[str, Any]
    results: int


class AuditIndex:
    """The index over one database (not thread-safe)."""

    def __init__(self, db: Database, schemas: SchemaSet, *, rebuild: bool = False) -> None:
        self._db = db
        self._decoder = Decoder(schemas)
        self._pool: ProcessPoolExecutor | None = None
        try:
            self._prepare(rebuild)
        except BaseException:
            db.close()
            raise

    @classmethod
    def open(cls, target: str | Path, schemas: SchemaSet, *, rebuild: bool = False) -> AuditIndex:
        """The index at ``target``, made if new. An index of an earlier layout is rebuilt
        if ``rebuild`` (what ``tiaki audit index`` asks: its derived tables are dropped and
        filled again from the topic; the access log is kept), and refused otherwise."""
        return cls(open_database(target), schemas, rebuild=rebuild)

    def _prepare(self, rebuild: bool) -> None:
        db = self._db
        with db.transaction():
            tables = {str(name) for (name,) in db.execute(db.ddl["tables"])}
            _refuse_foreign(tables)
            if "records" in tables:  # an index already: of which layout (0: from before)
                db.execute("CREATE TABLE IF NOT EXISTS layout (version INTEGER NOT NULL)")
                found = db.execute("SELECT version FROM layout")
                layout = _number(found[0][0]) if found else 0
                if layout is None and not rebuild:  # altered by hand, or by a disk fault
                    raise IndexFailure(
                        "the audit index is damaged (its layout version is not a number): run "
                        f"`tiaki audit index` to rebuild it from the audit topic {_KEPT}"
                    )
                if layout == _DAMAGED and not rebuild:  # left by a read (AuditIndex._damaged)
                    raise IndexFailure(
                        "the audit index is damaged (a read found a value in it altered or out "
                        f"of range): run `tiaki audit index` to rebuild it from the audit topic "
                        f"{_KEPT}"
                    )
                if layout not in (None, LAYOUT, _DAMAGED) and not rebuild:
                    raise IndexFailure(
                        f"the audit index has layout {layout} and this Tiaki reads layout "
                        f"{LAYOUT}: run `tiaki audit index` to rebuild it from the audit "
                        f"topic {_KEPT}"
                    )
                damaged = layout == LAYOUT and self._values_short()
                if damaged and not rebuild:
                    raise IndexFailure(
                        "the audit index's value log is shorter than its records say: run "
                        f"`tiaki audit index` to rebuild it from the audit topic {_KEPT}"
                    )
                # Indexing reads the resume positions first, and positions() refuses ones
                # that do not read: opened to index, the index checks them here and is
                # rebuilt instead (one row per partition: the check costs nothing).
                if rebuild and layout == LAYOUT and not damaged:
                    damaged = not self._positions_read()
                if layout != LAYOUT or damaged:
                    for table in _DERIVED:
                        db.execute(f"DROP TABLE IF EXISTS {table}")
                    db.execute("DELETE FROM layout")
                    if db.values is not None:
                        db.values.clear()
                    log.warning("audit index rebuilt", layout_was=layout, layout=LAYOUT)
            for statement in _SCHEMA:
                db.execute(statement.format(**db.ddl))
            if not db.execute("SELECT version FROM layout"):
                db.execute("INSERT INTO layout VALUES (?)", (LAYOUT,))

    def _positions_read(self) -> bool:
        """Whether every resume position reads (:meth:`positions`, without the error)."""
        return all(
            _within(p, *_PARTITIONS) is not None and _within(o, *_NEXT_OFFSETS) is not None
            for p, o in self._db.execute("SELECT partition, next_offset FROM positions")
        )

    def _values_short(self) -> bool:
        values = self._db.values
        if values is None:
            return False
        found = self._db.execute("SELECT end_offset FROM value_log")
        if not found:
            return False
        end = _number(found[0][0])
        return end is None or end > values.size()  # not a number: damaged all the same

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self._db.close()

    def __enter__(self) -> AuditIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    def positions(self) -> dict[int, int]:
        """The next offset to index, per partition."""
        return {
            self._stored(p, "positions.partition", _PARTITIONS): self._stored(
                o, "positions.next_offset", _NEXT_OFFSETS
            )
            for p, o in self._db.execute("SELECT partition, next_offset FROM positions")
        }

    def complete(self, now: datetime) -> None:
        """Mark the index as holding its source as read through at ``now``: what ``tiaki
        audit index`` does once a run has read the topic (or export) to its end. Until a run
        has, the index answers nothing (:meth:`completed` is None), since a failed first run's
        index would answer "nobody" about everyone it had not reached."""
        with self._db.transaction():
            self._db.execute("DELETE FROM completed")
            self._db.execute("INSERT INTO completed VALUES (?)", (_ms(now),))

    def completed(self) -> datetime | None:
        """When the last indexing run that read its source through ended; None if none has
        since the index was made (or rebuilt)."""
        found = self._db.execute("SELECT at_ms FROM completed")
        if not found:
            return None
        at = self._stored(found[0][0], "completed.at_ms", (_EARLIEST_MS, _LATEST_MS + 1))
        return datetime.fromtimestamp(at / 1000, UTC)

    def add(self, entries: Sequence[LogEntry], *, workers: int = 1) -> int:
        """Index a batch of audit-topic entries in one transaction; return records indexed.

        Entries already indexed (at or past a partition's position) are skipped, so indexing
        is idempotent and resumes where it stopped. With ``workers`` > 1, decoding (most of
        the cost) runs in that many processes while this one writes.
        """
        done = self.positions()
        todo = [e for e in entries if e.offset >= done.get(e.partition, 0)]
        if not todo:
            return 0
        upto: dict[int, int] = {}
        for entry in todo:
            if not (0 <= entry.partition < _MAX_PARTITION and 0 <= entry.offset < _PARTITION_SHIFT):
                raise IndexFailure(
                    f"{entry.position}: beyond what the index can hold (a record id packs a "
                    f"partition below 2^{_MAX_PARTITION.bit_length() - 1} and an offset below "
                    f"2^{_PARTITION_SHIFT.bit_length() - 1})"
                )
            upto[entry.partition] = max(upto.get(entry.partition, 0), entry.offset + 1)
        with self._db.transaction():
            if workers <= 1:
                self._insert(*rows_of(self._decoder, todo))
            else:
                chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
                wires = [[(e.partition, e.offset, e.headers, e.value) for e in c] for c in chunks]
                pool = self._workers(workers)
                try:
                    for chunk, (records, decisions, subjects) in zip(
                        chunks, pool.map(_rows_in_worker, wires), strict=True
                    ):
                        whole = [(*r[:-1], e.value) for r, e in zip(records, chunk, strict=True)]
                        self._insert(whole, decisions, subjects)
                except BrokenProcessPool:
                    self._pool = None
                    raise IndexFailure("a decoding process died; nothing was indexed") from None
            for partition, offset in upto.items():
                self._db.execute("DELETE FROM positions WHERE partition = ?", (partition,))
                self._db.execute("INSERT INTO positions VALUES (?, ?)", (partition, offset))
        return len(todo)

    def _workers(self, count: int) -> ProcessPoolExecutor:
        # Spawned, not forked: a fork copies locks other threads may hold (a hang seen in
        # tests); and an executor, not a Pool, because a Pool waits forever for the work of
        # a process that died, where an executor raises BrokenProcessPool.
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self._decoder.definitions(),),
            )
        return self._pool

    def add_rows(
        self,
        records: Sequence[tuple[Any, ...]],
        decisions: Sequence[tuple[Any, ...]],
        subjects: Sequence[tuple[str, int]],
    ) -> None:
        """Insert already-built rows in one transaction (the benchmark's bulk path)."""
        with self._db.transaction():
            self._insert(records, decisions, subjects)

    def _insert(
        self,
        records: Sequence[tuple[Any, ...]],
        decisions: Sequence[tuple[Any, ...]],
        subjects: Sequence[tuple[str, int]],
    ) -> None:
        values = self._db.values
        if values is None:
            rows = [(*r, None, None) for r in records]
        else:  # the bytes (each row's last column) go to the value log, the row says where
            starts = values.append([r[-1] for r in records])
            rows = [(*r[:-1], None, at, len(r[-1])) for r, at in zip(records, starts, strict=True)]
            if rows:
                self._db.execute("DELETE FROM value_log")
                self._db.execute("INSERT INTO value_log VALUES (?)", (values.size(),))
        self._db.executemany(_INSERT_RECORD, rows)
        self._db.executemany(_INSERT_DECISION, decisions)
        self._db.executemany("INSERT INTO subjects VALUES (?, ?)", subjects)

    # -- reading ------------------------------------------------------------------------------

    def count(self) -> tuple[int, int, int]:
        """(records, decision rows, subject rows)."""
        ((r,),) = self._db.execute("SELECT COUNT(*) FROM records")
        ((d,),) = self._db.execute("SELECT COUNT(*) FROM decisions")
        ((s,),) = self._db.execute("SELECT COUNT(*) FROM subjects")
        return int(r), int(d), int(s)

    def query(self, q: Query) -> list[Row]:
        """Rows matching ``q``, oldest first."""
        if q.limit <= 0:
            raise QueryError("the limit must be positive")
        if q.subject_ref is not None:
            found = self._db.execute(_PERSON_RECORDS, (q.subject_ref,))
            return self._record_rows(found, q)[: q.limit]
        sql = [
            "SELECT d.record_id, d.ordinal, r.value, r.value_at, r.value_size, r.writer,"
            " r.partition, r.log_offset FROM decisions d JOIN records r ON r.id = d.record_id"
        ]
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("d.recipient", q.recipient),
            ("d.source_agency", q.source),
            ("d.event_type", q.event_type),
            ("d.legal_basis", q.legal_basis),
            ("d.outcome", q.outcome),
            ("d.action", q.action),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.since_ms is not None:
            where.append("d.recorded_at >= ?")
            params.append(q.since_ms)
        if q.until_ms is not None:
            where.append("d.recorded_at < ?")
            params.append(q.until_ms)
        if where:
            sql.append(" WHERE " + " AND ".join(where))
        sql.append(" ORDER BY d.recorded_at, d.record_id, d.ordinal LIMIT ?")
        params.append(q.limit)
        return self._rows(self._db.execute("".join(sql), params))

    def _rows(self, found: Iterable[Sequence[Any]]) -> list[Row]:
        decoded: dict[Any, dict[str, Any]] = {}  # by record id, as stored: only a key here
        out: list[Row] = []
        for rid, ordinal, value, at, size, writer, partition, offset in found:
            record = decoded.get(rid)
            if record is None:
                record = decoded[rid] = self._record(value, at, size, writer)
            out.append(_row(record, self._ordinal(record, ordinal), *self._at(partition, offset)))
        return out

    # Every value a query takes from a records or decisions row passes through one of the
    # methods below (positions() through _stored too), which refuse what the index never
    # writes there (text in an integer column, a huge integer, NULL): a hand's alteration,
    # or a disk fault, is a one-line error, never a traceback.

    def _damaged(self, where: str) -> IndexFailure:
        """:func:`_damage`'s error for ``where``, after marking the index damaged
        (:data:`_DAMAGED`): which other rows the alteration reached no read can tell, and
        checking every row whenever the index opens would cost a scan of it, so instead the
        next ``tiaki audit index`` rebuilds it, as the error says, and reads refuse it until
        then. Best effort: if the mark cannot be written, the error is raised all the same."""
        with suppress(IndexFailure):
            self._db.execute("UPDATE layout SET version = ?", (_DAMAGED,))
        return _damage(where)

    def _stored(self, value: Any, where: str, bounds: tuple[int, int]) -> int:
        """A stored integer within ``bounds`` (:func:`_within`); ``where`` names its column."""
        number = _within(value, *bounds)
        if number is None:
            raise self._damaged(where)
        return number

    def _at(self, partition: Any, offset: Any) -> tuple[int, int]:
        """Where a record sits in the topic, from its row."""
        return (
            self._stored(partition, "records.partition", _PARTITIONS),
            self._stored(offset, "records.log_offset", _OFFSETS),
        )

    def _ordinal(self, record: Mapping[str, Any], ordinal: Any) -> int:
        """Which of ``record``'s decisions a decision row is: one it has, or its top level
        if it has none (as :func:`index_rows` numbers them)."""
        number = self._stored(ordinal, "decisions.ordinal", _ORDINALS)
        entries = record.get("decisions") or ()
        if not (0 <= number < len(entries) or (number == TOP_LEVEL and not entries)):
            raise self._damaged("decisions.ordinal")
        return number

    def _record(self, value: Any, at: Any, size: Any, writer: Any) -> dict[str, Any]:
        """A record's fields, decoded from its bytes with its writer's schema. Bytes that
        do not decode, or whose time is not one (a year past 9999), were altered: the topic's
        records all decoded when they were indexed."""
        if not isinstance(writer, str):
            raise self._damaged("records.writer")
        record = self._decoder.decode(self._value(value, at, size), writer)
        if record is None or _recorded_at(record) is None:
            raise self._damaged("records.value" if value is not None else "the value log")
        return record

    def _value(self, value: Any, at: Any, size: Any) -> bytes:
        """A record's bytes: in its row, or in the value log where its row says."""
        if value is not None:
            if not isinstance(value, bytes | bytearray | memoryview):  # text, or a number
                raise self._damaged("records.value")
            return bytes(value)
        values = self._db.values
        if values is None:  # PostgreSQL: the bytes belong in the row
            raise self._damaged("records.value")
        start = self._stored(at, "records.value_at", _SIZES)
        length = self._stored(size, "records.value_size", _SIZES)
        if start + length > values.size():  # checked first: a huge size would be allocated
            raise self._damaged("records.value_at or records.value_size")
        return values.read(start, length)

    def _record_rows(
        self, found: Iterable[Sequence[Any]], q: Query | None = None, *, naming_nobody: bool = False
    ) -> list[Row]:
        """Every row of each record found (``_PERSON_RECORDS``' columns) that matches ``q``'s fields
        other than the person, oldest first: the decisions read from the records' bytes. With
        ``naming_nobody``, only the rows of records that name no person."""
        keyed: list[tuple[tuple[int, int, int], Row]] = []
        for rid, value, at, size, writer, partition, offset in found:
            record = self._record(value, at, size, writer)
            if naming_nobody and record.get("subject_refs"):
                continue
            at = _ms(record["recorded_at"])
            if q is not None and not (
                (q.since_ms is None or at >= q.since_ms) and (q.until_ms is None or at < q.until_ms)
            ):
                continue
            key = self._stored(rid, "records.id", _IDS)
            where = self._at(partition, offset)
            ordinals = range(len(record.get("decisions") or ())) or (TOP_LEVEL,)
            for ordinal in ordinals:
                row = _row(record, ordinal, *where)
                if q is None or _matches(row, q):
                    keyed.append(((at, key, ordinal), row))
        keyed.sort(key=lambda pair: pair[0])
        return [row for _, row in keyed]

    def about(self, subject_ref: str, *, limit: int = 1_000_000) -> list[Row]:
        """Every row about one person: those naming them, and the review actions on items
        held about them.

        Why the second part: brokers before the held item carried its event's subject
        references wrote a reviewer's approve or decline record with none (the held body is
        minimised, identifiers possibly pseudonymised); such a record is found through the
        decision record that held the item (same source, same event, same recipient). Only a
        record that names nobody is found this way: one that names people says whom it is
        about, and an event id is unique only within its source (and only for a day), so the
        same id may be another person's event. Records that name the person themselves are not
        listed twice.
        """
        rows = self.query(Query(subject_ref=subject_ref, limit=limit))
        held = {
            (r.source_agency, r.event_id, r.recipient)
            for r in rows
            if r.action == "decision" and r.outcome == "review"
        }
        keys = sorted({(s, e) for s, e, _ in held if s is not None and e is not None})
        if not keys:
            return rows
        found: list[Sequence[Any]] = []
        for source, event_id in keys:
            found += self._db.execute(_REVIEW_RECORDS, (event_id, source))
        listed = {(r.partition, r.offset) for r in rows}
        actions = [
            r
            for r in self._record_rows(found, naming_nobody=True)
            if (r.source_agency, r.event_id, r.recipient) in held
            and (r.partition, r.offset) not in listed
        ]
        return sorted(rows + actions, key=lambda r: (r.recorded_at, r.partition, r.offset))

    def grounds(self, event_id: str, source: str | None = None) -> list[StatedGrounds]:
        """The stated grounds every decision record about ``event_id`` from ``source`` keeps
        (keyed hashes, AuditRecord v3; a record written before v3 keeps none), oldest first;
        from every source that used the id if ``source`` is None (an event id is unique only
        within its source: the caller tells them apart by :attr:`StatedGrounds.source_agency`).

        Decision records are not indexed by event id (a question asked of one event at a
        time, in a dispute, not of the whole log), so this reads the records table through."""
        if source is None:
            found = self._db.execute(_DECISION_RECORDS + " ORDER BY id", (event_id,))
        else:
            found = self._db.execute(
                _DECISION_RECORDS + " AND source_agency = ? ORDER BY id", (event_id, source)
            )
        out = []
        for value, at, size, writer, partition, offset in found:
            record = self._record(value, at, size, writer)
            partition, offset = self._at(partition, offset)
            out.append(
                StatedGrounds(
                    recorded_at=datetime.fromtimestamp(_ms(record["recorded_at"]) / 1000, UTC),
                    source_agency=record.get("source_agency"),
                    justification_ref=record.get("justification_ref"),
                    accountable_ref=record.get("accountable_ref"),
                    partition=partition,
                    offset=offset,
                )
            )
        return out

    # -- the access log -----------------------------------------------------------------------

    def record_access(
        self, *, operator: str, command: str, query: Mapping[str, Any], results: int, now: datetime
    ) -> Access:
        """Chain one read of the index into the access log (who, what query, when)."""
        if not operator.strip():
            raise QueryError("an operator identity is required to read the audit index")
        text = _json(dict(query))
        at = _ms(now)
        with self._db.transaction():
            last = self._db.execute("SELECT seq, link FROM access_log ORDER BY seq DESC LIMIT 1")
            seq, prev = 0, "0" * 64
            if last:
                # The next seq must fit the column too: 2**63 would not insert.
                top = _within(last[0][0], 0, (1 << 63) - 1)
                if top is None:
                    raise LogTampered(
                        "access log",
                        "last entry altered (its seq is not a number a next can follow)",
                    )
                seq, prev = top + 1, str(last[0][1])
            link = access_link(seq, prev, at, operator, command, text, results)
            self._db.execute(
                "INSERT INTO access_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, at, operator, command, text, results, prev, link),
            )
        return Access(seq, now, operator, command, dict(query), results)

    def access_log(self) -> list[Access]:
        """Every recorded access, after checking the access log's chain."""
        rows = self._db.execute(
            "SELECT seq, at_ms, operator, command, query, results, prev, link FROM access_log"
            " ORDER BY seq"
        )
        prev = "0" * 64
        out: list[Access] = []
        for expected, (seq, at, operator, command, query, results, stored_prev, link) in enumerate(
            rows
        ):
            where = f"access log seq {expected}"
            if _number(seq) != expected:
                raise LogTampered(where, "missing")
            at, results = _number(at), _number(results)
            if at is None or results is None:  # SQLite keeps text in an integer column
                raise LogTampered(where, "entry altered (not a number where one belongs)")
            if not all(isinstance(v, str) for v in (operator, command, query, stored_prev, link)):
                raise LogTampered(where, "entry altered (not text where text belongs)")
            if (
                stored_prev != prev
                or access_link(expected, prev, at, operator, command, query, results) != link
            ):
                raise LogTampered(where, "entry altered or out of chain")
            prev = link
            # The chain is not keyed: a consistent rewrite can still hold what does not read.
            try:
                when = datetime.fromtimestamp(at / 1000, UTC)
                described = json.loads(query)
            except (TypeError, ValueError, OverflowError, OSError, RecursionError):
                raise LogTampered(
                    where, "entry altered (its time or query does not read)"
                ) from None
            out.append(Access(expected, when, operator, command, described, results))
        return out
