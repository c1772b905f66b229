"""Plain JSON forms of records, for examples, fixtures and people reading records.

Avro's own JSON encoding wraps every union value in a type tag; these forms do not, because every
union in a Tiaki schema is ``["null", T]``. Timestamps are ISO 8601 in UTC with a ``Z``, dates
are ``YYYY-MM-DD`` and UUIDs are strings; everything else is as JSON has it. :func:`from_json`
gives the same Python types :func:`decode` returns (``datetime``, ``date``, ``uuid.UUID``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from broker.codec._errors import InvalidRecord
from broker.codec._model import Schema
from broker.codec._types import Names, resolve


def from_json(schema: Schema, document: Any) -> dict[str, Any]:
    """Turn a plain JSON document into the Python record :func:`encode` takes.

    Raises :class:`InvalidRecord` naming the field when a timestamp, date or UUID does not parse;
    other mismatches are left for :func:`encode` or :func:`validate` to report.
    """
    record = _convert(schema.definition, document, schema.names, "", _parse)
    if not isinstance(record, dict):
        raise InvalidRecord(f"{schema.label}: a record must be a JSON object")
    return record


def to_json(schema: Schema, record: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a decoded record into plain JSON values (the inverse of :func:`from_json`)."""
    document = _convert(schema.definition, record, schema.names, "", _format)
    assert isinstance(document, dict)  # a record converts to a dict
    return document


def _parse(logical: str, value: Any, path: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if logical in ("timestamp-millis", "timestamp-micros"):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError("naive timestamp")
            # Avro keeps the instant, in UTC: a time that parses with its offset but falls
            # outside years 1 to 9999 in UTC (9999-12-31T23:59:59-01:00) cannot be encoded.
            parsed.astimezone(dt.UTC)
            return parsed
        if logical == "date":
            return dt.date.fromisoformat(value)
        if logical == "uuid":
            return uuid.UUID(value)
    except (ValueError, OverflowError):
        raise InvalidRecord(f"field '{path}': not a valid {logical}") from None
    return value


def _format(logical: str, value: Any, path: str) -> Any:
    if isinstance(value, dt.datetime):
        text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _convert(node: Any, value: Any, names: Names, path: str, leaf: Any) -> Any:
    node = resolve(node, names)
    if value is None:
        return None
    if isinstance(node, list):
        branches = [b for b in node if resolve(b, names) != "null"]
        return _convert(branches[0], value, names, path, leaf) if len(branches) == 1 else value
    if isinstance(node, str):
        return value
    kind = node["type"]
    if kind in ("record", "error") and isinstance(value, Mapping):
        fields = {fld["name"]: fld for fld in node["fields"]}
        prefix = f"{path}." if path else ""
        return {
            key: (
                _convert(fields[key]["type"], item, names, f"{prefix}{key}", leaf)
                if key in fields
                else item
            )
            for key, item in value.items()
        }
    if kind == "array" and isinstance(value, list | tuple):
        return [_convert(node["items"], item, names, f"{path}[]", leaf) for item in value]
    if kind == "map" and isinstance(value, Mapping):
        return {
            k: _convert(node["values"], v, names, f"{path}{{}}", leaf) for k, v in value.items()
        }
    logical = node.get("logicalType")
    return leaf(logical, value, path) if logical else value
