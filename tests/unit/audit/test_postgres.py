"""The index on PostgreSQL, through the same interface as SQLite: the same rows, the same
answers, the same access-log chain. Runs only where ``TIAKI_TEST_POSTGRES_URL`` names a
scratch database (its audit tables are dropped first) and psycopg is installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from broker.audit import AuditIndex, LogTampered, Query
from broker.codec import SchemaSet
from broker.envelope import KeyRing

from .conftest import T0, build_log, person_ref

URL = os.environ.get("TIAKI_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    URL is None or importlib.util.find_spec("psycopg") is None,
    reason="needs TIAKI_TEST_POSTGRES_URL and psycopg",
)


def test_postgres_and_sqlite_agree(tmp_path: Path, ring: KeyRing, schemas: SchemaSet) -> None:
    assert URL is not None
    log = build_log(ring, schemas, records=60)
    with AuditIndex.open(URL, schemas) as pg:
        for table in ("records", "decisions", "subjects", "positions", "access_log", "layout"):
            pg._db.execute(f"DROP TABLE IF EXISTS {table}")
    with (
        AuditIndex.open(URL, schemas) as pg,
        AuditIndex.open(tmp_path / "i.sqlite", schemas) as lite,
    ):
        assert pg.add(log.audit) == lite.add(log.audit) == 60
        assert pg.add(log.audit) == 0  # resumes: nothing new
        for q in (
            Query(subject_ref=person_ref()),
            Query(recipient="corrections", outcome="share"),
            Query(legal_basis="fva_s20", since_ms=int(T0.timestamp() * 1000)),
        ):
            assert pg.query(q) == lite.query(q)
        assert pg.count() == lite.count()
        for n in range(3):
            pg.record_access(
                operator="SYN-officer", command="query", query={"n": n}, results=n, now=T0
            )
        assert [a.seq for a in pg.access_log()] == [0, 1, 2]
        pg._db.execute("UPDATE access_log SET results = 7 WHERE seq = 1")
        with pytest.raises(LogTampered):
            pg.access_log()
