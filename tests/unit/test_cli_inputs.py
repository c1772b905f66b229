"""Bad input files and arguments get one line (file:line:column where it is a file) and a
non-zero exit, never a traceback: files that are not UTF-8 or nest too deeply, contexts that
are not contexts, numbers out of range, officer names that are paths, a mistyped index.

The property tests at the end feed random bytes and random YAML/JSON structures to every
command that reads a file, through the command line's ``main``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker._cli import main
from broker._errors import TiakiError
from broker.policy import Engine, compile_policy, load_policy_set

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "schemas" / "examples" / "FamilyHarmEpisodeReport.json"


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``tiaki argv``; assert it failed with one line on stderr and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped policy set whose files a test may spoil."""
    folder = tmp_path_factory.mktemp("p") / "policies"
    shutil.copytree(ROOT / "policies", folder)
    settings_file = folder / "policy.yaml"
    settings_file.write_text(
        settings_file.read_text().replace("schemas: ../schemas", f"schemas: {ROOT / 'schemas'}")
    )
    return folder


@pytest.fixture(scope="module")
def shipped_engine() -> Engine:
    return compile_policy(load_policy_set(ROOT / "policies"))


@pytest.fixture
def cached_engine(shipped_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped set compiled once, for commands whose subject here is another file."""
    monkeypatch.setattr("broker.policy._cli._engine", lambda _folder: shipped_engine)


# -- files that are not UTF-8, or nest too deeply --------------------------------------------


def test_a_file_that_is_not_utf8_is_named_at_its_first_bad_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"agencies:\n  - id: p\xc3\xa5\xff\xfe\n")
    err = one_line(["registry", "check", str(bad)], capsys)
    assert err == f"tiaki: error: {bad}:2:11: not UTF-8 text (byte 0xff)\n"


def test_a_character_yaml_does_not_allow_is_one_line_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "nul.yaml"
    bad.write_bytes(b"a: 1\nb: x\x00\n")
    err = one_line(["registry", "check", str(bad)], capsys)
    assert err == f"tiaki: error: {bad}:2:5: bad YAML: character #x0000 is not allowed\n"


@pytest.mark.usefixtures("cached_engine")
@pytest.mark.parametrize("name", ["events.json", "events.yaml", "events.jsonl"])
def test_simulate_and_explain_name_a_file_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    bad = tmp_path / name
    bad.write_bytes(b"\xff\xfe")
    assert "1:1: not UTF-8 text" in one_line(["policy", "simulate", str(bad)], capsys)
    err = one_line(["policy", "explain", str(bad), "--recipient", "police"], capsys)
    assert "1:1: not UTF-8 text" in err


def test_schema_and_audit_files_that_are_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "vocabulary.json").write_bytes(b'{"a": "\xff"}')
    err = one_line(["schema", "list", "--schemas", str(tmp_path / "s")], capsys)
    assert "vocabulary.json:1:8: not UTF-8 text" in err
    export = tmp_path / "export.jsonl"
    export.write_bytes(b'{"format": 1}\n\xff')
    # audit verify reads the file the same way (``_read``), once it has the broker's keys.
    argv = ["audit", "index", "--operator", "T", "--file", str(export)]
    assert f"{export}:2:1: not UTF-8 text" in one_line(argv, capsys)


def test_a_policy_file_that_is_not_utf8(
    policies: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(policies, folder)
    (folder / "rules" / "99-bin.yaml").write_bytes(b"\xff")
    for command in ("validate", "hash", "test"):
        assert main(["policy", command, str(folder)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert "99-bin.yaml:1:1: not UTF-8 text (byte 0xff)" in err


@pytest.mark.parametrize(
    ("text", "where"),
    [("rules: " + "[" * 3000 + "]" * 3000 + "\n", "1:1"), ("a:\n" + "  - " * 150 + "x\n", "2:")],
)
def test_a_deeply_nested_yaml_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text(text)
    err = one_line(["registry", "check", str(deep)], capsys)
    assert f"{deep}:{where}" in err
    assert "nested more than 100 levels deep" in err


@pytest.mark.usefixtures("cached_engine")
def test_a_deeply_nested_json_events_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for depth in (500, 5000):  # within and beyond the JSON parser's own limit
        deep = tmp_path / f"deep{depth}.json"
        deep.write_text(
            json.dumps({"record": {"header": {}}, "context": {}})[:-1]
            + ', "x": '
            + "[" * depth
            + "]" * depth
            + "}"
        )
        err = one_line(["policy", "simulate", str(deep)], capsys)
        assert "nested more than 100 levels deep" in err


# -- contexts -----------------------------------------------------------------------------


def _scenario_folder(policies: Path, tmp_path: Path, old: str, new: str) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(policies, folder)
    routes = folder / "tests" / "routes.yaml"
    text = routes.read_text()
    assert old in text
    routes.write_text(text.replace(old, new, 1))
    return folder


CONTEXT = "context: {source: police, recipient: msd, purpose: serious_threat, participates: true}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (", nosuch: 1", "unknown key 'nosuch' in a context"),
        (", risk: hgh", "unknown risk 'hgh' for 'risk' (did you mean 'high'?)"),
        (", imminent_danger: yes", "'imminent_danger' must be true or false, not 'yes'"),
    ],
)
def test_a_misspelt_scenario_context_is_a_positioned_error(
    policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    folder = _scenario_folder(policies, tmp_path, CONTEXT, CONTEXT[:-1] + extra + "}")
    for command in ("validate", "test"):
        assert main(["policy", command, str(folder)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert "tests/routes.yaml:" in err
        assert message in err
        assert err.endswith("tiaki: 1 error(s)\n")


def _event_with(tmp_path: Path, context: Any, **header: Any) -> Path:
    record = json.loads(EXAMPLE.read_text())
    record["header"].update(header)
    path = tmp_path / "event.json"
    path.write_text(json.dumps({"record": record, "context": context}))
    return path


@pytest.mark.usefixtures("cached_engine")
@pytest.mark.parametrize(
    ("context", "message"),
    [
        (5, "'context' must be a mapping"),
        ([["risk", "high"]], "'context' must be a mapping"),
        ({"nosuch": 1}, "context: unknown context key 'nosuch'"),
        ({"at": "yesterday"}, "'at' must be a date, YYYY-MM-DD, not 'yesterday'"),
        ({"risk": "hgh"}, "unknown risk 'hgh' for 'risk' (did you mean 'high'?)"),
        ({"recipient": "msd"}, "unknown context key 'recipient'"),
        ({"source": "polise"}, "unknown agency 'polise' for 'source' (did you mean 'police'?)"),
        ({"participates": "yes"}, "'participates' must be true or false"),
    ],
)
def test_a_bad_event_context_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], context: Any, message: str
) -> None:
    path = _event_with(tmp_path, context)
    assert message in one_line(["policy", "simulate", str(path)], capsys)
    assert message in one_line(["policy", "explain", str(path), "--recipient", "police"], capsys)


@pytest.mark.usefixtures("cached_engine")
def test_an_event_whose_header_is_not_the_schemas_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _event_with(tmp_path, {}, sharing="x")
    err = one_line(["policy", "explain", str(path), "--recipient", "police"], capsys)
    assert "field 'header.sharing': expected record" in err


@pytest.mark.usefixtures("cached_engine")
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("=x", "--set '=x': expected key=value"),
        ("risk", "--set 'risk': expected key=value"),
        ("header.case_id=x", "unknown context key 'header.case_id'"),
        ("risk=hgh", "unknown risk 'hgh'"),
        ("at=2025-02-30", "'at' must be a date"),
    ],
)
def test_a_bad_set_is_one_line(
    capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    argv = ["policy", "explain", str(EXAMPLE), "--recipient", "police", "--set", setting]
    assert message in one_line(argv, capsys)


@pytest.mark.usefixtures("cached_engine")
def test_a_good_set_still_explains(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "explain", str(EXAMPLE), "--recipient", "police"]
    assert main([*argv, "--set", "risk=high", "--set", "at=2025-03-05"]) == 0
    assert "decision" in capsys.readouterr().out


# -- numbers, names, the index -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        (["keys", "rotate", "police", "--days", "99999999"], "tiaki: Invalid value for '--days'"),
        (["keys", "init", "--force", "--days", "99999999999"], "tiaki: Invalid value for '--days'"),
        (
            ["audit", "query", "--operator", "T", "--limit", "99999999999999999999"],
            "tiaki: Invalid value for '--limit'",
        ),
        (
            ["audit", "query", "--operator", "T", "--limit", "0"],
            "tiaki: Invalid value for '--limit'",
        ),
    ],
)
def test_numbers_out_of_range_are_one_line(
    argv: list[str], starts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert one_line(argv, capsys).startswith(starts)


@pytest.mark.parametrize("name", ["../../evil", "a/b", "", ".hidden", "x" * 65, "a b"])
def test_officer_names_are_simple(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.key"
    err = one_line(["policy", "keygen", "--officer", name, "--out", str(key)], capsys)
    assert "--officer" in err
    assert not key.exists()
    argv = ["policy", "sign", str(tmp_path), "--officer", name or "x/", "--key", str(key)]
    assert "--officer" in one_line(argv, capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


@pytest.mark.parametrize("empty", [False, True], ids=["missing", "empty file"])
@pytest.mark.parametrize("command", [["query"], ["access-log"], ["subject-report", "NHI:ZZZ0016"]])
def test_a_missing_index_is_refused_not_made(
    command: list[str],
    empty: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty file is no index either: SQLite would make one in it, and its empty answer
    would read as "nobody"."""
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    secrets = tmp_path / "keys" / "broker-secrets"
    secrets.mkdir(parents=True)
    (secrets / "audit-subject.key").write_bytes(b"k" * 32)
    typo = tmp_path / "indx.sqlite"
    if empty:
        typo.touch()
    argv = ["audit", *command, "--operator", "T", "--db", str(typo)]
    assert f"no audit index at {typo}" in one_line(argv, capsys)
    assert typo.exists() == empty
    assert not empty or typo.stat().st_size == 0


# -- every file-reading command, random input ------------------------------------------------

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_STRUCTURES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    [
        "agencies",
        "regions",
        "header",
        "record",
        "context",
        "format",
        "event_type",
        "risk",
        "at",
        "classifications",
        "practice_steps",
        "id",
        "kind",
    ]
)
#: Structures shaped a little like the files: known keys get further than random ones.
_SHAPED = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


