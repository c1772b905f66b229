"""Evolution and lint on temporary schema folders, through the API and ``tiaki schema check``."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from broker._cli import main
from broker.codec import SchemaError, check_evolution, load_schemas

BASE: dict[str, Any] = {
    "type": "record",
    "name": "Thing",
    "namespace": "nz.tiaki",
    "doc": "A test type.",
    "fields": [
        {"name": "id", "type": "string", "doc": "Id.", "classification": "operational"},
        {
            "name": "note",
            "type": ["null", "string"],
            "default": None,
            "doc": "Note.",
            "classification": "narrative",
        },
        {"name": "count", "type": "int", "doc": "Count.", "classification": "risk"},
    ],
}


def _folder(tmp_path: Path, schema_dir: Path, *versions: dict[str, Any]) -> Path:
    root = tmp_path / "schemas"
    root.mkdir()
    shutil.copy(schema_dir / "vocabulary.json", root / "vocabulary.json")
    for number, schema in enumerate(versions, start=1):
        path = root / "types" / "Thing" / f"v{number}.avsc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema), encoding="utf-8")
    return root


def _v2(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    change(schema["fields"])
    return schema


def _check(tmp_path: Path, schema_dir: Path, v2: dict[str, Any]) -> list[str]:
    folder = _folder(tmp_path, schema_dir, BASE, v2)
    return [str(p) for p in check_evolution(load_schemas(folder).versions("Thing"))]


def test_adding_an_optional_field_with_default_passes(tmp_path: Path, schema_dir: Path) -> None:
    extra = {
        "name": "flag",
        "type": "boolean",
        "default": False,
        "doc": "F.",
        "classification": "risk",
    }
    assert _check(tmp_path, schema_dir, _v2(lambda f: f.append(extra))) == []


def test_removing_an_optional_field_passes(tmp_path: Path, schema_dir: Path) -> None:
    assert _check(tmp_path, schema_dir, _v2(lambda f: f.pop(1))) == []


def test_changing_a_type_fails_naming_schema_and_field(tmp_path: Path, schema_dir: Path) -> None:
    problems = _check(tmp_path, schema_dir, _v2(lambda f: f[2].__setitem__("type", "string")))
    assert problems
    assert all("nz.tiaki.Thing" in p and "field 'count'" in p for p in problems)
    assert any("backward" in p for p in problems)
    assert any("forward" in p for p in problems)


def test_int_to_long_is_backward_only(tmp_path: Path, schema_dir: Path) -> None:
    problems = _check(tmp_path, schema_dir, _v2(lambda f: f[2].__setitem__("type", "long")))
    assert len(problems) == 1
    assert "(forward)" in problems[0]
    assert "field 'count'" in problems[0]


def test_adding_a_required_field_fails(tmp_path: Path, schema_dir: Path) -> None:
    extra = {"name": "severity", "type": "int", "doc": "S.", "classification": "risk"}
    problems = _check(tmp_path, schema_dir, _v2(lambda f: f.append(extra)))
    assert len(problems) == 1
    assert "nz.tiaki.Thing: v2 cannot read data written with v1 (backward)" in problems[0]
    assert "field 'severity'" in problems[0]


def test_removing_a_required_field_fails_forward(tmp_path: Path, schema_dir: Path) -> None:
    problems = _check(tmp_path, schema_dir, _v2(lambda f: f.pop(2)))
    assert len(problems) == 1
    assert "(forward)" in problems[0]
    assert "field 'count'" in problems[0]


def test_changing_a_logical_type_fails(tmp_path: Path, schema_dir: Path) -> None:
    stamp = {"type": "int", "logicalType": "date"}
    extra = {
        "name": "flag",
        "type": "boolean",
        "default": False,
        "doc": "F.",
        "classification": "risk",
    }

    def change(fields: list[dict[str, Any]]) -> None:
        fields[2]["type"] = stamp
        fields.append(extra)  # the canonical form drops logical types; make v2 differ otherwise

    problems = _check(tmp_path, schema_dir, _v2(change))
    assert len(problems) == 2
    assert all("field 'count'" in p for p in problems)


def test_a_logical_type_change_alone_is_not_a_new_version(tmp_path: Path, schema_dir: Path) -> None:
    stamp = {"type": "int", "logicalType": "date"}
    folder = _folder(tmp_path, schema_dir, BASE, _v2(lambda f: f[2].__setitem__("type", stamp)))
    with pytest.raises(SchemaError, match="same wire form"):
        load_schemas(folder)


def test_enum_symbols_need_a_default_to_grow(tmp_path: Path, schema_dir: Path) -> None:
    def enum(symbols: list[str], default: str | None) -> dict[str, Any]:
        e: dict[str, Any] = {"type": "enum", "name": "Level", "doc": "L.", "symbols": symbols}
        if default:
            e["default"] = default
        return e

    def with_enum(e: dict[str, Any]) -> dict[str, Any]:
        return _v2(
            lambda f: f.append({"name": "level", "type": e, "doc": "L.", "classification": "risk"})
        )

    v1 = with_enum(enum(["low", "unknown"], "unknown"))
    folder = _folder(
        tmp_path, schema_dir, v1, with_enum(enum(["low", "high", "unknown"], "unknown"))
    )
    assert check_evolution(load_schemas(folder).versions("Thing")) == []
    shutil.rmtree(folder)
    folder = _folder(
        tmp_path, schema_dir, with_enum(enum(["low"], None)), with_enum(enum(["low", "high"], None))
    )
    problems = [str(p) for p in check_evolution(load_schemas(folder).versions("Thing"))]
    assert len(problems) == 1
    assert "field 'level'" in problems[0]
    assert "high" in problems[0]


def test_cli_check_fails_with_messages(
    tmp_path: Path, schema_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path, schema_dir, BASE, _v2(lambda f: f[2].__setitem__("type", "string")))
    assert main(["schema", "check", "--schemas", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "nz.tiaki.Thing" in err
    assert "field 'count'" in err


def test_cli_check_and_list_pass_on_the_real_folder(
    schema_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "check", "--schemas", str(schema_dir)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["schema", "list", "--schemas", str(schema_dir)]) == 0
    assert "FamilyHarmEpisodeReport" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f[0].pop("doc"), "field 'id': missing 'doc'"),
        (lambda f: f[0].__setitem__("classification", "secret"), "classification 'secret'"),
        (lambda f: f[0].pop("classification"), "field 'id': classification None"),
        (lambda f: f[0].__setitem__("type", ["string", "int"]), "unions must be"),
        (lambda f: f[0].__setitem__("type", "Address"), "without pinning"),
    ],
)
def test_lint_errors_name_file_and_field(
    tmp_path: Path, schema_dir: Path, change: Any, expected: str
) -> None:
    folder = _folder(tmp_path, schema_dir, _v2(change))
    with pytest.raises(SchemaError, match=expected) as caught:
        load_schemas(folder)
    assert "Thing/v1.avsc" in str(caught.value)


def test_version_gaps_and_unchanged_versions_are_refused(tmp_path: Path, schema_dir: Path) -> None:
    folder = _folder(tmp_path, schema_dir, BASE, BASE)
    with pytest.raises(SchemaError, match="same wire form"):
        load_schemas(folder)
    (folder / "types" / "Thing" / "v2.avsc").rename(folder / "types" / "Thing" / "v3.avsc")
    with pytest.raises(SchemaError, match="without gaps"):
        load_schemas(folder)


def test_cli_reports_schema_errors_on_one_line(
    tmp_path: Path, schema_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path, schema_dir, _v2(lambda f: f[0].pop("doc")))
    assert main(["schema", "check", "--schemas", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "missing 'doc'" in err


def test_cli_without_schemas_checks_the_brokers_folder(
    tmp_path: Path,
    schema_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Given no --schemas, TIAKI_SCHEMAS, the folder ``tiaki broker run`` decodes with, not
    a ``schemas`` under the current directory (here the shipped one, which passes)."""
    monkeypatch.chdir(schema_dir.parent)
    folder = _folder(tmp_path, schema_dir, BASE, _v2(lambda f: f[2].__setitem__("type", "string")))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(folder))
    assert main(["schema", "check"]) == 1
    assert "field 'count'" in capsys.readouterr().err
    assert main(["schema", "list"]) == 0
    assert "nz.tiaki.Thing" in capsys.readouterr().out
    assert main(["schema", "check", "--schemas", "schemas"]) == 0  # a folder given wins


def test_cli_refuses_a_missing_tiaki_schemas_in_one_line(
    tmp_path: Path,
    schema_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(schema_dir.parent)
    missing = tmp_path / "not-deployed"
    monkeypatch.setenv("TIAKI_SCHEMAS", str(missing))
    assert main(["schema", "check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tiaki: error: invalid setting TIAKI_SCHEMAS={str(missing)!r}: no such folder\n"
