"""``tiaki audit`` on an exported log: verify (and its exit code and named position), index,
query, subject report and the access log, with one-line errors for bad arguments."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from broker._cli import main
from broker.audit import AuditError, LogEntry, dump_lines, read_link
from broker.codec import SchemaSet
from broker.envelope import KeyRing, KeyStore

from .conftest import PERSON, SUBJECT_KEY, SyntheticLog, build_log, event_id, person_ref


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ring: KeyRing) -> Path:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_OPERATOR", "officer-1")
    KeyStore(tmp_path / "keys").save(ring, owners=["broker"])
    secrets = tmp_path / "keys" / "broker-secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "audit-subject.key").write_bytes(SUBJECT_KEY)
    return tmp_path


def export(path: Path, entries: list[LogEntry]) -> Path:
    path.write_text("\n".join(dump_lines(entries, exported_at="2026-03-02T10:00:00+00:00")) + "\n")
    return path


@pytest.fixture
def log(ring: KeyRing, schemas: SchemaSet) -> SyntheticLog:
    return build_log(ring, schemas, records=60)


def test_verify_a_clean_export(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "verify", "--file", str(path)]) == 0
    assert capsys.readouterr().out.startswith("audit log verifies: 60 records in 2 chains")


def test_verify_names_the_first_bad_position(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = sorted(log.audit, key=lambda e: (e.partition, e.offset))[9]
    entries = [e for e in log.audit if e is not victim] + log.checkpoints
    path = export(home / "cut.jsonl", entries)
    assert main(["audit", "verify", "--file", str(path)]) == 1
    link = read_link(victim)
    failure, *rest = capsys.readouterr().err.splitlines()
    assert failure.startswith(
        f"tiaki: audit log does NOT verify: chain {link.chain} seq {link.seq}: missing"
    )
    assert [line.split(",")[0] for line in rest] == [  # no index here: the run says so
        f"tiaki: note: no audit index at {home / 'audit' / 'index.sqlite'}"
    ]


def test_index_query_report_and_access_log(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    assert "indexed 60 new audit records" in capsys.readouterr().out

    assert main(["audit", "query", "--person", PERSON, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12
    assert {r["actor"] for r in rows} == {"broker"}  # who acted: the broker decided these

    assert main(["audit", "query", "--recipient", "corrections", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("recorded_at,action,actor,event_type")
    assert len(lines) == 21

    assert main(["audit", "subject-report", PERSON, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["recipient"] for d in report] == ["corrections"] * 4
    assert report[0]["classes"] == ["operational", "risk"]

    assert main(["audit", "query", "--person", PERSON]) == 0  # the table renders
    assert "corrections" in capsys.readouterr().out

    assert main(["audit", "access-log", "--format", "json"]) == 0
    out = capsys.readouterr().out
    accesses = json.loads(out)
    assert [a["command"] for a in accesses] == [
        "index",
        "query",
        "query",
        "subject-report",
        "query",
    ]
    assert all(a["operator"] == "officer-1" for a in accesses)
    assert "ZZZ0016" not in out
    assert person_ref() in out


def test_grounds_are_checked_against_the_decision_without_being_kept(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """FVA-07: the discloser's justification and accountable role, as the discloser recorded
    them, match the keyed hashes the decision keeps; anything else does not; the texts are in
    neither the log nor the access log."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    stated = ["--justification", "SYN grounds 3", "--accountable", "SYN coordinator"]
    assert main(["audit", "grounds", event_id(3), *stated]) == 0
    out = capsys.readouterr().out
    assert "justification matches, accountable matches" in out

    altered = ["--justification", "SYN grounds 4", "--accountable", "SYN coordinator"]
    assert main(["audit", "grounds", event_id(3), *altered]) == 1
    assert "justification DOES NOT match, accountable matches" in capsys.readouterr().out

    assert main(["audit", "grounds", event_id(4), *stated]) == 1  # an escalation, no decision
    err = capsys.readouterr().err
    assert f"no decision about event '{event_id(4)}'" in err
    assert err.count("\n") == 1

    assert main(["audit", "access-log", "--format", "json"]) == 0
    accesses = capsys.readouterr().out
    assert '"command": "grounds"' in accesses
    assert "SYN grounds" not in accesses


