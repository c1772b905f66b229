"""An index altered by hand (or by a disk fault): a value read back from its tables that the
index never writes there (text in an integer column, a huge integer, NULL) is a one-line
"damaged, rebuild it" error naming the table and column, never a traceback and never the
value (it may be a person's); ``tiaki audit index`` then rebuilds the index, keeping its
access log. And ``tiaki audit index --db`` given another application's database changes
nothing in it.

Every value here is synthetic: ``SYN-`` text stands for whatever a hand might write.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest

from broker._cli import main
from broker.audit import AuditIndex, IndexFailure, LogTampered, Query
from broker.audit._index import _without_logical, open_database
from broker.codec import SchemaSet
from tests.unit.test_cli_inputs import one_line

from .conftest import PERSON, T0, SyntheticLog, audit_record, event_id, person_ref
from .test_cli import export
from .test_cli import home as home
from .test_cli import log as log
from .test_index import index as index
from .test_postgres import pg_url as pg_url
from .test_postgres import url as url

#: What every damaged-index error says to do.
REBUILD = "run `tiaki audit index` to rebuild it from the audit topic (its access log is kept)"


def alter(path: Path, sql: str, *params: Any) -> None:
    """Change the index at ``path`` as a hand would: with SQLite, not through Tiaki."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def damaged(where: str) -> str:
    return f"the audit index is damaged (a value in {where} is altered or out of range): {REBUILD}"


# -- through the API ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("UPDATE positions SET next_offset = 'SYN-x'", "positions.next_offset"),
        ("UPDATE positions SET next_offset = NULL", "positions.next_offset"),
        ("UPDATE positions SET next_offset = 99999999999999999999", "positions.next_offset"),
        ("UPDATE positions SET next_offset = 9223372036854775807", "positions.next_offset"),
        ("UPDATE positions SET partition = partition + 9999999999", "positions.partition"),
    ],
)
def test_resume_positions_that_do_not_read_are_a_damaged_index(
    index: AuditIndex,
    tmp_path: Path,
    schemas: SchemaSet,
    log: SyntheticLog,
    sql: str,
    where: str,
) -> None:
    """Indexing more reads them first: it refuses, and the next opening to index (as
    ``tiaki audit index`` opens it) rebuilds the index instead of resuming."""
    path = tmp_path / "index.sqlite"
    index.record_access(operator="officer-1", command="query", query={}, results=0, now=T0)
    index.close()
    alter(path, sql)
    with AuditIndex.open(path, schemas) as reopened:
        for read in (reopened.positions, lambda: reopened.add(log.audit)):
            with pytest.raises(IndexFailure) as caught:
                read()
            assert str(caught.value) == damaged(where)
    with AuditIndex.open(path, schemas, rebuild=True) as rebuilt:
        assert rebuilt.count() == (0, 0, 0)
        assert rebuilt.add(log.audit) == 60
        assert [a.operator for a in rebuilt.access_log()] == ["officer-1"]


def _every_read(index: AuditIndex) -> list[Callable[[], object]]:
    """Each read that takes records' rows: by decision rows, by person, about a person (the
    subject report's), and an event's stated grounds."""
    return [
        lambda: index.query(Query()),
        lambda: index.query(Query(subject_ref=person_ref())),
        lambda: index.about(person_ref()),
        lambda: index.grounds(event_id(0)),
    ]


RECORD_DAMAGE = [
    ("UPDATE records SET value_at = 'SYN-x'", "records.value_at"),
    ("UPDATE records SET value_at = NULL", "records.value_at"),
    ("UPDATE records SET value_at = -1", "records.value_at"),
    ("UPDATE records SET value_size = 'SYN-x'", "records.value_size"),
    ("UPDATE records SET value_size = NULL", "records.value_size"),
    ("UPDATE records SET value_size = 99999999999999999999", "records.value_size"),
    ("UPDATE records SET value_size = -1", "records.value_size"),
    (
        "UPDATE records SET value_size = 4611686018427387904",
        "records.value_at or records.value_size",
    ),
    ("UPDATE records SET value_at = 4611686018427387904", "records.value_at or records.value_size"),
    ("UPDATE records SET partition = 'SYN-x'", "records.partition"),
    ("UPDATE records SET log_offset = 99999999999999999999", "records.log_offset"),
    ("UPDATE records SET writer = X'07'", "records.writer"),
    ("UPDATE records SET value = 'SYN-x'", "records.value"),
    ("UPDATE records SET value = X'00'", "records.value"),
    ("UPDATE records SET value_at = value_at + 1", "the value log"),
]


