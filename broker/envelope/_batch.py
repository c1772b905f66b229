"""Batch signatures and audit checks: per-record origin an auditor can verify cheaply.

AES-GCM under a data key shared by sender and recipient proves origin only to the recipient
(who could forge records under the same key). For proof a third party accepts, the sender feeds
each sealed record to a :class:`BatchSigner`; when the batch closes (at a Kafka transaction
commit, or after ``max_records``) it signs one *batch statement* over the Merkle root of the
records' digests, in the manner of X-Road's batch signatures. Anyone holding the statement, the
record and its :class:`InclusionProof` verifies the record's origin with one Ed25519
verification per batch (:func:`verify_batch`, :func:`verify_inclusion`). The statement reveals
no content: leaves are hashes of ciphertext records. Because each announcement commits to its
data key, a recipient who later discloses the data key to an auditor cannot substitute another
key that decrypts the same ciphertext to a different plaintext.

The Merkle tree is RFC 6962's: leaf ``SHA-256(0x00 || record)``, node ``SHA-256(0x01 || l || r)``,
built level by level with an odd last node carried up unchanged (which yields the same root as
RFC 6962's split at the largest power of two).

Batch statement (version 1)
---------------------------

======  =================  ====================================================
size    field              notes
======  =================  ====================================================
1       version            ``0x01``
str8    signer             principal
str8    signing_key_id     its Ed25519 key
8       created_at         ms since the epoch
4       count              records in the batch
32      root               Merkle root
64      signature          Ed25519 over ``"tiaki/v1/batch\\0"`` || every byte above
======  =================  ====================================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime

from broker.envelope import _primitives as p
from broker.envelope import _wire as w
from broker.envelope._errors import BadVersion, KeyRevoked, Malformed, Tampered, UnknownKey
from broker.envelope._keys import KeyInfo, KeyRing, KeyState, Purpose, shown_key_id
from broker.envelope._primitives import Algorithm, PublicKeyOps, Suite
from broker.envelope._replay import from_ms, to_ms

BATCH_CONTEXT = b"tiaki/v1/batch\x00"
DEFAULT_BATCH_RECORDS = 10_000
_FIXED = struct.Struct(">QI32s")


def leaf_hash(record: bytes) -> bytes:
    return p.digest(b"\x00", record)


def _node(left: bytes, right: bytes) -> bytes:
    return p.digest(b"\x01", left, right)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [_node(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


@dataclass(frozen=True)
class InclusionProof:
    """Where one record sits in a batch, and the sibling hashes up to the root."""

    index: int
    size: int
    path: tuple[bytes, ...]


def _root_from(leaf: bytes, proof: InclusionProof) -> bytes:
    if not 0 <= proof.index < proof.size:
        raise Tampered()
    node, index, size = leaf, proof.index, proof.size
    path = list(proof.path)
    while size > 1:
        if index % 2:
            if not path:
                raise Tampered()
            node = _node(path.pop(0), node)
        elif index + 1 < size:
            if not path:
                raise Tampered()
            node = _node(node, path.pop(0))
        index //= 2
        size = (size + 1) // 2
    if path:
        raise Tampered()
    return node


@dataclass(frozen=True)
class BatchStatement:
    """A verified (or freshly signed) batch statement."""

    signer: str
    signing_key_id: str
    created_at: datetime
    count: int
    root: bytes
    encoded: bytes


@dataclass(frozen=True)
class Batch:
    """A closed batch: its signed statement and the leaf hashes to prove inclusion."""

    statement: BatchStatement
    leaves: tuple[bytes, ...]

    def proof(self, index: int) -> InclusionProof:
        """The inclusion proof of the ``index``-th record added to the batch."""
        if not 0 <= index < len(self.leaves):
            raise IndexError(index)
        path: list[bytes] = []
        position = index
        for level in _levels(list(self.leaves))[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            position //= 2
        return InclusionProof(index=index, size=len(self.leaves), path=tuple(path))


class BatchSigner:
    """Collects sealed records of one sender and signs one statement per batch."""

    def __init__(
        self,
        principal: str,
        keyring: KeyRing,
        *,
        max_records: int = DEFAULT_BATCH_RECORDS,
        ops: PublicKeyOps | None = None,
    ) -> None:
        self.principal = principal
        self.max_records = max_records
        self.ops = ops if ops is not None else PublicKeyOps()
        self._ring = keyring
        self._leaves: list[bytes] = []

    def add(self, record: bytes) -> int:
        """Add a sealed record; return its index in the open batch."""
        self._leaves.append(leaf_hash(record))
        return len(self._leaves) - 1

    @property
    def full(self) -> bool:
        return len(self._leaves) >= self.max_records

    def __len__(self) -> int:
        return len(self._leaves)

    def close(self, now: datetime) -> Batch | None:
        """Sign the open batch (one signature) and start a new one; ``None`` if empty."""
        if not self._leaves:
            return None
        leaves, self._leaves = tuple(self._leaves), []
        root = _levels(list(leaves))[-1][0]
        key = self._ring.current(self.principal, Purpose.SIGNING, Algorithm.ED25519, now)
        body = (
            bytes((w.VERSION,))
            + w.str8(self.principal)
            + w.str8(key.key_id)
            + _FIXED.pack(to_ms(now), len(leaves), root)
        )
        signature = p.sign(self._ring.private_key(key.key_id), BATCH_CONTEXT + body, self.ops)
        statement = BatchStatement(
            signer=self.principal,
            signing_key_id=key.key_id,
            created_at=from_ms(to_ms(now)),
            count=len(leaves),
            root=root,
            encoded=body + signature,
        )
        return Batch(statement=statement, leaves=leaves)


def _check_signed_at(info: KeyInfo, signed_at: datetime) -> None:
    """An auditor accepts a key that was valid when it signed; a revoked key never."""
    if info.state is KeyState.REVOKED:
        raise KeyRevoked(f"key {info.key_id} is revoked")
    if not info.created_at <= signed_at < info.not_after:
        raise UnknownKey(f"key {info.key_id} was not valid when it signed")


def verify_batch(
    statement: bytes, keyring: KeyRing, *, ops: PublicKeyOps | None = None
) -> BatchStatement:
    """Verify a batch statement's signature (one verification); return its contents.

    Raises an :class:`~broker.envelope.EnvelopeError` subclass and nothing else."""
    counter = ops if ops is not None else PublicKeyOps()
    if not statement or statement[0] != w.VERSION:
        raise BadVersion()
    r = w.Reader(statement, 1)
    signer = r.str8()
    key_id = r.str8()
    created_ms, count, root = _FIXED.unpack(r.take(_FIXED.size))
    body = statement[: r.pos]
    signature = r.take(p.SIGNATURE_BYTES)
    if r.pos != len(statement):
        raise Malformed()
    info = keyring.get(key_id)
    if info.owner != keyring.key_set_of(signer) or info.purpose is not Purpose.SIGNING:
        raise UnknownKey(f"key {shown_key_id(key_id)} is not a signing key of {signer}")
    created = from_ms(created_ms)
    _check_signed_at(info, created)
    p.verify(keyring.public_key(key_id), signature, BATCH_CONTEXT + body, counter)
    return BatchStatement(signer, key_id, created, count, root, statement)


def verify_inclusion(record: bytes, proof: InclusionProof, statement: BatchStatement) -> None:
    """Check that ``record`` is in the batch ``statement`` signs; raise :class:`Tampered`."""
    if proof.size != statement.count or not p.equal(
        _root_from(leaf_hash(record), proof), statement.root
    ):
        raise Tampered()


@dataclass(frozen=True)
class KeyOrigin:
    """What an auditor learns from a record's signed announcement, without decrypting it."""

    sender: str
    recipient: str
    kind: w.Kind
    suite: Suite
    data_key_id: bytes
    created_at: datetime
    signing_key_id: str
    key_commitment: bytes


