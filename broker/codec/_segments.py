"""Writing one record in parts: Avro's binary encoding of a record is the concatenation of
its fields' encodings, in schema order, with nothing between them (Avro specification,
"Binary Encoding": "A record is encoded by encoding the values of its fields in the order
that they are declared").

So a record schema can be cut into consecutive runs of fields, each run encoded on its own
as a record of just those fields, and the parts joined: the bytes are exactly what
:func:`~broker.codec.encode` writes for the whole record. The broker uses this on its hot
path, where most of an output record repeats from one event or one recipient to the next
(the decision's route, rules and field actions; the event's id and source): those parts are
encoded once and reused, and only what changes is encoded per record.

An array can likewise be written from items encoded one by one: a block count, the items,
and the zero count that ends the array (:func:`array_of`); a part that is one string field is
its length and its UTF-8 bytes (:func:`string_of`), and a nullable one the union's branch
first (:func:`nullable_string_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from itertools import pairwise
from typing import Any

from fastavro import parse_schema, schemaless_writer

from broker.codec._codec import encode
from broker.codec._errors import InvalidRecord
from broker.codec._model import Schema


class Segments:
    """``schema``'s fields cut before each field named in ``starts``.

    ``encode(i, values)`` writes part ``i`` from ``values`` (only that part's fields are read);
    joining every part's bytes in order gives the whole record's encoding.
    """

    def __init__(self, schema: Schema, starts: Sequence[str]) -> None:
        definition = schema.definition
        fields = list(definition["fields"])
        names = [f["name"] for f in fields]
        cuts = [0]
        for start in starts:
            if start not in names:
                raise ValueError(f"{schema.label} has no field {start!r}")
            cuts.append(names.index(start))
        if cuts != sorted(set(cuts)):
            raise ValueError("segment starts must follow the schema's field order")
        cuts.append(len(fields))
        self.schema = schema
        self.fields: tuple[tuple[str, ...], ...] = tuple(
            tuple(names[a:b]) for a, b in pairwise(cuts)
        )
        self._parsed: list[Any] = []
        named: dict[str, Any] = {}
        for index, (a, b) in enumerate(pairwise(cuts)):
            part = {
                "type": "record",
                "name": f"{definition['name']}_part{index}",
                "fields": fields[a:b],
            }
            # Named types defined in an earlier part are known to the later ones.
            self._parsed.append(parse_schema(part, named_schemas=named))

    def __len__(self) -> int:
        return len(self.fields)

    def encode(self, index: int, values: Mapping[str, Any]) -> bytes:
        """Part ``index`` of a record whose fields ``values`` holds.

        ``values`` may hold other parts' fields too (they are ignored), so one record dict can
        serve every part; a field of this part that is missing takes its default, as in a
        whole-record encode.
        """
        buffer = BytesIO()
        try:
            schemaless_writer(buffer, self._parsed[index], values)
        except Exception:  # the same precise, value-free error the whole-record encode gives
            encode(self.schema, _complete(self.schema, values))
            raise InvalidRecord(
                f"{self.schema.label}: part {index} rejected by the Avro writer"
            ) from None
        return buffer.getvalue()


def _complete(schema: Schema, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every missing field as null, so the whole-record check names the
    field of this part that is wrong rather than the absent ones of other parts."""
    out = {f["name"]: None for f in schema.definition["fields"]}
    out.update(values)
    return out


def zigzag_long(value: int) -> bytes:
    """An Avro ``long``: zig-zag, then variable-length base-128, low bits first."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def string_of(text: str) -> bytes:
    """An Avro ``string``: the length of its UTF-8 bytes as a ``long``, then the bytes."""
    data = text.encode()
    size = len(data)
    if size < 64:  # zig-zag 2n fits the first 7 bits: one byte (most strings here)
        return bytes((size << 1,)) + data
    return zigzag_long(size) + data


def nullable_string_of(text: str | None) -> bytes:
    """A ``["null", "string"]`` union: branch 0 and nothing more, or branch 1 and the string."""
    return b"\x00" if text is None else b"\x02" + string_of(text)


def array_of(items: Sequence[bytes]) -> bytes:
    """An Avro array from its items' encodings: one block of ``len(items)``, then the end."""
    if not items:
        return b"\x00"
    return zigzag_long(len(items)) + b"".join(items) + b"\x00"


class ArrayItems:
    """Encodes one item of the array field ``field`` of ``schema`` (see :func:`array_of`)."""

    def __init__(self, schema: Schema, field: str) -> None:
        named: dict[str, Any] = {}
        parse_schema(dict(schema.definition), named_schemas=named)
        (spec,) = [f for f in schema.definition["fields"] if f["name"] == field]
        items = spec["type"]["items"]
        self.schema = schema
        self._field = field
        self._parsed = parse_schema(items if isinstance(items, dict) else named[items])

    def encode(self, values: Mapping[str, Any]) -> bytes:
        buffer = BytesIO()
        try:
            schemaless_writer(buffer, self._parsed, values, strict_allow_default=True)
        except Exception:
            raise InvalidRecord(
                f"{self.schema.label}: an item of {self._field} rejected by the Avro writer"
            ) from None
        return buffer.getvalue()
