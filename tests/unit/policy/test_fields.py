"""The compiled field projector against the tree walk it replaces: same output, any plan, and
JSON-ready output that writes exactly as the decoded values did through a ``default`` hook."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import Schema, from_json, load_schemas
from broker.policy._fields import _json_plain, compile_plan, json_value, leaves, transforms_for

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = load_schemas(ROOT / "schemas")
EXAMPLES = sorted((ROOT / "schemas" / "examples").glob("*.json"))
ACTIONS = (
    "keep",
    "drop",
    "mask",
    "pseudonymise",
    "generalise:year",
    "generalise:month",
    "generalise:suburb",
)
TRANSFORMS = transforms_for(lambda value: f"pseudonym:{len(str(value))}")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compiled_projection_equals_the_tree_walk(example: Path, data: st.DataObject) -> None:
    schema = SCHEMAS.latest(example.stem)
    record = from_json(schema, json.loads(example.read_text()))
    paths = [info.path for info in leaves(schema)]
    # Whole subtrees as well as single leaves, so enclosing-path selectors are exercised.
    prefixes = sorted({p.rsplit(".", 1)[0] for p in paths if "." in p})
    chosen = data.draw(st.lists(st.sampled_from(paths + prefixes), unique=True, max_size=25))
    fields = [(path, data.draw(st.sampled_from(ACTIONS))) for path in chosen]
    classes = data.draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(schema_classes(schema))), st.sampled_from(ACTIONS)),
            max_size=4,
        )
    )
    plan = compile_plan(schema, fields, classes, "R-test")
    projected = plan.project(record, TRANSFORMS)
    walked = plan.project_by_walk(record, TRANSFORMS)
    assert projected == json_ready(walked)
    # The JSON the broker writes is what the decoded values gave through the hook it used
    # before projections were JSON-ready, and needs no hook now.
    assert canonical(projected) == canonical(walked, default=hook_before)


def hook_before(value: Any) -> Any:
    """The pipeline's ``json.dumps`` hook before projections were JSON-ready."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot represent {type(value).__name__} in a shared event")


def canonical(value: Any, default: Any = None) -> str:
    return json.dumps(
        value, default=default, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return json_value(value)


SCALARS = st.one_of(
    st.datetimes(timezones=st.just(dt.UTC)),
    st.datetimes(timezones=st.timezones()),
    st.datetimes(),
    st.dates(),
    st.uuids(),
    st.binary(max_size=20),
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)


@given(values=st.lists(SCALARS, max_size=8))
def test_json_value_writes_as_the_hook_did(values: list[Any]) -> None:
    assert canonical([json_value(v) for v in values]) == canonical(values, default=hook_before)


@pytest.mark.parametrize(
    ("avro_type", "plain"),
    [
        ("string", True),
        ("union<null,string>", True),
        ("array<string>", True),
        ("enum nz.tiaki.Consent", True),
        ("union<null,boolean>", True),
        ("map<double>", True),
        ("timestamp-millis", False),
        ("union<null,date>", False),
        ("uuid", False),
        ("bytes", False),
        ("fixed nz.tiaki.Digest", False),
        ("array<union<null,timestamp-millis>>", False),
    ],
)
def test_which_leaves_are_json_as_they_are(avro_type: str, plain: bool) -> None:
    assert _json_plain(avro_type) is plain


def schema_classes(schema: Schema) -> set[str]:
    return {info.classification for info in leaves(schema)}


def test_every_example_has_a_schema() -> None:
    assert EXAMPLES, "no examples to project"
    for example in EXAMPLES:
        assert SCHEMAS.latest(example.stem).name.endswith(example.stem)
