"""Recursive named types are refused: the field model cannot give the fields nested inside one
their own paths and classes, so a policy's action on the recursive field would reach every
class inside it. No shipped schema is recursive; the loader and the model both fail closed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from broker.codec import SchemaError, load_schemas
from broker.codec._model import Schema, flatten_fields
from broker.codec._types import collect_names


def _field(name: str, type_: Any, classification: str = "identifier") -> dict[str, Any]:
    return {
        "name": name,
        "type": type_,
        "doc": f"Synthetic {name}.",
        "classification": classification,
    }


def _record(name: str, fields: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "nz.tiaki",
        "doc": f"Synthetic {name}.",
        "fields": fields,
        **extra,
    }


def _folder(tmp_path: Path, schema_dir: Path, types: dict[str, dict[str, Any]]) -> Path:
    folder = tmp_path / "schemas"
    folder.mkdir()
    shutil.copy(schema_dir / "vocabulary.json", folder / "vocabulary.json")
    for name, raw in types.items():
        (folder / "types" / name).mkdir(parents=True)
        (folder / "types" / name / "v1.avsc").write_text(json.dumps(raw))
    return folder


def test_a_self_recursive_type_is_refused_naming_file_and_type(
    tmp_path: Path, schema_dir: Path
) -> None:
    person = _record(
        "SynPerson",
        [
            _field("family_name", "string"),
            _field("home_address", ["null", "string"], "location"),
            _field("related", {"type": "array", "items": "nz.tiaki.SynPerson"}),
        ],
    )
    folder = _folder(tmp_path, schema_dir, {"SynPerson": person})
    with pytest.raises(SchemaError) as caught:
        load_schemas(folder)
    message = str(caught.value)
    assert str(folder / "types" / "SynPerson" / "v1.avsc") in message
    assert "nz.tiaki.SynPerson is recursive" in message


def test_mutually_recursive_pinned_types_are_refused(tmp_path: Path, schema_dir: Path) -> None:
    a = _record(
        "SynA",
        [_field("b", ["null", "nz.tiaki.SynB"])],
        **{"tiaki.uses": {"nz.tiaki.SynB": 1}},
    )
    b = _record(
        "SynB",
        [_field("a", {"type": "map", "values": "nz.tiaki.SynA"}, "location")],
        **{"tiaki.uses": {"nz.tiaki.SynA": 1}},
    )
    with pytest.raises(SchemaError, match=r"SynA/v1\.avsc: type nz\.tiaki\.SynA is recursive"):
        load_schemas(_folder(tmp_path, schema_dir, {"SynA": a, "SynB": b}))


def test_a_type_used_twice_without_a_cycle_still_loads(tmp_path: Path, schema_dir: Path) -> None:
    inner = _record("SynInner", [_field("code", "string")])
    outer = _record(
        "SynOuter",
        [_field("first", "nz.tiaki.SynInner"), _field("second", ["null", "nz.tiaki.SynInner"])],
        **{"tiaki.uses": {"nz.tiaki.SynInner": 1}},
    )
    loaded = load_schemas(_folder(tmp_path, schema_dir, {"SynInner": inner, "SynOuter": outer}))
    paths = [f.path for f in loaded.latest("SynOuter").fields]
    assert paths == ["first", "first.code", "second", "second.code"]


def test_flattening_a_recursive_type_fails_closed() -> None:
    """The model's own guard, for a schema that did not come through the loader."""
    person = {
        "type": "record",
        "name": "nz.tiaki.P",
        "fields": [
            {"name": "home_address", "type": ["null", "string"], "classification": "location"},
            {
                "name": "related",
                "type": {"type": "array", "items": "nz.tiaki.P"},
                "classification": "identifier",
            },
        ],
    }
    definition = {
        "type": "record",
        "name": "nz.tiaki.E",
        "fields": [{"name": "person", "type": person, "classification": "identifier"}],
    }
    schema = Schema(
        name="nz.tiaki.E",
        version=1,
        kind="type",
        definition=definition,
        parsed=None,
        canonical_form="",
        fingerprint=bytes(32),
        path=Path("synthetic/E/v1.avsc"),
        practice_step=None,
        names=collect_names(definition),
    )
    with pytest.raises(SchemaError, match=r"synthetic/E/v1\.avsc: type nz\.tiaki\.P is recursive"):
        flatten_fields(schema)
