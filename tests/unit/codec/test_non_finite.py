"""NaN and the infinities are refused in float and double fields: by validate and encode (so an
adapter cannot publish one), and by decode (so the broker quarantines a record holding one as
``malformed_avro``). JSON, which recipients receive events as, has no such numbers. Messages
name the field, never the value."""

from __future__ import annotations

import io
import json
import math
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import InMemoryConnection, InvalidEvent
from broker.codec import (
    InvalidRecord,
    MalformedRecord,
    Schema,
    decode,
    encode,
    from_json,
    validate,
)
from broker.codec._finite import non_finite_check
from broker.codec._types import collect_names
from broker.runtime import Accepted, Rejected
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import AGENCIES, FakeClock, example, make_client
from tests.unit.runtime.test_intake import ROOT, SCHEMAS, TOPIC, World

INDICATOR = SCHEMAS.latest("OutcomeIndicator")
EXAMPLE = json.loads((ROOT / "schemas" / "examples" / "OutcomeIndicator.json").read_text())
NON_FINITE = [math.nan, math.inf, -math.inf]


def indicator(value: Any, event_id: str | None = None) -> dict[str, Any]:
    """The example OutcomeIndicator as a record, with ``value`` as its value."""
    doc = json.loads(json.dumps(EXAMPLE))
    doc["header"]["event_id"] = event_id or str(uuid.uuid4())
    return from_json(INDICATOR, doc | {"value": value})