def verify_origin(record: bytes, keyring: KeyRing, *, ops: PublicKeyOps | None = None) -> KeyOrigin:
    """Check that ``record``'s data key was created and signed by the sender it names.

    This proves the data key's origin, not the record's (see :class:`BatchSigner`). Needs a
    record with an inline announcement; one verification. Raises an
    :class:`~broker.envelope.EnvelopeError` subclass and nothing else.
    """
    counter = ops if ops is not None else PublicKeyOps()
    parsed = w.parse_record(record)
    if parsed.announcement is None:
        raise UnknownKey("record carries no announcement")
    ann, signed = w.parse_announcement(parsed.announcement)
    h = parsed.header
    if (ann.data_key_id, ann.sender, ann.recipient, ann.kind) != (
        h.data_key_id,
        h.source,
        h.recipient,
        h.kind,
    ):
        raise Tampered()
    info = keyring.get(ann.signing_key_id)
    if info.owner != keyring.key_set_of(ann.sender) or info.purpose is not Purpose.SIGNING:
        raise UnknownKey(f"key {info.key_id} is not a signing key of {ann.sender}")
    created = from_ms(ann.created_at_ms)
    _check_signed_at(info, created)
    p.verify(
        keyring.public_key(info.key_id), ann.signature, w.ANNOUNCEMENT_CONTEXT + signed, counter
    )
    try:
        suite = Suite.from_code(ann.suite_code)
    except ValueError:
        raise Malformed() from None
    return KeyOrigin(
        sender=ann.sender,
        recipient=ann.recipient,
        kind=ann.kind,
        suite=suite,
        data_key_id=ann.data_key_id,
        created_at=created,
        signing_key_id=ann.signing_key_id,
        key_commitment=ann.key_commitment,
    )
