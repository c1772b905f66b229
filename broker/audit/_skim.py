"""Reading a few fields out of Avro bytes without decoding the rest.

Why not fastavro here: indexing needs about a tenth of an audit record's values (when, what,
who received it, about whom), but a full decode builds every string, list, map and nested
record, and that was most of the index's cost. A :class:`Skim` is compiled once per writer
schema into closures that read the wanted fields and step over the others by their encoded
lengths, so a skipped string is a length read and an addition, never a ``str``.

It is not a second decoder: it returns only the fields asked for, in fastavro's own
representation of a schema without logical types (longs for times, text for uuids), and the
property tests hold it to exactly what fastavro decodes, for every AuditRecord version and for
a schema using every Avro type. Whatever fastavro would decode fully (the rows a query
returns) still goes through fastavro.

Bytes that do not decode -- truncated, a bad union branch, an enum index out of range, bad
UTF-8, or bytes left over after the record -- raise :class:`SkimError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Union

#: (bytes, position) -> (value, next position)
Reader = Callable[[bytes, int], tuple[Any, int]]
#: (bytes, position) -> next position
Skipper = Callable[[bytes, int], int]
#: Which fields to read: a field name to ``True`` (all of its value) or, for a record (or an
#: array or map of records, or a union with a record branch), to the fields wanted of it.
Wanted = Mapping[str, Union[bool, "Wanted"]]

_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


class SkimError(ValueError):
    """The bytes are not an encoding of the schema."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint (Avro int and long)."""
    b = data[pos]
    if b < 0x80:  # most lengths, counts, indexes and small numbers: one byte
        return (b >> 1) ^ -(b & 1), pos + 1
    n = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = data[pos]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos + 1
        shift += 7
        if shift > 63:
            raise SkimError("varint longer than ten bytes")


def _skip_long(data: bytes, pos: int) -> int:
    return _long(data, pos)[1]


