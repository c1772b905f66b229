"""The index on PostgreSQL, through the same interface as SQLite: the same rows, the same
answers, the same access-log chain, the same layout check.

Against ``TIAKI_TEST_POSTGRES_URL`` if set (a scratch database: its audit tables are
dropped first); otherwise against a throwaway server this module starts from the machine's
PostgreSQL binaries (``initdb``, ``pg_ctl``; Debian's ``postgresql`` package, which
``.ci/run`` installs) on a free loopback port, and stops and deletes afterwards. Skipped
only where neither is available, or psycopg is not installed."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.audit import AuditIndex, IndexFailure, LogTampered, Query
from broker.codec import SchemaSet
from broker.envelope import KeyRing

from .conftest import T0, build_log, person_ref

_TABLES = ("records", "decisions", "subjects", "positions", "access_log", "layout", "completed")


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    return Path(found[-1]).parent if found[-1] else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: One xdist worker runs this module (``make unit`` uses ``--dist loadgroup``): with
#: ``TIAKI_TEST_POSTGRES_URL`` its tests share one database, and each drops the tables first.
pytestmark = pytest.mark.xdist_group("postgres")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("needs psycopg (pip install -e '.[dev]')")
    given = os.environ.get("TIAKI_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bin_dir = _binaries()
    if bin_dir is None:
        pytest.skip("needs PostgreSQL's server binaries (apt-get install postgresql)")
    # PostgreSQL refuses to run as root: run it as an unprivileged user if we are root.
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="tiaki-pg-"))
    if as_user:
        shutil.chown(folder, "nobody")
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tiaki")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(folder / "server.log")  # not our pipes: the server outlives pg_ctl
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start")
        yield f"postgresql://tiaki@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        deadline = time.monotonic() + 10
        while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(url: str, schemas: SchemaSet) -> str:
    """The database, with no audit tables left by an earlier test."""
    with AuditIndex.open(url, schemas) as pg:
        for table in _TABLES:
            pg._db.execute(f"DROP TABLE IF EXISTS {table}")
    return url


def test_postgres_and_sqlite_agree(
    pg_url: str, tmp_path: Path, ring: KeyRing, schemas: SchemaSet
) -> None:
    log = build_log(ring, schemas, records=60)
    with (
        AuditIndex.open(pg_url, schemas) as pg,
        AuditIndex.open(tmp_path / "i.sqlite", schemas) as lite,
    ):
        assert pg.add(log.audit) == lite.add(log.audit) == 60
        assert pg.add(log.audit) == 0  # resumes: nothing new
        for q in (
            Query(),
            Query(subject_ref=person_ref()),
            Query(subject_ref=person_ref(), outcome="share"),
            Query(recipient="corrections", outcome="share"),
            Query(legal_basis="fva_s20", since_ms=int(T0.timestamp() * 1000)),
        ):
            assert pg.query(q) == lite.query(q)
        assert pg.about(person_ref()) == lite.about(person_ref())
        assert pg.count() == lite.count()
        for n in range(3):
            pg.record_access(
                operator="SYN-officer", command="query", query={"n": n}, results=n, now=T0
            )
        assert [a.seq for a in pg.access_log()] == [0, 1, 2]
        pg._db.execute("UPDATE access_log SET results = 7 WHERE seq = 1")
        with pytest.raises(LogTampered):
            pg.access_log()


def test_an_earlier_layout_on_postgres_is_refused_then_rebuilt(
    pg_url: str, ring: KeyRing, schemas: SchemaSet
) -> None:
    log = build_log(ring, schemas, records=20)
    with AuditIndex.open(pg_url, schemas) as pg:
        pg.add(log.audit)
        pg._db.execute("UPDATE layout SET version = 1")
    with pytest.raises(IndexFailure, match="layout 1"):
        AuditIndex.open(pg_url, schemas)
    with AuditIndex.open(pg_url, schemas, rebuild=True) as pg:
        assert pg.count() == (0, 0, 0)
        assert pg.add(log.audit) == 20