@pytest.mark.parametrize(("sql", "where"), RECORD_DAMAGE)
def test_record_values_that_do_not_read_are_a_damaged_index(
    index: AuditIndex, tmp_path: Path, schemas: SchemaSet, sql: str, where: str
) -> None:
    path = tmp_path / "index.sqlite"
    alter(path, sql)
    for read in _every_read(index):
        with pytest.raises(IndexFailure) as caught:
            read()
        assert str(caught.value) == damaged(where)
    # Which other rows were altered no read can tell: the index is refused until rebuilt.
    with pytest.raises(IndexFailure, match=r"the audit index is damaged \(a read found"):
        AuditIndex.open(path, schemas)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE decisions SET ordinal = 'SYN-x'",
        "UPDATE decisions SET ordinal = 99",  # a decision the record does not have
        "UPDATE decisions SET ordinal = 99999999999999999999",
        "UPDATE decisions SET ordinal = -2",
    ],
)
def test_a_decision_row_naming_no_decision_of_its_record_is_a_damaged_index(
    index: AuditIndex, tmp_path: Path, sql: str
) -> None:
    alter(tmp_path / "index.sqlite", sql)
    with pytest.raises(IndexFailure) as caught:
        index.query(Query())
    assert str(caught.value) == damaged("decisions.ordinal")


def test_a_record_whose_bytes_hold_a_time_past_year_9999_is_a_damaged_index(
    index: AuditIndex, tmp_path: Path, schemas: SchemaSet
) -> None:
    """Bytes that decode, but into a time no datetime holds (only an altered record could)."""
    plain = fastavro.parse_schema(_without_logical(schemas.latest("AuditRecord").definition))
    record = audit_record(schemas, 0, T0)
    record.update(audit_id=str(record["audit_id"]), recorded_at=1 << 62)
    value = io.BytesIO()
    fastavro.schemaless_writer(value, plain, record)
    alter(tmp_path / "index.sqlite", "UPDATE records SET value = ?", value.getvalue())
    for read in _every_read(index):
        with pytest.raises(IndexFailure) as caught:
            read()
        assert str(caught.value) == damaged("records.value")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE access_log SET operator = X'53594e' WHERE seq = 1",  # bytes, not text
        "UPDATE access_log SET query = X'7b7d' WHERE seq = 1",
    ],
)
def test_an_access_log_entry_holding_what_is_not_text_is_tampering(
    index: AuditIndex, tmp_path: Path, sql: str
) -> None:
    for n in range(3):
        index.record_access(operator="officer-1", command="query", query={}, results=n, now=T0)
    alter(tmp_path / "index.sqlite", sql)
    with pytest.raises(LogTampered) as caught:
        index.access_log()
    assert str(caught.value) == "access log seq 1: entry altered (not text where text belongs)"


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE access_log SET seq = 9223372036854775807",  # the last a 64-bit column holds
        "UPDATE access_log SET seq = -1",
    ],
)
def test_an_access_log_whose_last_seq_leaves_no_next_one_is_tampering(
    index: AuditIndex, tmp_path: Path, sql: str
) -> None:
    index.record_access(operator="officer-1", command="query", query={}, results=0, now=T0)
    alter(tmp_path / "index.sqlite", sql)
    with pytest.raises(LogTampered, match="access log: last entry altered"):
        index.record_access(operator="officer-1", command="query", query={}, results=0, now=T0)