def _extent(data: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of a length-prefixed value (bytes, string)."""
    n, pos = _long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise SkimError("length past the end of the record")
    return pos, end


def _count(data: bytes, pos: int) -> tuple[int, int]:
    """An array or map block's item count; a negative count is followed by the block's size
    in bytes, which a reader of every item does not need."""
    count, pos = _long(data, pos)
    if count < 0:
        return -count, _skip_long(data, pos)
    return count, pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    start, end = _extent(data, pos)
    return data[start:end].decode(), end


def _bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    start, end = _extent(data, pos)
    return data[start:end], end


def _skip_extent(data: bytes, pos: int) -> int:
    return _extent(data, pos)[1]


def _fixed_width(width: int) -> Skipper:
    def skip(data: bytes, pos: int) -> int:
        end = pos + width
        if end > len(data):
            raise SkimError("value past the end of the record")
        return end

    return skip


def _null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _skip_nothing(data: bytes, pos: int) -> int:
    return pos


def _boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise SkimError("boolean byte not 0 or 1")
    return b == 1, pos + 1


def _struct_reader(layout: struct.Struct) -> Reader:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        end = pos + layout.size
        if end > len(data):
            raise SkimError("value past the end of the record")
        return layout.unpack_from(data, pos)[0], end

    return read


_SKIP_OPT_STR, _READ_OPT_STR, _SKIP_STRINGS, _READ_STR, _SKIP_STR = range(5)
_READ_LONG, _SKIP_LONG, _READ_ENUM, _READ_STRINGS, _CALL, _SKIP_CALL = range(5, 11)


def _run(plan: tuple[tuple[int, Any], ...], data: bytes, pos: int, out: list[Any]) -> int:
    """Read or step over a record's fields by ``plan``; append what is read to ``out``.

    Why an interpreter with the varint inlined: a Python call per field was most of the cost,
    and most fields are optional strings or lists of strings whose lengths fit one byte. A
    length that runs past the end is caught when the record is done (positions only grow,
    so the end check sees any overrun); a negative one by :func:`_long` here.
    """
    for op, arg in plan:
        if op == _SKIP_OPT_STR:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            if b != 2:
                raise SkimError("union branch out of range")
            n = data[pos + 1]
            if n < 0x80 and not n & 1:
                pos += 2 + (n >> 1)
            else:
                pos = _skip_extent(data, pos + 1)
        elif op == _READ_OPT_STR:
            b = data[pos]
            if b == 0:
                out.append(None)
                pos += 1
                continue
            if b != 2:
                raise SkimError("union branch out of range")
            n = data[pos + 1]
            if n < 0x80 and not n & 1:
                start, pos = pos + 2, pos + 2 + (n >> 1)
            else:
                start, pos = _extent(data, pos + 1)
            out.append(data[start:pos].decode())
        elif op == _SKIP_STRINGS:  # an array (arg 1) or a map (arg 2) of strings
            while True:
                count = data[pos]
                if count < 0x80 and not count & 1:
                    count >>= 1
                    pos += 1
                else:
                    count, pos = _count(data, pos)
                if count == 0:
                    break
                for _ in range(count * arg):
                    n = data[pos]
                    if n < 0x80 and not n & 1:
                        pos += 1 + (n >> 1)
                    else:
                        pos = _skip_extent(data, pos)
        elif op == _READ_STR:
            n = data[pos]
            if n < 0x80 and not n & 1:
                start, pos = pos + 1, pos + 1 + (n >> 1)
            else:
                start, pos = _extent(data, pos)
            out.append(data[start:pos].decode())
        elif op == _SKIP_STR:
            pos = _skip_extent(data, pos)
        elif op == _READ_LONG:
            value, pos = _long(data, pos)
            out.append(value)
        elif op == _SKIP_LONG:
            pos = _skip_long(data, pos)
        elif op == _READ_ENUM:
            i, pos = _long(data, pos)
            if not 0 <= i < len(arg):
                raise SkimError("enum index out of range")
            out.append(arg[i])
        elif op == _READ_STRINGS:
            items: list[str] = []
            while True:
                count = data[pos]
                if count < 0x80 and not count & 1:
                    count >>= 1
                    pos += 1
                else:
                    count, pos = _count(data, pos)
                if count == 0:
                    break
                for _ in range(count):
                    n = data[pos]
                    if n < 0x80 and not n & 1:
                        start, pos = pos + 1, pos + 1 + (n >> 1)
                    else:
                        start, pos = _extent(data, pos)
                    items.append(data[start:pos].decode())
            out.append(items)
        elif op == _CALL:
            value, pos = arg(data, pos)
            out.append(value)
        else:  # _SKIP_CALL
            pos = arg(data, pos)
    return pos


class _Compiler:
    """Builds readers and skippers for one writer schema (named types resolved as Avro says:
    a name defined once, referenced later by its full or its namespace-relative name)."""

    def __init__(self) -> None:
        self._named: dict[str, Any] = {}
        self._open: set[int] = set()  # records being compiled: a recursive type has no end

    def reader(self, schema: Any, namespace: str, wanted: Any = True) -> Reader:
        schema = self._resolve(schema, namespace)
        if isinstance(schema, list):
            return self._union_reader(schema, namespace, wanted)
        kind = schema if isinstance(schema, str) else schema.get("type")
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return {
                "null": _null,
                "boolean": _boolean,
                "int": _long,
                "long": _long,
                "float": _struct_reader(_FLOAT),
                "double": _struct_reader(_DOUBLE),
                "bytes": _bytes,
                "string": _string,
            }[kind]
        if kind == "record":
            return self._record_reader(schema, namespace, wanted)
        if kind == "enum":
            self._define(schema, namespace)
            symbols = tuple(schema["symbols"])

            def read_enum(data: bytes, pos: int) -> tuple[str, int]:
                i, pos = _long(data, pos)
                if not 0 <= i < len(symbols):
                    raise SkimError("enum index out of range")
                return symbols[i], pos

            return read_enum
        if kind == "fixed":
            self._define(schema, namespace)
            skip = _fixed_width(int(schema["size"]))

            def read_fixed(data: bytes, pos: int) -> tuple[bytes, int]:
                end = skip(data, pos)
                return data[pos:end], end

            return read_fixed
        if kind == "array":
            item = self.reader(schema["items"], namespace, wanted)

            def read_array(data: bytes, pos: int) -> tuple[list[Any], int]:
                out: list[Any] = []
                while True:
                    n, pos = _count(data, pos)
                    if n == 0:
                        return out, pos
                    for _ in range(n):
                        value, pos = item(data, pos)
                        out.append(value)

            return read_array
        if kind == "map":
            value_reader = self.reader(schema["values"], namespace, wanted)

            def read_map(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
                out: dict[str, Any] = {}
                while True:
                    n, pos = _count(data, pos)
                    if n == 0:
                        return out, pos
                    for _ in range(n):
                        key, pos = _string(data, pos)
                        out[key], pos = value_reader(data, pos)

            return read_map
        raise SkimError(f"unsupported schema type {kind!r}")

    def skipper(self, schema: Any, namespace: str) -> Skipper:
        schema = self._resolve(schema, namespace)
        if isinstance(schema, list):
            branches = [self.skipper(b, namespace) for b in schema]

            def skip_union(data: bytes, pos: int) -> int:
                i, pos = _long(data, pos)
                if not 0 <= i < len(branches):
                    raise SkimError("union branch out of range")
                return branches[i](data, pos)

            return skip_union
        kind = schema if isinstance(schema, str) else schema.get("type")
        if kind == "null":
            return _skip_nothing
        if kind == "boolean":
            return _fixed_width(1)
        if kind in ("int", "long"):
            return _skip_long
        if kind == "float":
            return _fixed_width(4)
        if kind == "double":
            return _fixed_width(8)
        if kind in ("bytes", "string"):
            return _skip_extent
        if kind == "enum":
            self._define(schema, namespace)
            return _skip_long
        if kind == "fixed":
            self._define(schema, namespace)
            return _fixed_width(int(schema["size"]))
        if kind == "record":
            read = self._record_reader(schema, namespace, {})
            return lambda data, pos: read(data, pos)[1]
        if kind in ("array", "map"):
            is_map = kind == "map"
            item = self.skipper(schema["values" if is_map else "items"], namespace)

            def skip_blocks(data: bytes, pos: int) -> int:
                while True:
                    n, pos = _long(data, pos)
                    if n == 0:
                        return pos
                    if n < 0:  # the block's byte size lets it be stepped over whole
                        size, pos = _long(data, pos)
                        end = pos + size
                        if size < 0 or end > len(data):
                            raise SkimError("block past the end of the record")
                        pos = end
                        continue
                    for _ in range(n):
                        if is_map:
                            pos = _skip_extent(data, pos)
                        pos = item(data, pos)

            return skip_blocks
        raise SkimError(f"unsupported schema type {kind!r}")

    def _union_reader(self, branches: list[Any], namespace: str, wanted: Any) -> Reader:
        readers = [self.reader(b, namespace, wanted) for b in branches]
        if len(readers) == 2 and readers[0] is _null:  # ["null", T]: the common optional
            present = readers[1]

            def read_optional(data: bytes, pos: int) -> tuple[Any, int]:
                b = data[pos]
                if b == 0:
                    return None, pos + 1
                if b == 2:
                    return present(data, pos + 1)
                raise SkimError("union branch out of range")

            return read_optional

        def read_union(data: bytes, pos: int) -> tuple[Any, int]:
            i, pos = _long(data, pos)
            if not 0 <= i < len(readers):
                raise SkimError("union branch out of range")
            return readers[i](data, pos)

        return read_union

    def _record_reader(self, schema: Mapping[str, Any], namespace: str, wanted: Any) -> Reader:
        namespace = self._define(schema, namespace)
        if id(schema) in self._open:
            raise SkimError("recursive types are not supported")
        self._open.add(id(schema))
        fields = schema["fields"]
        if wanted is True:
            wanted = {f["name"]: True for f in fields}
        ops: list[tuple[int, Any]] = []
        names: list[str] = []
        for field in fields:
            want = wanted.get(field["name"])
            if want:
                names.append(field["name"])
            ops.append(self._op(field["type"], namespace, want))
        self._open.discard(id(schema))
        plan, keys = tuple(ops), tuple(names)

        def read_record(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
            out: list[Any] = []
            pos = _run(plan, data, pos, out)
            return dict(zip(keys, out, strict=True)), pos

        return read_record

    def _op(self, schema: Any, namespace: str, want: Any) -> tuple[int, Any]:
        """How a record field is read (``want``) or stepped over: the commonest shapes by the
        interpreter's own opcodes, anything else by a compiled closure."""
        resolved = self._resolve(schema, namespace)
        kind = resolved if isinstance(resolved, str) else None
        if isinstance(resolved, dict):
            kind = resolved.get("type")
            inner = resolved.get("items" if kind == "array" else "values")
            if kind in ("array", "map") and self._resolve(inner, namespace) == "string":
                kind = f"{kind}-of-string"
        if resolved == ["null", "string"]:
            kind = "optional-string"
        if kind in ("int", "long"):
            return (_READ_LONG, None) if want else (_SKIP_LONG, None)
        if kind == "string":
            return (_READ_STR, None) if want else (_SKIP_STR, None)
        if kind == "optional-string":
            return (_READ_OPT_STR, None) if want else (_SKIP_OPT_STR, None)
        if kind == "enum" and want:
            self._define(resolved, namespace)
            return _READ_ENUM, tuple(resolved["symbols"])
        if kind == "array-of-string":
            return (_READ_STRINGS, None) if want else (_SKIP_STRINGS, 1)
        if kind == "map-of-string" and not want:
            return _SKIP_STRINGS, 2  # a map entry is two strings: its key and its value
        if want:
            return _CALL, self.reader(schema, namespace, want)
        return _SKIP_CALL, self.skipper(schema, namespace)

    def _define(self, schema: Mapping[str, Any], namespace: str) -> str:
        """Register a named type; return the namespace its fields are read in."""
        name = str(schema["name"])
        space = str(schema.get("namespace", namespace)) if "." not in name else ""
        full = f"{space}.{name}" if space else name
        self._named[full] = schema
        return full.rpartition(".")[0]

    def _resolve(self, schema: Any, namespace: str) -> Any:
        if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
            return schema["type"]  # {"type": {...}} wraps a schema
        if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
            return schema["type"]  # a primitive with attributes (logicalType and the like)
        if not isinstance(schema, str) or schema in _PRIMITIVES:
            return schema
        for full in (f"{namespace}.{schema}" if namespace else schema, schema):
            if full in self._named:
                return self._named[full]
        raise SkimError(f"unknown named type {schema!r}")


class Skim:
    """The ``wanted`` fields of records written with one schema (a record schema's JSON).

    ``Skim(schema, {"recorded_at": True, "decisions": {"recipient": True}})(value)`` gives
    ``{"recorded_at": ..., "decisions": [{"recipient": ...}, ...]}``: each wanted field as
    fastavro decodes it, nested records cut down to the fields wanted of them.
    """

    def __init__(self, schema: Mapping[str, Any], wanted: Wanted) -> None:
        if schema.get("type") != "record":
            raise SkimError("a skim reads records")
        self._read = _Compiler().reader(dict(schema), "", wanted)

    def __call__(self, value: bytes) -> dict[str, Any]:
        try:
            record, end = self._read(value, 0)
        except IndexError:
            raise SkimError("record truncated") from None
        except UnicodeDecodeError:
            raise SkimError("string not UTF-8") from None
        if end > len(value):  # a length ran past the end (positions only grow)
            raise SkimError("record truncated")
        if end < len(value):
            raise SkimError("bytes left over after the record")
        return record  # type: ignore[no-any-return]
