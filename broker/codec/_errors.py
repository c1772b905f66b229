"""The codec's exception tree, rooted at :class:`~broker._errors.TiakiError`::

    CodecError                 quarantine_reason
    ├── SchemaError            schema_invalid       a schema file or the vocabulary is broken
    ├── UnknownSchema          unknown_schema       no loaded schema has this fingerprint or name
    ├── MalformedRecord        malformed_avro       bytes do not decode under the writer schema
    ├── InvalidRecord          invalid_record       a record does not fit the schema it is encoded with
    └── IncompatibleSchema     incompatible_schema  writer and reader schemas cannot be resolved

The broker quarantines by :attr:`CodecError.quarantine_reason`, never by message text. Messages
name schemas, versions and field paths, and never field values: a record's values are personal
information and must not reach logs.
"""

from __future__ import annotations

from typing import ClassVar

from broker._errors import TiakiError


class CodecError(TiakiError):
    """Base class for schema and Avro encoding errors."""

    quarantine_reason: ClassVar[str] = "codec_error"


class SchemaError(CodecError):
    """A schema file, a pinned type reference or the vocabulary is invalid."""

    quarantine_reason: ClassVar[str] = "schema_invalid"


class UnknownSchema(CodecError):
    """No loaded schema has the given fingerprint, name or version."""

    quarantine_reason: ClassVar[str] = "unknown_schema"


class MalformedRecord(CodecError):
    """Bytes could not be decoded as one record of the writer schema."""

    quarantine_reason: ClassVar[str] = "malformed_avro"


class InvalidRecord(CodecError):
    """A record does not conform to the schema it is being encoded with."""

    quarantine_reason: ClassVar[str] = "invalid_record"


class IncompatibleSchema(CodecError):
    """A writer schema cannot be read with a reader schema, or a new version breaks an old one."""

    quarantine_reason: ClassVar[str] = "incompatible_schema"
