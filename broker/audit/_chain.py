"""Hash chains over audit records, made by the writer before the records leave it (pure).

Why per writer: a chain must only ever have one writer, or two writers extending the same head
fork it. Kafka already guarantees one live writer per *transactional id*: a new producer with
the id fences the old one, and the old one can commit nothing after that. So each broker
worker (transactional id ``tiaki-broker-<worker>``) and each other audit writer (the review
command) keeps its own chain, named by that id. A consumer-group rebalance moves partitions
between workers but never moves a chain, so it can neither fork nor break one.

A link is::

    link = SHA-256("tiaki/v1/audit-link\\0" || u16 len(chain) || chain || u64 seq
                   || prev || u16 len(schema) || schema || value)

where ``prev`` is the previous record's link (32 zero bytes for seq 0), ``schema`` the
``tiaki-schema`` header (the Avro writer schema the value is read with, so it cannot be swapped
unseen) and ``value`` the record's bytes as produced. The link, seq, prev and chain travel in
the record's headers (:data:`CHAIN_HEADER` and friends); a verifier recomputes every one.

Each chain is also the leaf sequence of an RFC 9162 Merkle tree (leaf data: the link), whose
head the writer signs in periodic checkpoints (:mod:`broker.audit._checkpoint`).

The writer's head moves *atomically* with what it covers: :meth:`ChainWriter.link` advances a
pending head, :meth:`ChainWriter.head_record` gives the state record that the caller commits
in the same Kafka transaction as the audit records, and :meth:`ChainWriter.committed` or
:meth:`ChainWriter.aborted` then keeps or drops the pending links. An aborted transaction is
invisible to read-committed readers, so its links are never "used".
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broker.audit._errors import AuditError
from broker.audit._merkle import HASH_BYTES, Frontier, leaf_hash

LINK_CONTEXT = b"tiaki/v1/audit-link\x00"
GENESIS = bytes(HASH_BYTES)

#: Record headers a chained audit record carries.
CHAIN_HEADER = "tiaki-chain"
SEQ_HEADER = "tiaki-seq"
PREV_HEADER = "tiaki-prev"
LINK_HEADER = "tiaki-link"
#: The header naming the Avro writer schema (shared with the runtime's ``audit_output``).
SCHEMA_HEADER = "tiaki-schema"

#: Default checkpoint cadence: every this many records, or this often if any are unsigned.
CHECKPOINT_EVERY_RECORDS = 1000
CHECKPOINT_EVERY = timedelta(seconds=10)

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
#: The largest chain name and schema header (bytes) and the seqs a link can encode.
MAX_FIELD_BYTES = 0xFFFF
SEQ_LIMIT = 1 << 64

Headers = tuple[tuple[str, bytes], ...]


def parse_seq(raw: bytes) -> int | None:
    """A ``tiaki-seq`` header's number, if it is written as the writer writes one (plain
    decimal, no sign, no leading zero) and a link can encode it; None otherwise. The verifier
    and the index both read seqs through this, so they never disagree on a record's place."""
    if not raw.isdigit() or len(raw) > len(str(SEQ_LIMIT)) or (raw[:1] == b"0" and raw != b"0"):
        return None  # isdigit() on bytes is ASCII 0-9 only
    number = int(raw)
    return number if number < SEQ_LIMIT else None


def link_hash(chain: str, seq: int, prev: bytes, schema: bytes, value: bytes) -> bytes:
    """The link of record ``seq`` of ``chain``; see the module docstring.

    Raises :class:`AuditError` if a field does not fit its length prefix (a name or schema
    over :data:`MAX_FIELD_BYTES`, a seq outside ``0 <= seq <`` :data:`SEQ_LIMIT`).
    """
    name = chain.encode()
    if len(name) > MAX_FIELD_BYTES or len(schema) > MAX_FIELD_BYTES or not 0 <= seq < SEQ_LIMIT:
        raise AuditError("chain field out of range for a link")
    return hashlib.sha256(
        LINK_CONTEXT
        + _U16.pack(len(name))
        + name
        + _U64.pack(seq)
        + prev
        + _U16.pack(len(schema))
        + schema
        + value
    ).digest()


