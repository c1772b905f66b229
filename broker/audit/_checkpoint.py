"""Signed checkpoints: a chain's Merkle tree head, signed with the broker's Ed25519 key (pure).

A checkpoint commits to the first ``size`` records of a chain twice over: the Merkle root of
their links (so a witness holding only checkpoints can check consistency proofs) and the last
link itself (so a verifier holding the log checks it in one comparison). It is published to
``tiaki.checkpoints``, which every agency may read, so each agency is a witness: once it has
seen a checkpoint, the broker's operator cannot rewrite what it covers without the rewrite
showing against the agency's copy.

A checkpoint is trusted only while its key is: once the key is revoked, its checkpoints raise
:class:`~broker.audit.RevokedKey` and the verifier treats them as distrusted, not tampered
with (the table in :func:`verify_checkpoint` gives every check and how it is read).

Checkpoint (version 1)
----------------------

======  ==============  ==============================================
size    field           notes
======  ==============  ==============================================
1       version         ``0x01``
str8    chain           the chain's id (its writer's transactional id)
str8    signer          principal (``broker``)
str8    key_id          its Ed25519 signing key
8       size            records covered (seq 0 .. size-1)
32      root            RFC 9162 Merkle root of their links
32      head            link of record ``size - 1``
8       signed_at       ms since the epoch
64      signature       Ed25519 over ``"tiaki/v1/audit-checkpoint\\0"`` || every byte above
======  ==============  ==============================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from broker.audit._chain import ChainHead
from broker.audit._errors import BadCheckpoint, RevokedKey
from broker.audit._merkle import HASH_BYTES
from broker.envelope import Algorithm, EnvelopeError, KeyRing, KeyState, Purpose

VERSION = 1
CHECKPOINT_CONTEXT = b"tiaki/v1/audit-checkpoint\x00"
#: Header marking a record on ``tiaki.checkpoints`` (its value is the chain id).
CHECKPOINT_HEADER = "tiaki-checkpoint"
SIGNATURE_BYTES = 64
_FIXED = struct.Struct(">Q32s32sQ")


@dataclass(frozen=True)
class Checkpoint:
    chain: str
    signer: str
    key_id: str
    size: int
    root: bytes
    head: bytes
    signed_at: datetime
    encoded: bytes


def _str8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise BadCheckpoint("name too long for a checkpoint")
    return bytes((len(raw),)) + raw


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def sign_checkpoint(
    ring: KeyRing,
    signer: str,
    *,
    chain: str,
    size: int,
    root: bytes,
    head: bytes,
    now: datetime,
) -> bytes:
    """A checkpoint signed with ``signer``'s current Ed25519 key (one signature)."""
    try:
        key = ring.current(signer, Purpose.SIGNING, Algorithm.ED25519, now)
        private = ring.private_key(key.key_id)
    except EnvelopeError as exc:
        raise BadCheckpoint(f"cannot sign a checkpoint: {exc}") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):  # current() chose Ed25519
        raise BadCheckpoint("the signing key is not Ed25519")
    body = (
        bytes((VERSION,))
        + _str8(chain)
        + _str8(signer)
        + _str8(key.key_id)
        + _FIXED.pack(size, root, head, _ms(now))
    )
    return body + private.sign(CHECKPOINT_CONTEXT + body)


def sign_head(ring: KeyRing, signer: str, head: ChainHead, now: datetime) -> bytes:
    """The checkpoint of where ``head``'s chain stands now: its size, Merkle root and link."""
    return sign_checkpoint(
        ring,
        signer,
        chain=head.chain,
        size=head.size,
        root=head.frontier.root(),
        head=head.head,
        now=now,
    )


def parse_checkpoint(data: bytes) -> tuple[Checkpoint, bytes, bytes]:
    """(checkpoint, signed body, signature) without verifying; raise if malformed."""
    try:
        if data[0] != VERSION:
            raise BadCheckpoint("unknown checkpoint version")
        pos, names = 1, []
        for _ in range(3):
            n = data[pos]
            names.append(data[pos + 1 : pos + 1 + n].decode())
            pos += 1 + n
        size, root, head, ms = _FIXED.unpack_from(data, pos)
        pos += _FIXED.size
    except (IndexError, struct.error, UnicodeDecodeError):
        raise BadCheckpoint("malformed checkpoint") from None
    body, signature = data[:pos], data[pos:]
    if len(signature) != SIGNATURE_BYTES:
        raise BadCheckpoint("malformed checkpoint")
    try:
        signed_at = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):  # a u64 of ms reaches past year 9999
        raise BadCheckpoint("malformed checkpoint") from None
    checkpoint = Checkpoint(
        chain=names[0],
        signer=names[1],
        key_id=names[2],
        size=size,
        root=root,
        head=head,
        signed_at=signed_at,
        encoded=data,
    )
    return checkpoint, body, signature


def verify_checkpoint(data: bytes, ring: KeyRing, *, signer: str) -> Checkpoint:
    """Verify a checkpoint signed by ``signer``; return it, or raise :class:`BadCheckpoint`.

    The checks, in order, and what a failure means to :func:`~broker.audit.verify_log`:

    ===========================================  ====================  ==================
    check                                        raises                the verifier reads
    ===========================================  ====================  ==================
    well-formed, signed by ``signer``            ``BadCheckpoint``     tampering
    the key is a signing key of ``signer``       ``BadCheckpoint``     tampering
    the signature verifies under that key        ``BadCheckpoint``     tampering
    the key has not been revoked                 :class:`RevokedKey`   distrusted
    the key was valid when it signed             ``BadCheckpoint``     tampering
    ===========================================  ====================  ==================

    The signature is checked before revocation so that altered bytes read as tampering even
    under a revoked key. A revoked key's signatures are distrusted whatever time they claim
    (as for batch statements): whoever made the key revoke it may hold it, so the claimed time
    means nothing either.
    """
    checkpoint, body, signature = parse_checkpoint(data)
    if checkpoint.signer != signer:
        raise BadCheckpoint("checkpoint not signed by the expected principal")
    if len(checkpoint.root) != HASH_BYTES or len(checkpoint.head) != HASH_BYTES:
        raise BadCheckpoint("malformed checkpoint")
    try:
        info = ring.get(checkpoint.key_id)
        if info.owner != ring.key_set_of(signer) or info.purpose is not Purpose.SIGNING:
            raise BadCheckpoint("checkpoint key is not a signing key of its signer")
        public = ring.public_key(checkpoint.key_id)
    except EnvelopeError:
        raise BadCheckpoint("checkpoint key unknown") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise BadCheckpoint("checkpoint key is not Ed25519")
    try:
        public.verify(signature, CHECKPOINT_CONTEXT + body)
    except InvalidSignature:
        raise BadCheckpoint("checkpoint signature does not verify") from None
    if info.state is KeyState.REVOKED:
        raise RevokedKey("checkpoint key is revoked")
    if not info.created_at <= checkpoint.signed_at < info.not_after:
        raise BadCheckpoint("checkpoint key was not valid when it signed")
    return checkpoint
