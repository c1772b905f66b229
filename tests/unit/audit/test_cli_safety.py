"""``tiaki audit`` keeps what it must not keep out of its files, and never answers "nobody" or
"verifies" about data it did not have: an event id is checked before the access log records
it, an export is owner-only, a failed first indexing run leaves no index (and an index no run
completed is refused), an export's lines of other topics are refused, and ``verify`` says
when it verified nothing. Every person and text here is synthetic."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker._cli import main
from broker.audit import AuditError, AuditIndex, LogEntry, dump_lines, load_lines
from broker.audit._log import EXPORT_FORMAT
from broker.codec import SchemaSet

from .conftest import PERSON, T0, SyntheticLog, event_id
from .test_cli import export
from .test_cli import home as home
from .test_cli import log as log
from .test_postgres import pg_url as pg_url
from .test_postgres import url as url

GROUNDS = ["--justification", "SYN grounds 3", "--accountable", "SYN coordinator"]


def commands(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The commands the access log of the default index holds (before this read of it)."""
    capsys.readouterr()
    assert main(["audit", "access-log", "--format", "json"]) == 0
    return [a["command"] for a in json.loads(capsys.readouterr().out)]


def indexed(home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]) -> Path:
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    return path


# -- grounds: only an event id is recorded ------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    ["Aroha SYN-Citizen", "NHI:ZZZ0016", "", "evt-3", f"{event_id(3)} SYN-extra"],
)
def test_grounds_refuses_what_is_not_an_event_id_before_recording_it(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], typed: str
) -> None:
    """Words typed where the event id belongs (a name, an identifier) were kept in clear in
    the access log before the command found no such event."""
    indexed(home, log, capsys)
    assert main(["audit", "grounds", typed, *GROUNDS]) == 1
    assert capsys.readouterr().err == (
        "tiaki: error: EVENT_ID must be an event's id, a UUID such as "
        "2f1c0a4e-8b7d-4c1e-9a53-0c6d2b7e4f19\n"
    )
    assert commands(capsys) == ["index"]
    with AuditIndex.open(home / "audit" / "index.sqlite", _schemas()) as index:
        kept = json.dumps([a.query for a in index.access_log()])
    assert "SYN" not in kept
    assert "ZZZ" not in kept


