"""Encoding and decoding records: schemaless Avro, the writer named by fingerprint.

The hot path is fastavro's C writer and reader over schemas parsed once at load. Records carry
no schema: the envelope carries the writer's fingerprint and the reader picks its own version,
so a producer on v1 and a consumer on v2 interoperate by Avro schema resolution.

Nothing here does I/O, and no fastavro exception escapes: failures become
:class:`InvalidRecord` (encoding), :class:`MalformedRecord` (decoding) or
:class:`IncompatibleSchema` (resolution). Messages name fields, never values.

Both directions refuse NaN and the infinities in ``float`` and ``double`` fields, which Avro
carries but the JSON recipients receive events as cannot (see :mod:`broker.codec._finite`);
a schema without such fields pays nothing for it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from broker.codec._errors import IncompatibleSchema, InvalidRecord, MalformedRecord
from broker.codec._finite import non_finite_check, number_problem
from broker.codec._model import Schema
from broker.codec._types import Names, describe, resolve

_INT = (-(2**31), 2**31 - 1)
_LONG = (-(2**63), 2**63 - 1)


def encode(schema: Schema, record: Mapping[str, Any]) -> bytes:
    """Encode ``record`` with ``schema`` as schemaless Avro.

    Unknown keys, missing required fields, wrong types and a ``float`` or ``double`` that is
    NaN, infinite or out of its type's range raise :class:`InvalidRecord` naming the schema and
    the field. For events, ``header.event_type`` must equal the schema's name and
    ``header.event_id`` must be a UUID, since the envelope binds both.
    """
    if schema.kind == "event":
        _check_header(schema, record)
    buffer = BytesIO()
    try:
        schemaless_writer(buffer, schema.parsed, record, strict_allow_default=True)
    except Exception as exc:  # the C writer raises TypeError, ValueError, KeyError, ...
        validate(schema, record)  # raises with a precise, value-free message
        raise InvalidRecord(
            f"{schema.label}: record rejected by the Avro writer ({type(exc).__name__})"
        ) from None
    check = non_finite_check(schema)
    if check is not None:
        # After the writer, so the record has the shape the schema asks for.
        try:
            found = check(record)
        except Exception:  # a shape the writer takes and the check does not follow
            validate(schema, record)  # complete for every shape it accepts, finiteness included
            found = None
        if found is not None:
            raise InvalidRecord(f"{schema.label}: field '{found[0]}': {found[1]}")
    return buffer.getvalue()


def decode(data: bytes, writer: Schema, reader: Schema | None = None) -> dict[str, Any]:
    """Decode one record written with ``writer``, resolved to ``reader`` (default: the writer).

    Raises :class:`MalformedRecord` if the bytes are not exactly one record of the writer
    schema or hold a NaN or infinite ``float`` or ``double``, and :class:`IncompatibleSchema` if
    the two schemas cannot be resolved.
    """
    buffer = BytesIO(data)
    target = None if reader is None or reader is writer else reader.parsed
    try:
        record = schemaless_reader(buffer, writer.parsed, target)
    except SchemaResolutionError:
        assert reader is not None  # resolution errors need two schemas
        raise IncompatibleSchema(
            f"{reader.label} cannot read data written with {writer.label}"
        ) from None
    except Exception as exc:  # truncated or corrupt input: EOFError, IndexError, UnicodeError, ...
        raise MalformedRecord(
            f"{writer.label}: bytes are not a valid record ({type(exc).__name__})"
        ) from None
    if buffer.tell() != len(data):
        raise MalformedRecord(
            f"{writer.label}: {len(data) - buffer.tell()} bytes left after the record"
        )
    if not isinstance(record, dict):
        raise MalformedRecord(f"{writer.label}: decoded value is not a record")
    shape = writer if reader is None else reader
    check = non_finite_check(shape)
    if check is not None:
        found = check(record)
        if found is not None:
            raise MalformedRecord(f"{shape.label}: field '{found[0]}': {found[1]}")
    return record


def validate(schema: Schema, record: Any) -> None:
    """Check ``record`` against ``schema`` without encoding; raise :class:`InvalidRecord`.

    Stricter than the writer where the writer is lenient: UUID strings must parse, timestamps
    must be timezone-aware, ints and longs must be in range, and floats and doubles must be
    finite numbers (a float within its range).
    """
    problem = _check(schema.definition, record, schema.names, "")
    if problem is not None:
        raise InvalidRecord(f"{schema.label}: {problem}")
    if schema.kind == "event":
        _check_header(schema, record)


def _check_header(schema: Schema, record: object) -> None:
    header = record.get("header") if isinstance(record, Mapping) else None
    if not isinstance(header, Mapping):
        raise InvalidRecord(f"{schema.label}: field 'header': expected record nz.tiaki.EventHeader")
    if header.get("event_type") != schema.name:
        raise InvalidRecord(f"{schema.label}: field 'header.event_type': must be {schema.name!r}")
    event_id = header.get("event_id")
    if not isinstance(event_id, uuid.UUID) and not _is_uuid(event_id):
        raise InvalidRecord(f"{schema.label}: field 'header.event_id': expected a UUID")


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _where(path: str) -> str:
    return f"field '{path}'" if path else "record"


def _check(node: Any, value: Any, names: Names, path: str) -> str | None:
    """Return a value-free description of the first mismatch, or None."""
    node = resolve(node, names)
    got = type(value).__name__
    if isinstance(node, list):
        for branch in node:
            if _check(branch, value, names, path) is None:
                return None
        if value is None:
            return f"{_where(path)}: expected {describe(node, names)}, got None"
        non_null = [b for b in node if resolve(b, names) != "null"]
        if len(non_null) == 1:
            return _check(non_null[0], value, names, path)
        return f"{_where(path)}: expected {describe(node, names)}, got {got}"
    kind = node if isinstance(node, str) else node["type"]
    logical = None if isinstance(node, str) else node.get("logicalType")
    expected = describe(node, names)
    mismatch = f"{_where(path)}: expected {expected}, got {got}"
    if kind == "null":
        return None if value is None else mismatch
    if kind == "boolean":
        return None if isinstance(value, bool) else mismatch
    if kind in ("int", "long"):
        if logical == "date" and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return None
        if logical in ("timestamp-millis", "timestamp-micros") and isinstance(value, dt.datetime):
            return (
                None
                if value.tzinfo is not None
                else f"{_where(path)}: timestamp must be timezone-aware"
            )
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = _INT if kind == "int" else _LONG
            return None if low <= value <= high else f"{_where(path)}: {kind} out of range"
        return mismatch
    if kind in ("float", "double"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            problem = number_problem(kind, value)
            return None if problem is None else f"{_where(path)}: {problem}"
        return mismatch
    if kind == "string":
        if logical == "uuid":
            return None if isinstance(value, uuid.UUID) or _is_uuid(value) else mismatch
        return None if isinstance(value, str) else mismatch
    if kind == "bytes":
        return None if isinstance(value, bytes | bytearray) else mismatch
    if kind == "fixed":
        ok = isinstance(value, bytes | bytearray) and len(value) == node["size"]
        return None if ok else mismatch
    if kind == "enum":
        if not isinstance(value, str):
            return mismatch
        return (
            None if value in node["symbols"] else f"{_where(path)}: not a symbol of {node['name']}"
        )
    if kind == "array":
        if not isinstance(value, list | tuple):
            return mismatch
        for item in value:
            problem = _check(node["items"], item, names, f"{path}[]")
            if problem is not None:
                return problem
        return None
    if kind == "map":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return mismatch
        for item in value.values():
            problem = _check(node["values"], item, names, f"{path}{{}}")
            if problem is not None:
                return problem
        return None
    if kind in ("record", "error"):
        if not isinstance(value, Mapping):
            return mismatch
        known = {fld["name"] for fld in node["fields"]}
        extra = [k for k in value if k not in known]
        if extra:
            prefix = f"{path}." if path else ""
            return f"field '{prefix}{extra[0]}': not in the schema"
        for fld in node["fields"]:
            sub = f"{path}.{fld['name']}" if path else fld["name"]
            if fld["name"] not in value:
                if "default" in fld:
                    continue
                return f"field '{sub}': required and missing"
            problem = _check(fld["type"], value[fld["name"]], names, sub)
            if problem is not None:
                return problem
        return None
    return mismatch