@dataclass
class ChainHead:
    """Where a chain stands: the next seq (``size``), the last link, the Merkle frontier, and
    how far the last checkpoint reached. Stored in ``tiaki.state.chains`` keyed by chain."""

    chain: str
    size: int = 0
    head: bytes = GENESIS
    frontier: Frontier = field(default_factory=Frontier)
    checkpointed: int = 0
    checkpointed_at_ms: int = 0

    def copy(self) -> ChainHead:
        return ChainHead(
            self.chain,
            self.size,
            self.head,
            self.frontier.copy(),
            self.checkpointed,
            self.checkpointed_at_ms,
        )

    def to_bytes(self) -> bytes:
        """The state record's value (JSON: small, read once per start)."""
        return json.dumps(
            {
                "v": 1,
                "chain": self.chain,
                "size": self.size,
                "head": self.head.hex(),
                "frontier": [h.hex() for h in self.frontier.hashes],
                "checkpointed": self.checkpointed,
                "checkpointed_at_ms": self.checkpointed_at_ms,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChainHead:
        """Read a state record back; a malformed one is an error, never a fresh chain."""
        try:
            doc = json.loads(data)
            if doc["v"] != 1:
                raise ValueError("version")
            head = cls(
                chain=str(doc["chain"]),
                size=int(doc["size"]),
                head=bytes.fromhex(doc["head"]),
                frontier=Frontier(int(doc["size"]), [bytes.fromhex(h) for h in doc["frontier"]]),
                checkpointed=int(doc["checkpointed"]),
                checkpointed_at_ms=int(doc["checkpointed_at_ms"]),
            )
            head.frontier.check()
        except (ValueError, KeyError, TypeError, AuditError) as exc:
            raise AuditError(f"malformed chain head record ({type(exc).__name__})") from None
        if len(head.head) != HASH_BYTES:
            raise AuditError("malformed chain head record (head)")
        return head


def latest_heads(values: list[tuple[bytes | None, bytes]]) -> dict[str, ChainHead]:
    """The last head of every chain among (key, value) state records, in topic order."""
    heads: dict[str, ChainHead] = {}
    for key, value in values:
        if key is None or not value:
            continue
        head = ChainHead.from_bytes(value)
        heads[head.chain] = head
    return heads


class ChainWriter:
    """The single writer of one chain (not thread-safe).

    ``committed`` is the head as of the last committed transaction; links made since then are
    pending until :meth:`committed` or :meth:`aborted`.
    """

    def __init__(
        self,
        head: ChainHead,
        *,
        every_records: int = CHECKPOINT_EVERY_RECORDS,
        every: timedelta = CHECKPOINT_EVERY,
    ) -> None:
        self._committed = head.copy()
        self._pending = head.copy()
        self.every_records = every_records
        self.every = every

    @property
    def chain(self) -> str:
        return self._committed.chain

    @property
    def head(self) -> ChainHead:
        """The pending head (a copy)."""
        return self._pending.copy()

    def link(self, value: bytes, schema: bytes) -> Headers:
        """Chain one record; return the headers to add to it."""
        p = self._pending
        seq, prev = p.size, p.head
        link = link_hash(p.chain, seq, prev, schema, value)
        p.frontier.append(leaf_hash(link))
        p.size, p.head = seq + 1, link
        return (
            (CHAIN_HEADER, p.chain.encode()),
            (SEQ_HEADER, str(seq).encode()),
            (PREV_HEADER, prev.hex().encode()),
            (LINK_HEADER, link.hex().encode()),
        )

    def checkpoint_due(self, now: datetime) -> bool:
        """Whether the pending head should be signed now: enough new records, or unsigned
        records older than the cadence."""
        p = self._pending
        unsigned = p.size - p.checkpointed
        if unsigned <= 0:
            return False
        if unsigned >= self.every_records:
            return True
        return now.timestamp() * 1000 - p.checkpointed_at_ms >= self.every.total_seconds() * 1000

    def unsigned(self) -> int:
        """How many records of the pending head no checkpoint covers yet."""
        return max(0, self._pending.size - self._pending.checkpointed)

    def mark_checkpointed(self, now: datetime) -> None:
        """The pending head has been signed (in the same transaction as the records)."""
        self._pending.checkpointed = self._pending.size
        self._pending.checkpointed_at_ms = int(now.timestamp() * 1000)

    def head_record(self) -> tuple[bytes, bytes]:
        """(key, value) of the state record that moves the chain's stored head."""
        return self._pending.chain.encode(), self._pending.to_bytes()

    def dirty(self) -> bool:
        """Whether anything is pending."""
        return (self._pending.size, self._pending.checkpointed) != (
            self._committed.size,
            self._committed.checkpointed,
        )

    def mark(self) -> ChainHead:
        """The pending head now, to pass to :meth:`committed` once the transaction holding
        everything linked so far has committed (later links may already be pending: a worker
        processes its next batch while one commits)."""
        return self._pending.copy()

    def committed(self, mark: ChainHead | None = None) -> None:
        """Everything up to ``mark`` (default: everything linked so far) has committed."""
        self._committed = (mark if mark is not None else self._pending).copy()

    def aborted(self) -> None:
        self._pending = self._committed.copy()

    def reset(self, head: ChainHead) -> None:
        """Continue from ``head`` as read back from the state topic (after an unclear commit)."""
        if head.chain != self.chain:
            raise AuditError("a chain head of another chain")
        self._committed = head.copy()
        self._pending = head.copy()