def test_grounds_refuses_a_source_that_is_no_agency_id_before_recording_it(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    indexed(home, log, capsys)
    argv = ["audit", "grounds", event_id(3), "--source", "Aroha SYN-Citizen", *GROUNDS]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("tiaki: error: unknown agency 'Aroha SYN-Citizen'")
    assert err.count("\n") == 1
    assert commands(capsys) == ["index"]


#: Ways of writing one UUID that Python's ``uuid.UUID`` reads (and the codec accepts).
SPELLINGS: dict[str, Callable[[str], str]] = {
    "capitals": str.upper,
    "braces": lambda u: "{" + u + "}",
    "no hyphens": lambda u: u.replace("-", ""),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_grounds_finds_the_event_however_its_uuid_is_written(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    indexed(home, log, capsys)
    assert main(["audit", "grounds", SPELLINGS[spelling](event_id(3)), *GROUNDS]) == 0
    assert "justification matches, accountable matches" in capsys.readouterr().out
    assert main(["audit", "access-log", "--format", "json"]) == 0
    (entry,) = [a for a in json.loads(capsys.readouterr().out) if a["command"] == "grounds"]
    assert json.loads(entry["query"]) == {"event_id": event_id(3)}  # as the records keep it


def _schemas() -> SchemaSet:
    from broker.codec import load_schemas

    from .conftest import ROOT

    return load_schemas(ROOT / "schemas")


# -- export: owner-only -------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_an_export_is_owner_only_whatever_the_umask(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It holds every audit record (subject and case references, reviewers' names): it was
    written 0644 under the usual umask, readable by every account on the machine."""
    import broker.audit._cli as audit_cli

    async def settled(*_args: object, **_kwargs: object) -> tuple[object, ...]:
        return log.audit, log.checkpoints, None

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "verify_live", settled)
    out = home / "exports" / "audit.jsonl"
    out.parent.mkdir()
    # Left by earlier runs, world-readable: neither may pass its mode on.
    out.write_text("SYN stale export\n")
    stale = out.with_name(out.name + ".partial")
    stale.write_text("SYN stale partial export, longer than the new one would be? no\n")
    for path in (out, stale):
        path.chmod(0o644)
    assert main(["audit", "export", "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.parent.iterdir()) == ["audit.jsonl"]
    assert _mode(out) == 0o600
    assert len(load_lines(out.read_text().splitlines())) == len(log.audit + log.checkpoints)
    assert main(["audit", "verify", "--file", str(out)]) == 0


def test_an_export_is_not_written_through_a_symbolic_link(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import broker.audit._cli as audit_cli

    async def settled(*_args: object, **_kwargs: object) -> tuple[object, ...]:
        return log.audit, log.checkpoints, None

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "verify_live", settled)
    elsewhere = home / "elsewhere.txt"
    elsewhere.write_text("SYN someone else's file\n")
    out = home / "audit.jsonl"
    out.with_name(out.name + ".partial").symlink_to(elsewhere)
    assert main(["audit", "export", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tiaki: error: cannot write {out}: ")
    assert err.count("\n") == 1
    assert elsewhere.read_text() == "SYN someone else's file\n"
    assert not out.exists()


# -- index: a failed first run leaves no index ----------------------------------------------


def _index_files(home: Path) -> list[str]:
    folder = home / "audit"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_an_export_that_does_not_read_makes_no_index(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index was made before the file was read: the failed run left an empty index, and
    `query` then answered "nobody" about everyone."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    path.write_text(path.read_text() + "{not json\n")
    assert main(["audit", "index", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "malformed record" in err
    assert err.count("\n") == 1
    assert _index_files(home) == []
    assert main(["audit", "subject-report", PERSON]) == 1
    assert "no audit index at" in capsys.readouterr().err


def test_a_first_run_that_fails_part_way_leaves_no_index(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """From Kafka, a run commits a chunk at a time: one that fails after its first chunk
    leaves what it had indexed, which would answer "nobody" about everyone in the rest."""
    import broker.audit._cli as audit_cli

    async def one_chunk_then_lost(_profile: object, index: AuditIndex, **_kw: object) -> int:
        index.add(log.audit[:20])
        raise AuditError("could not reach Kafka (SYN)")

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "index_live", one_chunk_then_lost)
    assert main(["audit", "index"]) == 1
    assert capsys.readouterr().err == "tiaki: error: could not reach Kafka (SYN)\n"
    assert _index_files(home) == []
    assert main(["audit", "query", "--person", PERSON]) == 1
    assert "no audit index at" in capsys.readouterr().err


def test_a_later_run_that_fails_keeps_the_index(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only a first run's index is removed: a later run's failure leaves the index as the last
    completed run left it, and what it added (the records are the topic's) still answers."""
    import broker.audit._cli as audit_cli

    indexed(home, log, capsys)
    bad = home / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["audit", "index", "--file", str(bad)]) == 1

    async def lost(*_args: object, **_kw: object) -> int:
        raise AuditError("could not reach Kafka (SYN)")

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "index_live", lost)
    assert main(["audit", "index"]) == 1
    capsys.readouterr()
    assert main(["audit", "query", "--person", PERSON, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12


def test_an_empty_file_at_the_index_path_is_left_empty_by_a_failed_first_run(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import broker.audit._cli as audit_cli

    async def one_chunk_then_lost(_profile: object, index: AuditIndex, **_kw: object) -> int:
        index.add(log.audit[:20])
        raise AuditError("could not reach Kafka (SYN)")

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "index_live", one_chunk_then_lost)
    target = home / "mine.sqlite"
    target.write_bytes(b"")
    assert main(["audit", "index", "--db", str(target)]) == 1
    assert target.read_bytes() == b""
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("mine")) == ["mine.sqlite"]


def test_an_index_no_run_completed_is_refused_until_one_does(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed part way (or a failed first run on PostgreSQL, which is not removed)
    leaves records but no mark that a run read its source through."""
    target = home / "audit" / "index.sqlite"
    with AuditIndex.open(target, _schemas()) as index:
        index.add(log.audit[:20])
    refusal = (
        f"tiaki: error: the audit index at {target} has not completed an indexing run since "
        "it was made or rebuilt, so it may lack any record: run 'tiaki audit index'\n"
    )
    for argv in (
        ["audit", "query", "--person", PERSON],
        ["audit", "query", "--recipient", "corrections"],
        ["audit", "subject-report", PERSON],
        ["audit", "grounds", event_id(3), *GROUNDS],
    ):
        assert main(argv) == 1, argv
        assert capsys.readouterr().err == refusal
    assert commands(capsys) == []  # refused before anything was read
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    assert "indexed 40 new audit records (60 records" in capsys.readouterr().out
    assert main(["audit", "query", "--person", PERSON, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12


def test_a_rebuild_clears_the_mark_until_it_completes(
    tmp_path: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "index.sqlite"
    with AuditIndex.open(target, _schemas()) as index:
        index.add(log.audit)
        index.complete(T0)
        assert index.completed() == T0
        index._db.execute("UPDATE layout SET version = 2")  # an earlier layout: rebuilt
    with AuditIndex.open(target, _schemas(), rebuild=True) as index:
        assert index.completed() is None


def test_tiaki_audit_index_says_how_far_the_index_goes(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import broker.audit._cli as audit_cli

    when = datetime(2026, 3, 2, 10, 30, 5, tzinfo=UTC)
    monkeypatch.setattr(audit_cli, "_now", lambda: when)
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    assert capsys.readouterr().out == (
        "indexed 60 new audit records (60 records, 60 decision rows in the index; it holds "
        f"{path} as read at 2026-03-02 10:30:05 UTC)\n"
    )
    with AuditIndex.open(home / "audit" / "index.sqlite", _schemas()) as index:
        assert index.completed() == when


@pytest.mark.xdist_group("postgres")
def test_on_postgres_the_mark_is_kept_and_cleared_by_a_rebuild(
    pg_url: str, log: SyntheticLog
) -> None:
    with AuditIndex.open(pg_url, _schemas()) as pg:
        pg.add(log.audit)
        assert pg.completed() is None
        pg.complete(T0)
        assert pg.completed() == T0
        pg._db.execute("UPDATE layout SET version = 2")
    with AuditIndex.open(pg_url, _schemas(), rebuild=True) as pg:
        assert pg.completed() is None


# -- an export's lines, and verifying nothing ---------------------------------------------------


def test_an_export_line_of_another_topic_is_refused_naming_the_line(log: SyntheticLog) -> None:
    """It was dropped without a word: a record removed from the evidence, unnoticed."""
    stray = LogEntry("tiaki.review", 0, 0, None, b"SYN", (), 0)
    lines = list(dump_lines([*log.audit[:2], stray, *log.checkpoints], exported_at="SYN"))
    with pytest.raises(AuditError) as caught:
        load_lines(lines, Path("copy.jsonl"))
    assert str(caught.value) == (
        "copy.jsonl: export line 4: a record of another topic than tiaki.audit or "
        "tiaki.checkpoints (not from a Tiaki audit export)"
    )


def test_verify_refuses_an_export_with_a_record_of_another_topic(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    stray = LogEntry("tiaki.audit.old", 0, 0, None, b"SYN", (), 0)
    path = export(home / "log.jsonl", [*log.audit, stray, *log.checkpoints])
    assert main(["audit", "verify", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"tiaki: error: {path}: export line {len(log.audit) + 2}: a record of another topic "
        "than tiaki.audit or tiaki.checkpoints (not from a Tiaki audit export)\n"
    )


def _empty_export(home: Path) -> Path:
    path = home / "empty.jsonl"
    path.write_text(json.dumps({"format": EXPORT_FORMAT, "exported_at": "SYN"}) + "\n")
    return path


def test_verify_says_when_it_verified_nothing_and_strict_fails(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty export (or the wrong cluster, or everything past retention) once "verified"."""
    indexed(home, log, capsys)
    path = _empty_export(home)
    assert main(["audit", "verify", "--file", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        "audit log: nothing was verified: it holds no audit records "
        "(0 signed checkpoints, 0 witness checkpoints)\n"
    )
    assert "verifies" not in captured.out
    assert main(["audit", "verify", "--file", str(path), "--strict"]) == 1
    assert capsys.readouterr().err == (
        "tiaki: audit log does NOT verify (--strict): the log holds no audit records, so "
        "nothing was verified\n"
    )
    assert main(["audit", "access-log", "--format", "json"]) == 0
    verifies = [a for a in json.loads(capsys.readouterr().out) if a["command"] == "verify"]
    assert [json.loads(a["query"])["outcome"] for a in verifies] == [
        "nothing verified: no audit records",
        "failed (--strict): the log holds no audit records, so nothing was verified",
    ]


def test_verify_strict_fails_a_log_with_no_checkpoint_at_all(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export(home / "unsigned.jsonl", log.audit)
    assert main(["audit", "verify", "--file", str(path)]) == 0
    assert capsys.readouterr().out.startswith("audit log verifies: 60 records in 2 chains, 0 ")
    assert main(["audit", "verify", "--file", str(path), "--strict"]) == 1
    assert capsys.readouterr().err.endswith(
        "tiaki: audit log does NOT verify (--strict): the log holds no trusted checkpoint, so "
        "nothing vouches for any record\n"
    )