def test_a_person_and_the_grounds_may_come_from_standard_input(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Typed as arguments they stay in the shell's history and show in ps: '-' reads each
    from standard input instead, with the same answers."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PERSON}\n"))
    assert main(["audit", "subject-report", "-", "--format", "json"]) == 0
    assert [d["recipient"] for d in json.loads(capsys.readouterr().out)] == ["corrections"] * 4
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PERSON}\n"))
    assert main(["audit", "query", "--person", "-", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12
    monkeypatch.setattr("sys.stdin", io.StringIO("SYN grounds 3\nSYN coordinator\n"))
    assert (
        main(["audit", "grounds", event_id(3), "--justification", "-", "--accountable", "-"]) == 0
    )
    assert "justification matches, accountable matches" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["audit", "subject-report", "-"]) == 1
    assert "there was none" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "query", "--person", "ZZZ0016"], "a person is given as SCHEME:VALUE"),
        (["audit", "query", "--since", "yesterday"], "--since: not an ISO 8601"),
        (["audit", "query", "--format", "xml"], "--format must be one of"),
        (["audit", "verify", "--file", "/nonexistent/log.jsonl"], "cannot read"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    home: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--recipient", "Polce", "unknown agency 'Polce': not in the registry"),
        ("--source", "Jane Citizen", "unknown agency 'Jane Citizen': not in the registry"),
        ("--event-type", "CaseAlocation", "unknown event type 'CaseAlocation'"),
        ("--action", "decisions", "unknown action 'decisions': one of decision, request"),
        ("--outcome", "Jane Citizen", "--outcome 'Jane Citizen': a code such as"),
        ("--legal-basis", "Aroha N", "--legal-basis 'Aroha N': a code such as"),
    ],
)
def test_a_filter_naming_nothing_known_is_refused_and_not_logged(
    home: Path,
    log: SyntheticLog,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    """A misspelt agency or event type once answered "nobody" with exit 0, and the text (a
    person's name typed in the wrong option) went into the access log as it was typed."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    assert main(["audit", "query", option, value]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tiaki: error: {message}")
    assert err.count("\n") == 1
    assert main(["audit", "access-log", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert [a["command"] for a in json.loads(out)] == ["index"]
    assert value not in out


def test_an_agency_id_the_registry_no_longer_has_is_queried_with_a_note(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """The log outlives an agency's registration (FVA s25 proof): its id is still queried,
    and the note says an empty answer may be a misspelling."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    assert main(["audit", "query", "--recipient", "polce"]) == 0
    err = capsys.readouterr().err
    assert "tiaki: note: agency 'polce' is not in the registry" in err
    assert "did you mean 'police'" in err


def test_no_operator_no_access(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TIAKI_OPERATOR")
    assert main(["audit", "query"]) == 2
    assert "--operator" in capsys.readouterr().err


def test_an_operator_name_that_is_not_utf8_is_refused_before_anything_runs(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``TIAKI_OPERATOR=$'\\xff'`` reaches Python as a lone surrogate: it used to fail at the
    access log's write with a traceback, as a non-UTF-8 ``--operator`` argument once did."""
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    monkeypatch.setenv("TIAKI_OPERATOR", "\udcff")
    capsys.readouterr()
    assert main(["audit", "query", "--recipient", "corrections"]) == 2
    assert capsys.readouterr().err == (
        "tiaki: environment variable TIAKI_OPERATOR is not UTF-8 text\n"
    )
    monkeypatch.setenv("TIAKI_OPERATOR", "officer-1")
    assert main(["audit", "access-log", "--format", "json"]) == 0
    assert [a["command"] for a in json.loads(capsys.readouterr().out)] == ["index"]


def test_verify_and_export_never_make_an_index(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verify and export record their run in an index that exists; with none they say so on
    stderr and make none, so a later query is refused rather than answering "nobody"."""
    import broker.audit._cli as audit_cli

    index = home / "audit" / "index.sqlite"
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "verify", "--file", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"tiaki: note: no audit index at {index}, so this verify is not")
    assert err.count("\n") == 1
    assert not index.exists()

    async def settled(*_args: object, **_kwargs: object) -> tuple[object, ...]:
        return log.audit, log.checkpoints, None

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "verify_live", settled)
    assert main(["audit", "export", "--out", str(home / "copy.jsonl")]) == 0
    assert "so this export is not in an access log" in capsys.readouterr().err
    assert not index.exists()

    assert main(["audit", "query", "--person", PERSON]) == 1
    assert "no audit index at" in capsys.readouterr().err
    assert not index.exists()

    assert main(["audit", "index", "--file", str(path)]) == 0
    assert main(["audit", "verify", "--file", str(path)]) == 0
    assert main(["audit", "export", "--out", str(home / "copy.jsonl")]) == 0
    capsys.readouterr()
    assert main(["audit", "access-log", "--format", "json"]) == 0
    commands = [a["command"] for a in json.loads(capsys.readouterr().out)]
    assert commands == ["index", "verify", "export"]


def test_query_says_when_it_stopped_at_the_limit(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    assert main(["audit", "query", "--person", PERSON, "--format", "json", "--limit", "5"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 5
    assert captured.err.startswith("tiaki: note: stopped at --limit 5 rows; there may be more")
    assert captured.err.count("\n") == 1

    assert main(["audit", "query", "--person", PERSON, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 12
    assert captured.err == ""


def test_witness_to_an_unwritable_file_is_one_line(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import broker.audit._cli as audit_cli

    async def checkpoints(*_args: object) -> list[LogEntry]:
        return log.checkpoints

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "read_topic", checkpoints)
    blocker = home / "a-file"
    blocker.write_text("")
    out = blocker / "witness.jsonl"
    assert main(["audit", "witness", "--profile", "police", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"tiaki: error: cannot write the witness file {out}: Not a directory\n"


def test_an_export_whose_access_cannot_be_recorded_is_not_left_behind(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import broker.audit._cli as audit_cli

    async def settled(*_args: object, **_kwargs: object) -> tuple[object, ...]:
        return log.audit, log.checkpoints, None

    def unrecordable(*_args: object, **_kwargs: object) -> None:
        raise AuditError("the access log cannot be written")

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "verify_live", settled)
    monkeypatch.setattr(audit_cli, "_record_if_indexed", unrecordable)
    out = home / "copy.jsonl"
    assert main(["audit", "export", "--out", str(out)]) == 1
    assert "the access log cannot be written" in capsys.readouterr().err
    assert list(home.glob("copy.jsonl*")) == []


def test_a_chain_no_checkpoint_vouches_for_is_named_and_fails_strict(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole chain's checkpoints deleted (or a chain invented by someone who can write
    tiaki.audit) still chains: the log alone cannot call it tampering, but it must not pass
    unremarked, and --strict fails on it."""
    stripped = [c for c in log.checkpoints if c.key != b"tiaki-broker-1"]
    path = export(home / "stripped.jsonl", log.audit + stripped)
    assert main(["audit", "verify", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 chains have no checkpoint at all, so nothing vouches for their records: " in out
    assert out.rstrip().endswith("tiaki-broker-1")
    assert main(["audit", "verify", "--file", str(path), "--strict"]) == 1
    assert "does NOT verify (--strict)" in capsys.readouterr().err
    whole = export(home / "whole.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "verify", "--file", str(whole), "--strict"]) == 0
    assert "no checkpoint at all" not in capsys.readouterr().out
