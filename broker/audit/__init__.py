"""Tamper-evident audit: hash chains, Merkle trees, signed checkpoints, verification, and the
compliance officer's index and reports.

The core is pure (bytes and values in, values out; no Kafka, no asyncio): a writer chains each
audit record before it leaves the component that made the decision
(:class:`ChainWriter`), signs checkpoints of the chain's Merkle tree with the broker's key
(:func:`sign_checkpoint`), and anyone holding the log and the broker's public keys checks it
(:func:`verify_log`), naming the first bad position. When the broker's signing key is
rotated, :func:`countersign` signs each chain's newest trusted checkpoint again with the new
key, so that revoking the old one later leaves every chain signed as far as it was. The I/O
edges are the index (:class:`AuditIndex`, SQLite or PostgreSQL) and the ``tiaki audit``
command line.

Errors derive from :class:`AuditError`; see :mod:`broker.audit._errors` for the tree.
"""

from broker.audit._chain import (
    CHAIN_HEADER,
    CHECKPOINT_EVERY,
    CHECKPOINT_EVERY_RECORDS,
    GENESIS,
    LINK_HEADER,
    PREV_HEADER,
    SEQ_HEADER,
    ChainHead,
    ChainWriter,
    latest_heads,
    link_hash,
)
from broker.audit._checkpoint import (
    CHECKPOINT_HEADER,
    Checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    sign_head,
    verify_checkpoint,
)
from broker.audit._countersign import CountersignReport, checkpoint_record, countersign
from broker.audit._errors import (
    AuditError,
    BadCheckpoint,
    InconsistentTrees,
    IndexFailure,
    LogTampered,
    QueryError,
    RevokedKey,
)
from broker.audit._index import (
    Access,
    AuditIndex,
    Database,
    PostgresDatabase,
    Query,
    Row,
    SqliteDatabase,
    index_rows,
    open_database,
)
from broker.audit._log import AUDIT_TOPIC, CHECKPOINT_TOPIC, LogEntry, dump_lines, load_lines
from broker.audit._merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from broker.audit._report import Disclosure, classifier, disclosed, subject_report
from broker.audit._verify import ChainSummary, VerifyReport, read_link, verify_log

__all__ = [
    "AUDIT_TOPIC",
    "CHAIN_HEADER",
    "CHECKPOINT_EVERY",
    "CHECKPOINT_EVERY_RECORDS",
    "CHECKPOINT_HEADER",
    "CHECKPOINT_TOPIC",
    "EMPTY_ROOT",
    "GENESIS",
    "LINK_HEADER",
    "PREV_HEADER",
    "SEQ_HEADER",
    "Access",
    "AuditError",
    "AuditIndex",
    "BadCheckpoint",
    "ChainHead",
    "ChainSummary",
    "ChainWriter",
    "Checkpoint",
    "CountersignReport",
    "Database",
    "Disclosure",
    "Frontier",
    "InconsistentTrees",
    "IndexFailure",
    "LogEntry",
    "LogTampered",
    "PostgresDatabase",
    "Query",
    "QueryError",
    "RevokedKey",
    "Row",
    "SqliteDatabase",
    "VerifyReport",
    "checkpoint_record",
    "classifier",
    "consistency_proof",
    "countersign",
    "disclosed",
    "dump_lines",
    "inclusion_proof",
    "index_rows",
    "latest_heads",
    "leaf_hash",
    "link_hash",
    "load_lines",
    "node_hash",
    "open_database",
    "parse_checkpoint",
    "read_link",
    "root_of",
    "sign_checkpoint",
    "sign_head",
    "subject_report",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]