def _as_yaml(value: Any) -> bytes:
    return json.dumps(value).encode()  # JSON is YAML


@st.composite
def _contents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "json-lines", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "deep":
        depth = draw(st.integers(90, 400))
        return b"[" * depth + b"]" * depth
    value = draw(_STRUCTURES | _SHAPED)
    if kind == "json-lines":
        return b"\n".join(_as_yaml(v) for v in draw(st.lists(_STRUCTURES | _SHAPED, max_size=3)))
    return _as_yaml(value)


def _commands(folder: Path) -> list[tuple[str, list[str]]]:
    """(file name, argv) for each command that reads the file."""
    schemas = folder / "schemas"
    return [
        ("agencies.yaml", ["registry", "check", str(folder / "agencies.yaml")]),
        ("events.json", ["policy", "simulate", str(folder / "events.json")]),
        ("events.yaml", ["policy", "simulate", str(folder / "events.yaml")]),
        ("events.jsonl", ["policy", "explain", str(folder / "events.jsonl"), "--recipient", "msd"]),
        ("schemas/vocabulary.json", ["schema", "list", "--schemas", str(schemas)]),
        (
            "export.jsonl",
            [
                "audit",
                "index",
                "--operator",
                "T",
                "--file",
                str(folder / "export.jsonl"),
                "--db",
                str(folder / "index.sqlite"),
            ],
        ),
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "schemas").mkdir()
    return folder


