"""The compiled field projector against the tree walk it replaces: same output, any plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import Schema, from_json, load_schemas
from broker.policy._fields import compile_plan, leaves, transforms_for

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
    assert plan.project(record, TRANSFORMS) == plan.project_by_walk(record, TRANSFORMS)


def schema_classes(schema: Schema) -> set[str]:
    return {info.classification for info in leaves(schema)}


def test_every_example_has_a_schema() -> None:
    assert EXAMPLES, "no examples to project"
    for example in EXAMPLES:
        assert SCHEMAS.latest(example.stem).name.endswith(example.stem)
