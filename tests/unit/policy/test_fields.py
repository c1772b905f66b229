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
from broker.policy._fields import (
    _json_plain,
    compile_plan,
    json_value,
    leaves,
    transforms_for,
    with_forbidden,
)

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
    fields += data.draw(item_selectors(schema))
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


# Item selectors: ``people[role=child].person: drop`` and the like.

EPISODE = SCHEMAS.latest("FamilyHarmEpisodeReport")
EPISODE_RECORD = from_json(
    EPISODE,
    json.loads((ROOT / "schemas" / "examples" / "FamilyHarmEpisodeReport.json").read_text()),
)
ROLES = ("victim", "person_using_violence", "child", "other_whanau", "unknown")


def picking_fields(schema: Schema) -> list[tuple[str, str]]:
    """(list field, enum field of its items) pairs of ``schema``, for lists not inside lists."""
    out = []
    for info in schema.fields:
        if "array<record" in info.avro_type and "[]" not in info.path and "{}" not in info.path:
            for item in schema.fields:
                head, _, name = item.path.rpartition(".")
                if head == f"{info.path}[]" and item.leaf and "enum " in item.avro_type:
                    out.append((info.path, name))
    return out


@st.composite
def item_selectors(draw: st.DrawFn, schema: Schema) -> list[tuple[str, str]]:
    """Selector entries over one of ``schema``'s lists (none when it has no list to pick)."""
    pairs = picking_fields(schema)
    if not pairs:
        return []
    list_path, name = draw(st.sampled_from(pairs))
    under = sorted(
        {
            "",
            *(
                p.path[len(list_path) + 2 :]
                for p in leaves(schema)
                if p.path.startswith(f"{list_path}[].")
            ),
        }
        | {
            p.path[len(list_path) + 2 :].rsplit(".", 1)[0]
            for p in leaves(schema)
            if p.path.startswith(f"{list_path}[].")
        }
    )
    out = []
    for _ in range(draw(st.integers(0, 4))):
        values = draw(st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True))
        tail = draw(st.sampled_from(under))
        out.append(
            (f"{list_path}[{name}={'|'.join(values)}]{tail}", draw(st.sampled_from(ACTIONS)))
        )
    return out


def people(projected: dict[str, Any]) -> list[dict[str, Any]]:
    return list(projected.get("people", []))


@settings(max_examples=60)
@given(data=st.data())
def test_a_selector_governs_the_items_it_picks_and_no_other(data: st.DataObject) -> None:
    """Whatever else the plan says, items of the picked role get the selector's action on what
    it reaches (it beats every unselected path and class), and every other item is projected
    exactly as by the plan without the selector."""
    paths = [info.path for info in leaves(EPISODE)]
    chosen = data.draw(st.lists(st.sampled_from(paths), unique=True, max_size=12))
    fields = [(path, data.draw(st.sampled_from(ACTIONS))) for path in chosen]
    classes = [("identifier", data.draw(st.sampled_from(ACTIONS))), ("risk", "keep")]
    role = data.draw(st.sampled_from(ROLES))
    base = compile_plan(EPISODE, fields, classes, "R-test")
    plan = compile_plan(EPISODE, [*fields, (f"people[role={role}].person", "drop")], classes, "R")
    for item in EPISODE_RECORD["people"]:
        alone = {**EPISODE_RECORD, "people": [item]}
        got = plan.project(alone, TRANSFORMS)
        without = base.project(alone, TRANSFORMS)
        assert {k: v for k, v in got.items() if k != "people"} == {
            k: v for k, v in without.items() if k != "people"
        }
        if item["role"] == role:
            assert all("person" not in out for out in people(got))
            # What the item shows besides its person is as before.
            assert [{k: v for k, v in o.items() if k != "person"} for o in people(got)] == [
                {k: v for k, v in o.items() if k != "person"}
                for o in people(without)
                if set(o) - {"person"}
            ]
        else:
            assert people(got) == people(without)


def test_a_child_is_shown_by_role_and_year_never_by_name() -> None:
    plan = compile_plan(
        EPISODE,
        [
            ("people[].person.date_of_birth", "generalise:year"),
            ("people[role=child].person", "drop"),
            ("people[role=child].person.date_of_birth", "generalise:year"),
        ],
        [("identifier", "keep"), ("risk", "keep")],
        "R",
    )
    out = people(plan.project(EPISODE_RECORD, TRANSFORMS))
    child = next(p for p in out if p["role"] == "child")
    adult = next(p for p in out if p["role"] == "victim")
    assert child == {
        "role": "child",
        "relationship_to_victim": "child",
        "person": {"date_of_birth": 2021},
    }
    assert adult["person"]["given_names"]
    assert adult["person"]["identifiers"]
    assert plan.actions["people[role=child].person.given_names"] == "drop"
    assert (
        plan.sources["people[role=child].person.given_names"]
        == "R fields.people[role=child].person"
    )
    # The variant lists only what differs from the other items' plan.
    assert "people[role=child].role" not in plan.actions
    assert plan.minimised


def test_an_item_whose_variant_releases_nothing_is_left_out() -> None:
    plan = compile_plan(
        EPISODE,
        [("people[role=child|unknown]", "drop")],
        [("identifier", "keep"), ("risk", "keep")],
        "R",
    )
    out = people(plan.project(EPISODE_RECORD, TRANSFORMS))
    assert [p["role"] for p in out] == [
        p["role"] for p in EPISODE_RECORD["people"] if p["role"] != "child"
    ]


def test_a_selector_can_release_what_the_rest_of_the_list_does_not() -> None:
    """The list's node exists for the variant even when no other item releases anything."""
    plan = compile_plan(EPISODE, [("people[role=victim].role", "keep")], [], "R")
    assert people(plan.project(EPISODE_RECORD, TRANSFORMS)) == [{"role": "victim"}]
    assert "risk" in plan.released_classes


def test_a_forbid_drops_a_leaf_in_every_variant() -> None:
    plan = compile_plan(
        EPISODE,
        [("people[role=child].person.given_names", "keep"), ("people[].role", "keep")],
        [],
        "R",
    )
    assert people(plan.project(EPISODE_RECORD, TRANSFORMS))[2]["person"] == {
        "given_names": "Test Child"
    }
    forbidden = with_forbidden(plan, EPISODE, {"people[].person.given_names": "F"})
    assert all("person" not in p for p in people(forbidden.project(EPISODE_RECORD, TRANSFORMS)))
    assert forbidden.actions["people[role=child].person.given_names"] == "drop"
    assert forbidden.sources["people[role=child].person.given_names"] == "F (forbid)"


def test_a_pseudonymising_variant_makes_the_plan_recipient_specific() -> None:
    plan = compile_plan(
        EPISODE, [("people[role=child].person.identifiers[].value", "pseudonymise")], [], "R"
    )
    assert plan.recipient_specific
    assert not compile_plan(EPISODE, [("people[].role", "keep")], [], "R").recipient_specific


def test_two_selecting_fields_on_one_list_are_refused() -> None:
    with pytest.raises(ValueError, match="one selecting field per list"):
        compile_plan(
            EPISODE,
            [
                ("people[role=child].person", "drop"),
                ("people[relationship_to_victim=child].role", "keep"),
            ],
            [],
            "R",
        )