# -- through the command line -------------------------------------------------------------------


def _indexed(home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]) -> Path:
    """Index ``log`` with ``tiaki audit index``; the index's path."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    return home / "audit" / "index.sqlite"


GROUNDS = ["--justification", "SYN grounds 3", "--accountable", "SYN coordinator"]


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "query"],
        ["audit", "query", "--person", PERSON],
        ["audit", "subject-report", PERSON],
        ["audit", "grounds", event_id(3), *GROUNDS],
    ],
)
def test_each_command_reading_records_says_damaged_on_one_line(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    index = _indexed(home, log, capsys)
    alter(index, "UPDATE records SET value_at = 'SYN-x'")
    err = one_line(argv, capsys)
    assert err == f"tiaki: error: {damaged('records.value_at')}\n"


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("UPDATE records SET value_size = 'SYN-x'", "records.value_size"),
        ("UPDATE records SET value_size = 99999999999999999999", "records.value_size"),
        ("UPDATE records SET value_at = NULL", "records.value_at"),
        ("UPDATE records SET writer = X'07'", "records.writer"),
        ("UPDATE decisions SET ordinal = 'SYN-x'", "decisions.ordinal"),
        ("UPDATE decisions SET ordinal = 99", "decisions.ordinal"),
    ],
)
def test_a_damaged_index_is_refused_until_tiaki_audit_index_rebuilds_it(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], sql: str, where: str
) -> None:
    index = _indexed(home, log, capsys)
    alter(index, sql)
    assert one_line(["audit", "query"], capsys) == f"tiaki: error: {damaged(where)}\n"
    for argv in (["audit", "query", "--person", PERSON], ["audit", "access-log"]):
        err = one_line(argv, capsys)
        assert "the audit index is damaged (a read found a value in it altered" in err
        assert REBUILD in err
    assert main(["audit", "index", "--file", str(home / "log.jsonl")]) == 0
    assert "indexed 60 new audit records" in capsys.readouterr().out
    assert main(["audit", "query", "--person", PERSON, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12
    assert main(["audit", "access-log", "--format", "json"]) == 0
    commands = [a["command"] for a in json.loads(capsys.readouterr().out)]
    assert commands == ["index", "index", "query"]  # kept through the rebuild


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE positions SET next_offset = 'SYN-x'",
        "UPDATE positions SET next_offset = NULL",
        "UPDATE positions SET next_offset = 99999999999999999999",
    ],
)
def test_tiaki_audit_index_rebuilds_an_index_whose_resume_positions_do_not_read(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], sql: str
) -> None:
    index = _indexed(home, log, capsys)
    alter(index, sql)
    assert main(["audit", "index", "--file", str(home / "log.jsonl")]) == 0
    assert "indexed 60 new audit records (60 records" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "sql", "params", "why"),
    [
        (
            ["audit", "access-log"],
            "UPDATE access_log SET operator = ? WHERE seq = 0",
            (b"SYN",),
            "access log seq 0: entry altered (not text where text belongs)",
        ),
        (
            ["audit", "query"],
            "UPDATE access_log SET seq = 9223372036854775807 WHERE seq = 0",
            (),
            "access log: last entry altered",
        ),
    ],
)
def test_an_altered_access_log_is_one_line(
    home: Path,
    log: SyntheticLog,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    sql: str,
    params: tuple[Any, ...],
    why: str,
) -> None:
    index = _indexed(home, log, capsys)
    alter(index, sql, *params)
    assert why in one_line(argv, capsys)


# -- another application's database -------------------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, int, int, list[str]]:
    """A file's bytes, mtime and mode, and what its folder holds."""
    stat = path.stat()
    listing = sorted(p.name for p in path.parent.iterdir())
    return path.read_bytes(), stat.st_mtime_ns, stat.st_mode, listing