@pytest.mark.usefixtures("cached_engine")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=_contents(), which=st.integers(0, 5))
def test_any_input_file_gets_one_line_never_a_traceback(
    content: bytes,
    which: int,
    inputs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(inputs / "home"))
    name, argv = _commands(inputs)[which]
    (inputs / name).write_bytes(content)
    try:
        code = main(argv)
    except BaseException as exc:  # a traceback is what the property forbids
        pytest.fail(f"{argv} raised {type(exc).__name__}: {exc} on {content[:80]!r}")
    captured = capsys.readouterr()
    if code == 0:  # random input that happens to be valid (an empty events list, say)
        assert captured.err == "", captured.err
        return
    assert "Traceback" not in captured.err
    assert captured.err.count("\n") == 1, (argv, content[:80], captured.err)


def test_explain_for_an_unknown_agency_names_it_with_a_suggestion(
    cached_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to answer "deny (unknown_recipient)" with exit 0: a typo read as a decision.
    err = one_line(["policy", "explain", str(EXAMPLE), "--recipient", "polce"], capsys)
    assert "unknown agency 'polce' (did you mean 'police'?)" in err


# -- inputs that would otherwise answer with nothing ------------------------------------------


@pytest.mark.usefixtures("cached_engine")
@pytest.mark.parametrize("content", ["", "[]\n", "\n\n"])
def test_simulating_no_events_is_an_error_not_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    empty = tmp_path / "events.json"
    empty.write_text(content)
    assert one_line(["policy", "simulate", str(empty)], capsys).startswith(
        f"tiaki: error: {empty}: no events"
    )
    folder = tmp_path / "none"
    folder.mkdir()
    assert "no events" in one_line(["policy", "simulate", str(folder)], capsys)


def test_an_unknown_quarantine_reason_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_kafka(*_: object, **__: object) -> None:
        raise AssertionError("connected to Kafka for a reason that cannot match")

    monkeypatch.setattr("broker.runtime._quarantine.BrokerTools", no_kafka)
    err = one_line(["quarantine", "list", "--reason", "tamperd"], capsys)
    assert "--reason: no reason code 'tamperd'; one of " in err
    assert "tampered" in err

    def reached(*_: object, **__: object) -> None:
        raise TiakiError("reached Kafka")

    monkeypatch.setattr("broker.runtime._quarantine.BrokerTools", reached)
    for listed in ("unreadable", "request_id_in_use"):  # the list's own labels pass
        assert "reached Kafka" in one_line(["quarantine", "list", "--reason", listed], capsys)