def raw_encode(schema: Schema, record: dict[str, Any]) -> bytes:
    """``record`` written by fastavro itself, as a sender that bypasses the codec would."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.parsed, record)
    return buffer.getvalue()


def assert_value_free(message: str, value: float) -> None:
    for text in {repr(value), str(value), json.dumps(value)}:  # nan, inf, NaN, Infinity
        assert text.lower() not in message.lower(), message


@settings(max_examples=200, deadline=None)
@given(value=st.floats())
def test_finite_doubles_round_trip_and_non_finite_ones_are_refused(value: float) -> None:
    record = indicator(value)
    if math.isfinite(value):
        validate(INDICATOR, record)
        assert decode(encode(INDICATOR, record), INDICATOR)["value"] == value
        return
    with pytest.raises(InvalidRecord) as invalid:
        validate(INDICATOR, record)
    with pytest.raises(InvalidRecord) as unencodable:
        encode(INDICATOR, record)
    with pytest.raises(MalformedRecord) as undecodable:
        decode(raw_encode(INDICATOR, record), INDICATOR)
    for message in (str(invalid.value), str(unencodable.value), str(undecodable.value)):
        assert message.startswith("nz.tiaki.OutcomeIndicator v1: field 'value': ")
        assert_value_free(message, value)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-inf"])
def test_a_string_the_avro_writer_would_turn_into_a_non_finite_double_is_refused(
    text: str,
) -> None:
    # fastavro's writer converts a str for a double as float() does.
    with pytest.raises(InvalidRecord, match=r"field 'value': not a finite number$"):
        encode(INDICATOR, indicator(text))


def _schema(definition: dict[str, Any]) -> Schema:
    return Schema(
        name=definition["name"],
        version=1,
        kind="type",
        definition=definition,
        parsed=fastavro.parse_schema(definition),
        canonical_form="",
        fingerprint=b"",
        path=Path("synthetic.avsc"),
        practice_step=None,
        names=collect_names(definition),
    )


READING = {
    "type": "record",
    "name": "Reading",
    "fields": [{"name": "level", "type": "float"}, {"name": "note", "type": "string"}],
}
NESTED = _schema(
    {
        "type": "record",
        "name": "Synthetic",
        "fields": [
            {"name": "label", "type": "string"},
            {"name": "readings", "type": {"type": "array", "items": READING}},
            {"name": "totals", "type": {"type": "map", "values": "double"}},
            {"name": "ratio", "type": ["null", "double"], "default": None},
        ],
    }
)


def nested(level: float = 1.5, total: float = 2.5, ratio: float | None = 0.5) -> dict[str, Any]:
    return {
        "label": "x",
        "readings": [{"level": 0.0, "note": "a"}, {"level": level, "note": "b"}],
        "totals": {"a": 1.0, "b": total},
        "ratio": ratio,
    }


@settings(max_examples=100, deadline=None)
@given(
    level=st.floats(width=32, allow_nan=False, allow_infinity=False),
    total=st.floats(allow_nan=False, allow_infinity=False),
    ratio=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_finite_floats_at_any_depth_round_trip(
    level: float, total: float, ratio: float | None
) -> None:
    record = nested(level, total, ratio)
    validate(NESTED, record)
    assert decode(encode(NESTED, record), NESTED) == record


@pytest.mark.parametrize("bad", NON_FINITE, ids=repr)
@pytest.mark.parametrize(
    ("where", "path"),
    [("level", "readings[].level"), ("total", "totals{}"), ("ratio", "ratio")],
)
def test_non_finite_values_at_any_depth_are_refused_by_path(
    bad: float, where: str, path: str
) -> None:
    record = nested(**{where: bad})
    for refuse in (
        lambda: validate(NESTED, record),
        lambda: encode(NESTED, record),
        lambda: decode(raw_encode(NESTED, record), NESTED),
    ):
        with pytest.raises((InvalidRecord, MalformedRecord)) as refused:
            refuse()
        assert f"field '{path}': not a finite number" in str(refused.value)
        assert_value_free(str(refused.value), bad)


@pytest.mark.parametrize("bad", NON_FINITE, ids=repr)
def test_the_writer_s_tuple_notation_for_a_union_value_does_not_hide_one(bad: float) -> None:
    # fastavro's writer reads a tuple at a union as (type name, value).
    with pytest.raises(InvalidRecord, match=r"field 'ratio': not a finite number$"):
        encode(NESTED, nested(ratio=("double", bad)))  # type: ignore[arg-type]
    written = encode(NESTED, nested(ratio=("double", 0.25)))  # type: ignore[arg-type]
    assert decode(written, NESTED)["ratio"] == 0.25


@pytest.mark.parametrize("big", [2.0**128, 1e300, 10**40])
def test_a_float_the_writer_would_round_to_infinity_is_refused(big: float) -> None:
    record = nested(level=big)
    for refuse in (lambda: validate(NESTED, record), lambda: encode(NESTED, record)):
        with pytest.raises(InvalidRecord, match=r"'readings\[\]\.level': out of range for float"):
            refuse()
    largest = float.fromhex("0x1.fffffep+127")  # the largest finite 32-bit float
    assert decode(encode(NESTED, nested(level=largest)), NESTED)["readings"][1]["level"] == largest


def test_only_schemas_with_a_float_or_double_are_checked() -> None:
    checked = {s.short_name for s in SCHEMAS.events() if non_finite_check(s) is not None}
    assert checked == {"OutcomeIndicator"}


async def test_the_adapter_refuses_to_publish_a_non_finite_value(tmp_path: Path) -> None:
    connection = InMemoryConnection(InMemoryCluster.provisioned(AGENCIES))
    async with make_client("police", connection, FakeClock(), tmp_path) as client:
        for bad, value in [(v, v) for v in NON_FINITE] + [("NaN", math.nan)]:
            document = example("OutcomeIndicator") | {"value": bad}
            with pytest.raises(InvalidEvent, match=r"field 'value': not a finite number") as no:
                await client.publish("OutcomeIndicator", document)
            assert_value_free(str(no.value), value)
        assert client.statistics().pending == 0
        await client.publish("OutcomeIndicator", example("OutcomeIndicator") | {"value": 0.25})
        assert client.statistics().pending == 1


@pytest.mark.parametrize("bad", NON_FINITE, ids=repr)
def test_intake_quarantines_a_non_finite_value_as_malformed_avro(bad: float) -> None:
    world = World()
    event_id = str(uuid.uuid4())
    sealed = world.seal(
        raw_encode(INDICATOR, indicator(bad, event_id)),
        event_id=event_id,
        fingerprint=INDICATOR.fingerprint,
    )
    outcome = world.admit(sealed, TOPIC)
    assert isinstance(outcome, Rejected), outcome
    assert (outcome.reason, outcome.event_id, outcome.event_type) == (
        "malformed_avro",
        event_id,
        "OutcomeIndicator",
    )
    assert "field 'value': not a finite number" in outcome.detail
    assert_value_free(outcome.detail, bad)


def test_intake_admits_the_same_record_with_a_finite_value() -> None:
    world = World()
    event_id = str(uuid.uuid4())
    sealed = world.seal(
        raw_encode(INDICATOR, indicator(0.25, event_id)),
        event_id=event_id,
        fingerprint=INDICATOR.fingerprint,
    )
    outcome = world.admit(sealed, TOPIC)
    assert isinstance(outcome, Accepted), outcome
    assert outcome.event["value"] == 0.25
