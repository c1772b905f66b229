"""Reading a few fields out of Avro bytes without decoding the rest.

Why not fastavro here: indexing needs about a tenth of an audit record's values (when, what,
who received it, about whom), but a full decode builds every string, list, map and nested
record, and that was most of the index's cost. A :class:`Skim` is compiled once per writer
schema into one generated Python function per record type, straight-line code that reads
the wanted fields and steps over the others by their encoded lengths, so a skipped string
is a length read and an addition, never a ``str``. Rarer shapes (unions of several types,
fixed, float, nested maps) are read by compiled closures the generated code calls.

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


def _span(skip: int, *, keep_start: bool, indent: int = 0) -> str:
    """Code stepping over a length-prefixed value whose length is ``skip`` bytes past ``pos``:
    it sets ``pos`` past the value (and ``start`` to where it begins, if ``keep_start``).

    Lengths of one or two bytes (up to 8,191) are read inline, since almost all are: a
    64-character hash's length takes two. A longer or negative one goes through
    :func:`_extent`, which checks it.
    """

    def at(k: int) -> str:
        return f"pos + {k}" if k else "pos"

    if keep_start:
        one = f"start = {at(skip + 1)}\n    pos = start + (n >> 1)"
        two = f"start = {at(skip + 2)}\n    pos = start + (((n & 0x7F) | (m << 7)) >> 1)"
        other = f"start, pos = _extent(data, {at(skip)})"
    else:
        one = f"pos += {skip + 1} + (n >> 1)"
        two = f"pos += {skip + 2} + (((n & 0x7F) | (m << 7)) >> 1)"
        other = f"pos = _skip_extent(data, {at(skip)})"
    code = f"""
n = data[{at(skip)}]
if n < 0x80 and not n & 1:
    {one}
elif n & 0x81 == 0x80 and (m := data[{at(skip + 1)}]) < 0x80:
    {two}
else:
    {other}"""
    return code.replace("\n", "\n" + " " * indent)


def _blocks(items: str, body: str) -> str:
    """Code running ``body`` ``items`` times per block of an array or a map (``count`` is the
    block's item count), block after block until the empty one that ends it. Block counts
    are read inline when one byte, as nearly all are; an empty array is one zero byte."""
    return f"""
if data[pos] == 0:
    pos += 1
else:
    while True:
        count = data[pos]
        if count < 0x80 and not count & 1:
            count >>= 1
            pos += 1
        else:
            count, pos = _count(data, pos)
        if count == 0:
            break
        for _ in range({items}):{body.replace(chr(10), chr(10) + " " * 12)}"""


#: Source of the field readers a record's generated function is made of, by shape. ``$V`` is
#: where a read value goes and ``$A`` the shape's constant (enum symbols, or a compiled
#: closure). A length that runs past the end is caught when the record is done (positions
#: only grow, so the end check sees any overrun), a negative one by ``_long``.
_CODE: dict[str, str] = {
    "skip-long": """
n = data[pos]
if n < 0x80:
    pos += 1
else:
    pos = _skip_long(data, pos)""",
    "read-long": """
n = data[pos]
if n < 0x80:
    $V = (n >> 1) ^ -(n & 1)
    pos += 1
else:
    $V, pos = _long(data, pos)""",
    "skip-string": _span(0, keep_start=False),
    "read-string": _span(0, keep_start=True) + "\n$V = data[start:pos].decode()",
    "skip-optional-string": f"""
b = data[pos]
if b == 0:
    pos += 1
elif b == 2:{_span(1, keep_start=False, indent=4)}
else:
    raise SkimError("union branch out of range")""",
    "read-optional-string": f"""
b = data[pos]
if b == 0:
    $V = None
    pos += 1
elif b == 2:{_span(1, keep_start=True, indent=4)}
    $V = data[start:pos].decode()
else:
    raise SkimError("union branch out of range")""",
    "read-enum": """
n = data[pos]
if n < 0x80:
    n = (n >> 1) ^ -(n & 1)
    pos += 1
else:
    n, pos = _long(data, pos)
if not 0 <= n < len($A):
    raise SkimError("enum index out of range")
$V = $A[n]""",
    # an array of strings ($A is 1) or a map of strings ($A is 2: a key and a value per entry)
    "skip-strings": _blocks("count * $A", _span(0, keep_start=False)),
    "read-strings": "\n$V = []"
    + _blocks("count", _span(0, keep_start=True) + "\n$V.append(data[start:pos].decode())"),
    # an array of anything else, each item read by the closure $A
    "read-array": "\n$V = []" + _blocks("count", "\nitem, pos = $A(data, pos)\n$V.append(item)"),
    "read-call": "\n$V, pos = $A(data, pos)",
    "skip-call": "\npos = $A(data, pos)",
}
#: What the generated functions may call.
_HELPERS = {
    "_long": _long,
    "_skip_long": _skip_long,
    "_extent": _extent,
    "_skip_extent": _skip_extent,
    "_count": _count,
    "SkimError": SkimError,
}


def _generate(name: str, steps: list[tuple[str, Any, str | None]]) -> Reader:
    """One record's reader as a Python function of straight-line code, one block per field
    (``steps``: shape, its constant, and the field's name if it is wanted).

    Why generated code: interpreting a plan paid a dispatch per field, and a closure call per
    field before that; the generated function pays neither, which halves the skim's cost.
    Nothing from the schema but field names reaches the source, and those only as ``repr``
    literals; symbols and closures are bound as globals of the function.
    """
    scope: dict[str, Any] = dict(_HELPERS)
    body: list[str] = []
    out: list[str] = []
    for i, (shape, constant, field) in enumerate(steps):
        code = _CODE[shape].replace("$V", f"v{i}").replace("$A", f"a{i}")
        scope[f"a{i}"] = constant
        body.append(code.replace("\n", "\n    "))
        if field is not None:
            out.append(f"{field!r}: v{i}")
    source = "def read(data, pos):" + "".join(body) + "\n    return {" + ", ".join(out) + "}, pos\n"
    exec(compile(source, f"<skim of {name}>", "exec"), scope)  # noqa: S102 - see above
    return scope["read"]  # type: ignore[no-any-return]


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
        steps: list[tuple[str, Any, str | None]] = []
        for field in fields:
            want = wanted.get(field["name"])
            shape, constant = self._shape(field["type"], namespace, want)
            steps.append((shape, constant, field["name"] if want else None))
        self._open.discard(id(schema))
        return _generate(str(schema["name"]), steps)

    def _shape(self, schema: Any, namespace: str, want: Any) -> tuple[str, Any]:
        """How a record field is read (``want``) or stepped over: the commonest shapes by
        their own inlined code (:data:`_CODE`), anything else by a compiled closure."""
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
            return ("read-long" if want else "skip-long"), None
        if kind == "string":
            return ("read-string" if want else "skip-string"), None
        if kind == "optional-string":
            return ("read-optional-string" if want else "skip-optional-string"), None
        if kind == "enum":
            self._define(resolved, namespace)
            return ("read-enum", tuple(resolved["symbols"])) if want else ("skip-long", None)
        if kind == "array-of-string":
            return ("read-strings", None) if want else ("skip-strings", 1)
        if kind == "map-of-string" and not want:
            return "skip-strings", 2  # a map entry is two strings: its key and its value
        if kind == "array" and want:
            return "read-array", self.reader(resolved["items"], namespace, want)
        if want:
            return "read-call", self.reader(schema, namespace, want)
        return "skip-call", self.skipper(schema, namespace)

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
