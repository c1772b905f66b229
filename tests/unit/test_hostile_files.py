"""Hostile files get the reader's normal one-line error, never a traceback: JSON nested deeper
than the parser's stack (``[`` a hundred thousand times), integers longer than Python converts
(4300 digits), bytes that are not UTF-8, dates that overflow in UTC, numbers that do not fit
a 64-bit column, an index altered by hand. And one broken key set never stops work on another.

Every file here is synthetic: no real key, person or record.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker._cli import main
from broker._yaml import SourceError, load_json, load_yaml, parse_json
from broker.audit import LogEntry, dump_lines
from broker.codec import SchemaSet, load_schemas
from broker.envelope import KeyState, KeyStore, KeyStoreError
from broker.envelope._keys import parse_time
from broker.envelope._store import init_dev_keys
from broker.policy import (
    ApprovalError,
    PolicyValidationError,
    compile_policy,
    load_approvals,
    load_policy_set,
    load_scenarios,
)
from tests.unit.audit.conftest import SUBJECT_KEY, SyntheticLog, build_log, make_ring
from tests.unit.test_cli_inputs import one_line

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "policies" / "agencies.yaml"
#: Deeper than Python's JSON parser can recurse: ``json.loads`` raises RecursionError.
DEEP = "[" * 100_000
#: A decimal integer longer than ``int()`` converts by default (4300 digits).
ENDLESS = "9" * 5000


# -- the one safe parse -------------------------------------------------------------------------


def test_an_endless_json_integer_is_refused_at_its_line_and_column() -> None:
    text = '{"a": "1234", "b": [1.5, 2e' + ENDLESS + ",\n  -" + ENDLESS + "]}"
    with pytest.raises(SourceError) as caught:
        parse_json(Path("x.json"), text, line=3)
    assert (caught.value.line, caught.value.column) == (4, 3)
    assert caught.value.reason == "bad JSON: an integer of more than 4300 digits"


def test_a_json_file_nested_too_deeply_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(SourceError, match="nested more than 100 levels deep"):
        load_json(path)


def test_an_endless_yaml_integer_is_refused_at_its_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(f"regions: [abc]\nversion: {ENDLESS}\n")
    with pytest.raises(SourceError) as caught:
        load_yaml(path)
    assert (caught.value.line, caught.value.column) == (2, 10)
    assert "integer of more than 4300 digits" in caught.value.reason
    (tmp_path / "key.yaml").write_text(f"? {ENDLESS}\n: 1\n")  # as a mapping key, too
    with pytest.raises(SourceError, match=re.escape("key.yaml:1:3: bad YAML")):
        load_yaml(tmp_path / "key.yaml")
    err = one_line(["registry", "check", str(path)], capsys)
    assert f"{path}:2:10: bad YAML: an integer of more than 4300 digits" in err


# -- key documents and the revocation list ---------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyStore:
    """Current development keys for police and corrections (and the broker) in TIAKI_HOME."""
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIAKI_REGISTRY", str(REGISTRY))
    store = KeyStore(tmp_path / "home" / "keys")
    init_dev_keys(store, ["police", "corrections"], now=datetime.now(UTC))
    return store


def _police_key(store: KeyStore) -> str:
    return store.load().keys("police")[0].key_id


def test_a_deeply_nested_key_document_refuses_its_key_set_only(
    keys: KeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    police = _police_key(keys)
    broken = keys.public_path("corrections")
    broken.write_text(DEEP)
    err = one_line(["keys", "list"], capsys)
    assert f"{broken}:1:1: bad JSON: lists or mappings nested more than 100" in err
    one_line(["keys", "rotate", "corrections", "--wait", "1"], capsys)

    assert main(["keys", "revoke", police, "--reason", "compromised", "--wait", "1"]) == 0
    captured = capsys.readouterr()
    assert f"{police} revoked" in captured.out
    assert "corrections's key document is refused" in captured.err
    ring, refused = keys.load_each()
    assert ring.get(police).state is KeyState.REVOKED
    assert list(refused) == ["corrections"]


def test_a_key_document_with_an_endless_number_is_refused(keys: KeyStore) -> None:
    keys.public_path("corrections").write_text('{"format": ' + ENDLESS + "}")
    with pytest.raises(
        KeyStoreError, match=re.escape("corrections.json:1:12: bad JSON: an integer")
    ):
        keys.load()


@pytest.mark.parametrize(
    ("field", "value"),
    [("created_at", "0001-01-01T00:00:00+14:00"), ("not_after", "9999-12-31T23:59:59-14:00")],
)
def test_a_key_date_outside_utc_years_is_a_malformed_document(
    keys: KeyStore, capsys: pytest.CaptureFixture[str], field: str, value: str
) -> None:
    police = _police_key(keys)
    path = keys.public_path("corrections")
    doc = json.loads(path.read_text())
    doc["keys"][0][field] = value
    path.write_text(json.dumps(doc))

    err = one_line(["keys", "rotate", "corrections", "--wait", "1"], capsys)
    assert "malformed key entry in key set 'corrections': time out of range in UTC" in err
    victim = doc["keys"][0]["key_id"]
    err = one_line(["keys", "revoke", victim, "--wait", "1"], capsys)
    assert "corrections's key document is refused" in err
    assert main(["keys", "revoke", police, "--wait", "1"]) == 0
    assert "corrections's key document is refused" in capsys.readouterr().err


def test_parse_time_refuses_a_time_that_overflows_in_utc() -> None:
    assert parse_time("0001-01-01T00:00:00+00:00").year == 1
    for text in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        with pytest.raises(ValueError, match="out of range"):
            parse_time(text)


@pytest.mark.parametrize("line", [b"\xff\n", DEEP.encode() + b"\n", ENDLESS.encode() + b"\n"])
def test_an_unreadable_revocation_line_is_one_line_naming_the_file(
    keys: KeyStore, capsys: pytest.CaptureFixture[str], line: bytes
) -> None:
    keys.revoked_path.write_bytes(line)
    err = one_line(["keys", "list"], capsys)
    assert f"{keys.revoked_path}: line 1 is not a revocation" in err


def test_a_torn_last_revocation_cut_inside_a_character_is_ignored(keys: KeyStore) -> None:
    police = _police_key(keys)
    ring = keys.load()
    ring.revoke(police, datetime.now(UTC), "compromisé")  # a reason that is not ASCII
    keys.save(ring, ["police"])
    whole = keys.revoked_path.read_bytes()
    torn = whole + whole[: whole.index("é".encode()) + 1]  # a crash mid-append, mid-character
    keys.revoked_path.write_bytes(torn)
    assert len(keys.revocations().by_id) == 1


# -- policy approvals and scenario examples --------------------------------------------------


def test_a_deeply_nested_approval_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "aroha.json").write_text(DEEP)
    with pytest.raises(ApprovalError, match=r"aroha.json:1:1: bad JSON: .*not a readable approval"):
        load_approvals(tmp_path)


def test_a_deeply_nested_scenario_example_is_a_validation_error(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", folder)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    example = tmp_path / "schemas" / "examples" / "ReportOfConcern.json"
    example.write_text(DEEP)
    engine = compile_policy(load_policy_set(folder))
    with pytest.raises(PolicyValidationError) as caught:
        load_scenarios(folder / "tests", engine)
    assert f"cannot read example {example}:1:1: bad JSON: lists or mappings nested" in str(
        caught.value
    )


# -- connection profiles and dead letters ----------------------------------------------------


def test_a_deeply_nested_admin_profile_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    profile = tmp_path / "admin.json"
    profile.write_text(DEEP)
    argv = ["provision", "--registry", str(REGISTRY), "--admin-profile", str(profile)]
    assert f"{profile}: not valid JSON" in one_line(argv, capsys)


def test_a_deeply_nested_dead_letter_is_listed_as_unreadable(tmp_path: Path) -> None:
    from adapters import DeadLetters

    folder = tmp_path / "dead-letters"
    folder.mkdir()
    (folder / "deep.json").write_text(DEEP)
    (folder / "long.json").write_text('{"attempts": ' + ENDLESS + "}")
    letters, unreadable = DeadLetters(folder).read()
    assert letters == []
    assert [(p.name, why) for p, why in unreadable] == [
        ("deep.json", "not valid JSON"),
        ("long.json", "not valid JSON"),
    ]


# -- audit exports, witness files and the index ----------------------------------------------


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return load_schemas(ROOT / "schemas")


@pytest.fixture(scope="module")
def log(schemas: SchemaSet) -> SyntheticLog:
    return build_log(make_ring(), schemas, records=30)


@pytest.fixture
def audit_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_OPERATOR", "officer-1")
    KeyStore(tmp_path / "keys").save(make_ring(), owners=["broker"])
    secrets = tmp_path / "keys" / "broker-secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "audit-subject.key").write_bytes(SUBJECT_KEY)
    return tmp_path


def _export(path: Path, entries: list[LogEntry], spoil: dict[str, Any] | str | None = None) -> Path:
    """An export of ``entries`` whose fourth record has ``spoil`` merged in (or is it)."""
    lines = list(dump_lines(entries, exported_at="2026-03-02T10:00:00+00:00"))
    if isinstance(spoil, str):
        lines[4] = spoil
    elif spoil is not None:
        lines[4] = json.dumps({**json.loads(lines[4]), **spoil})
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (DEEP, "(bad JSON: lists or mappings nested more than 100 levels deep)"),
        ('{"offset": ' + ENDLESS + "}", "(bad JSON: an integer of more than 4300 digits)"),
        ('{"topic": "tiaki.audit", "partition": 0, "offset": 0, "timestamp_ms": 1e400}', ""),
        ({"offset": 2**63}, "(partition or offset out of range)"),
        ({"partition": -1}, "(partition or offset out of range)"),
        ({"timestamp_ms": 2**63}, "(timestamp out of range)"),
    ],
)
def test_a_hostile_export_line_is_one_line_naming_file_and_line(
    audit_home: Path,
    log: SyntheticLog,
    capsys: pytest.CaptureFixture[str],
    spoil: dict[str, Any] | str,
    why: str,
) -> None:
    path = _export(audit_home / "log.jsonl", log.audit + log.checkpoints, spoil)
    for command in ("verify", "index"):
        err = one_line(["audit", command, "--file", str(path)], capsys)
        assert f"{path}: export line 5: malformed record {why}".rstrip() in err


def test_a_position_the_index_cannot_pack_is_refused(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export(audit_home / "log.jsonl", log.audit, {"partition": 2**30})
    err = one_line(["audit", "index", "--file", str(path)], capsys)
    assert "beyond what the index can hold" in err


def test_a_deeply_nested_witness_file_is_one_line(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export(audit_home / "log.jsonl", log.audit + log.checkpoints)
    witness = audit_home / "witness.jsonl"
    witness.write_text('{"checkpoint": ""}\n' + DEEP + "\n")
    err = one_line(["audit", "verify", "--file", str(path), "--witness", str(witness)], capsys)
    assert f"{witness}:2:1: bad JSON" in err
    assert "not a witness file" in err


def _indexed(home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]) -> Path:
    path = _export(home / "log.jsonl", log.audit + log.checkpoints)
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    return home / "audit" / "index.sqlite"


def _alter(index: Path, sql: str) -> None:
    with sqlite3.connect(index) as conn:
        conn.execute(sql)
    conn.close()


def test_an_index_whose_layout_was_altered_says_rebuild_and_is_rebuilt(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    index = _indexed(audit_home, log, capsys)
    _alter(index, "UPDATE layout SET version = 'x'")
    for argv in (["audit", "query"], ["audit", "access-log"]):
        err = one_line(argv, capsys)
        assert "the audit index is damaged" in err
        assert "run `tiaki audit index` to rebuild it" in err
    assert main(["audit", "index", "--file", str(audit_home / "log.jsonl")]) == 0
    assert "indexed 30 new audit records" in capsys.readouterr().out
    assert main(["audit", "query", "--format", "json"]) == 0


def test_an_index_whose_value_log_end_was_altered_says_rebuild(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    index = _indexed(audit_home, log, capsys)
    _alter(index, "UPDATE value_log SET end_offset = 'x'")
    assert "value log is shorter than its records say" in one_line(["audit", "query"], capsys)


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("UPDATE access_log SET results = 'abc' WHERE seq = 0", "access log seq 0: entry altered"),
        ("UPDATE access_log SET at_ms = 'abc' WHERE seq = 0", "access log seq 0: entry altered"),
    ],
)
def test_an_altered_access_log_entry_is_one_line(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], sql: str, why: str
) -> None:
    index = _indexed(audit_home, log, capsys)
    _alter(index, sql)
    assert why in one_line(["audit", "access-log"], capsys)


def test_an_access_log_whose_last_seq_was_altered_is_one_line(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    index = _indexed(audit_home, log, capsys)
    _alter(index, "UPDATE access_log SET seq = 'abc' WHERE seq = 0")
    assert "access log: last entry altered" in one_line(["audit", "query"], capsys)


@pytest.mark.parametrize("workers", ["0", "65", "99999999999999999999"])
def test_index_workers_are_bounded(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    path = _export(audit_home / "log.jsonl", log.audit)
    err = one_line(["audit", "index", "--file", str(path), "--workers", workers], capsys)
    assert "--workers" in err


def test_another_applications_database_is_never_rebuilt(
    audit_home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tiaki audit index --db` given someone else's SQLite file (a typo) that happens to
    have a ``records`` table: taken for an index of layout 0, its table was dropped."""
    foreign = audit_home / "other-application.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE records (name TEXT)")
        conn.execute("INSERT INTO records VALUES ('synthetic row')")
    conn.close()
    foreign.chmod(0o644)
    before = foreign.read_bytes()
    export = _export(audit_home / "log.jsonl", log.audit + log.checkpoints)
    err = one_line(["audit", "index", "--db", str(foreign), "--file", str(export)], capsys)
    assert err.strip().endswith(
        "the database given has a records table but is not a Tiaki audit index (it lacks "
        "access_log, decisions, positions, subjects): nothing was changed; give the index a "
        "file or database of its own"
    )
    with sqlite3.connect(foreign) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        rows = conn.execute("SELECT name FROM records").fetchall()
    conn.close()
    assert tables == {"records"}
    assert rows == [("synthetic row",)]
    assert sorted(p.name for p in foreign.parent.iterdir() if p.name.startswith("other")) == [
        "other-application.sqlite"
    ]
    assert foreign.stat().st_mode & 0o777 == 0o644  # not narrowed, not switched to WAL
    assert foreign.read_bytes() == before
