"""Tiaki's event schemas and the Avro codec.

Schemas live as ``.avsc`` files under ``schemas/`` (layout in ``schemas/README.md``); nothing
here keeps a Python copy of any of them. :func:`load_schemas` reads the folder once, writes each
version out standalone, lints it (every field documented and classified from
``schemas/vocabulary.json``), parses it with fastavro and fingerprints it with SHA-256 over the
Parsing Canonical Form. After that, everything is pure::

    schemas = load_schemas(Path("schemas"))
    writer = schemas.latest("TaskEvent")
    payload = encode(writer, record)                  # schemaless Avro
    # ... the envelope carries writer.fingerprint beside the payload ...
    record = schemas.decode(payload, writer.fingerprint)   # read as the newest version

Errors derive from :class:`CodecError`; each class has a ``quarantine_reason``.
"""

from broker.codec._codec import decode, encode, validate
from broker.codec._compat import Incompatibility, check_compatibility, check_evolution
from broker.codec._errors import (
    CodecError,
    IncompatibleSchema,
    InvalidRecord,
    MalformedRecord,
    SchemaError,
    UnknownSchema,
)
from broker.codec._finder import record_finder
from broker.codec._json import from_json, to_json
from broker.codec._load import SchemaSet, load_schemas
from broker.codec._model import (
    NAMESPACE,
    FieldInfo,
    Schema,
    Vocabulary,
    enum_symbols,
    field_classifications,
    flatten_fields,
)

__all__ = [
    "NAMESPACE",
    "CodecError",
    "FieldInfo",
    "Incompatibility",
    "IncompatibleSchema",
    "InvalidRecord",
    "MalformedRecord",
    "Schema",
    "SchemaError",
    "SchemaSet",
    "UnknownSchema",
    "Vocabulary",
    "check_compatibility",
    "check_evolution",
    "decode",
    "encode",
    "enum_symbols",
    "field_classifications",
    "flatten_fields",
    "from_json",
    "load_schemas",
    "record_finder",
    "to_json",
    "validate",
]