def test_another_applications_database_without_a_records_table_is_left_as_it_was(
    home: Path, log: SyntheticLog, schemas: SchemaSet, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tiaki audit index --db` given someone else's SQLite file (a typo) with none of the
    index's tables: the index's tables were added to it (and it was switched to WAL, made
    owner-only, and given a value log beside it)."""
    folder = home / "crm"
    folder.mkdir()
    foreign = folder / "customers.sqlite"
    conn = sqlite3.connect(foreign)
    with conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
        conn.execute("INSERT INTO customers VALUES ('SYN customer')")
    conn.close()
    foreign.chmod(0o644)
    before = _snapshot(foreign)
    source = export(home / "log.jsonl", log.audit + log.checkpoints)
    err = one_line(["audit", "index", "--db", str(foreign), "--file", str(source)], capsys)
    assert err == (
        "tiaki: error: the database given has tables but none of a Tiaki audit index's: "
        "nothing was changed; give the index a file or database of its own\n"
    )
    with pytest.raises(IndexFailure, match="has tables but none of a Tiaki audit index's"):
        AuditIndex.open(foreign, schemas)
    assert _snapshot(foreign) == before


def _header_only(path: Path) -> None:
    """A SQLite file with a header and no table at all."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 1")
    conn.close()


def _only_sqlites_own(path: Path) -> None:
    """A SQLite file whose one table is SQLite's own (left by a dropped AUTOINCREMENT one)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)")
        conn.execute("INSERT INTO t DEFAULT VALUES")
        conn.execute("DROP TABLE t")
    conn.close()


@pytest.mark.parametrize(
    "make",
    [lambda _path: None, lambda path: path.write_bytes(b""), _header_only, _only_sqlites_own],
    ids=["missing", "empty-file", "header-only", "only-sqlite-tables"],
)
def test_a_missing_or_empty_database_still_becomes_an_index(
    tmp_path: Path, schemas: SchemaSet, log: SyntheticLog, make: Callable[[Path], None]
) -> None:
    path = tmp_path / "index.sqlite"
    make(path)
    with AuditIndex.open(path, schemas) as index:
        assert index.add(log.audit) == 60
    with AuditIndex.open(path, schemas) as index:
        assert index.count()[0] == 60


# -- PostgreSQL: the same checks ----------------------------------------------------------------


def test_on_postgres_damaged_values_and_foreign_tables_are_refused(
    pg_url: str, schemas: SchemaSet, log: SyntheticLog
) -> None:
    with AuditIndex.open(pg_url, schemas) as pg:
        pg.add(log.audit)
        pg._db.execute("UPDATE positions SET next_offset = NULL")
        with pytest.raises(IndexFailure) as caught:
            pg.positions()
        assert str(caught.value) == damaged("positions.next_offset")
        pg._db.execute("UPDATE decisions SET ordinal = 99")
        with pytest.raises(IndexFailure) as caught:
            pg.query(Query())
        assert str(caught.value) == damaged("decisions.ordinal")
        pg._db.execute("UPDATE records SET value = '\\x00'::bytea")
        with pytest.raises(IndexFailure) as caught:
            pg.grounds(event_id(0))
        assert str(caught.value) == damaged("records.value")
    with pytest.raises(IndexFailure, match=r"damaged \(a read found"):
        AuditIndex.open(pg_url, schemas)
    with AuditIndex.open(pg_url, schemas, rebuild=True) as pg:  # rebuilt
        assert pg.add(log.audit) == 60
        assert len(pg.query(Query(subject_ref=person_ref()))) == 12
        tables = {name for (name,) in pg._db.execute(pg._db.ddl["tables"])}
        for table in tables:  # as a database of another application's, with none of ours
            pg._db.execute(f"DROP TABLE {table}")
        pg._db.execute("CREATE TABLE customers (name TEXT)")
    db = open_database(pg_url)
    try:
        for rebuild in (False, True):
            with pytest.raises(IndexFailure, match="has tables but none of a Tiaki audit index's"):
                AuditIndex.open(pg_url, schemas, rebuild=rebuild)
        assert db.execute(db.ddl["tables"]) == [("customers",)]
    finally:
        db.execute("DROP TABLE customers")
        db.close()
