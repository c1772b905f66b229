"""The wire format, version 1: bytes in, values out, no cryptography.

Every integer is big-endian. ``str8`` is a one-byte length then that many UTF-8 bytes (1..255);
``bytes8`` likewise for raw bytes; ``bytes16`` has a two-byte length.

Sealed record
-------------

=====  ===================  ===========================================================
size   field                notes
=====  ===================  ===========================================================
1      version              ``0x01``; any other value is refused before anything else
1      kind                 ``0x01`` ingress (adapter to broker), ``0x02`` egress
                            (broker to recipient), ``0x03`` hold (broker to itself, for
                            the topics it keeps: review and quarantine)
1      flags                bit 0: key announcement inline; other bits must be zero
str8   topic                the Kafka topic the record was sealed for
str8   source               principal that sealed it (an agency id, or ``broker``)
str8   recipient            principal it is sealed to
str8   event_id             the event's id; with the source, the replay-cache key
bytes8 schema_fingerprint   the writer schema's fingerprint
16     data_key_id          random; names the data key
8      sealed_at            milliseconds since the Unix epoch (sender's clock)
12     nonce                random AES-GCM nonce
bytes16 announcement        only if flags bit 0 (see below)
rest   ciphertext           AES-256-GCM ciphertext with its 16-byte tag
=====  ===================  ===========================================================

The AES-GCM associated data is the header: every byte from ``version`` to ``nonce``. The
announcement is not in it; it is bound by its own signature and by ``data_key_id``, which the
opener checks against the header.

Key announcement (once per data key; carried inline or delivered beforehand)
---------------------------------------------------------------------------------

=====  ===================  ===========================================================
size   field                notes
=====  ===================  ===========================================================
1      version              ``0x01``
1      kind                 direction the data key serves (same codes as above)
1      suite                ``0x01`` X25519, ``0x02`` ML-KEM-768+X25519 (HKDF-SHA256, AES-256-GCM)
16     data_key_id
8      created_at           ms since the epoch
8      not_after            ms; records sealed after it are refused
str8   sender
str8   recipient
str8   signing_key_id       sender's Ed25519 key that signs this announcement
str8   recipient_key_id     recipient's encryption key the data key is wrapped to
32     key_commitment       SHA-256("tiaki/v1/key-commitment\\0" || data_key_id || data_key)
bytes16 wrapped_key         HPKE ciphertext (enc || ct) of the 32-byte data key
64     signature            Ed25519 over "tiaki/v1/announcement\\0" || every byte above
=====  ===================  ===========================================================

The HPKE ``info`` is ``"tiaki/v1/data-key\\0"`` followed by the announcement bytes from
``version`` through ``recipient_key_id``, so a wrapped key cannot be lifted into another
announcement.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from broker.envelope._errors import BadVersion, Malformed

VERSION = 1
FLAG_INLINE_ANNOUNCEMENT = 0x01
_KNOWN_FLAGS = FLAG_INLINE_ANNOUNCEMENT

DATA_KEY_ID_BYTES = 16
NONCE_BYTES = 12
COMMITMENT_BYTES = 32
SIGNATURE_BYTES = 64

ANNOUNCEMENT_CONTEXT = b"tiaki/v1/announcement\x00"
DATA_KEY_CONTEXT = b"tiaki/v1/data-key\x00"
COMMITMENT_CONTEXT = b"tiaki/v1/key-commitment\x00"

_U16 = struct.Struct(">H")
_ANN_FIXED = struct.Struct(">BBB16sQQ")


class Kind(IntEnum):
    """Which leg of the data flow a record travels."""

    INGRESS = 1
    EGRESS = 2
    #: The broker sealing to itself what it must keep at rest: held reviews, quarantine.
    HOLD = 3


def str8(value: str) -> bytes:
    raw = value.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise Malformed("a header field is empty or longer than 255 bytes")
    return bytes((len(raw),)) + raw


def bytes8_field(value: bytes) -> bytes:
    if not 1 <= len(value) <= 255:
        raise Malformed("schema fingerprint must be 1..255 bytes")
    return bytes((len(value),)) + value


class Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise Malformed()
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def bytes8(self) -> bytes:
        n = self.u8()
        if n == 0:
            raise Malformed()
        return self.take(n)

    def str8(self) -> str:
        try:
            return self.bytes8().decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed() from None

    def bytes16(self) -> bytes:
        return self.take(_U16.unpack(self.take(2))[0])


class Header(NamedTuple):
    """The cleartext, authenticated part of a sealed record."""

    kind: Kind
    flags: int
    topic: str
    source: str
    recipient: str
    event_id: str
    schema_fingerprint: bytes
    data_key_id: bytes
    sealed_at_ms: int
    nonce: bytes

    def encode(self) -> bytes:
        prefix = header_prefix(self.kind, self.flags, self.topic, self.source, self.recipient)
        return header_bytes(
            prefix,
            self.event_id,
            self.schema_fingerprint,
            self.data_key_id,
            self.sealed_at_ms,
            self.nonce,
        )


class Parsed(NamedTuple):
    """A record split into its parts; ``aad`` is the exact header bytes."""

    header: Header
    aad: bytes
    announcement: bytes | None
    ciphertext: bytes


_TAIL = struct.Struct(">16sQ12s")
_KINDS = {int(k): k for k in Kind}


def header_prefix(kind: Kind, flags: int, topic: str, source: str, recipient: str) -> bytes:
    """The header bytes that stay the same for every record on one (topic, recipient)."""
    return bytes((VERSION, kind, flags)) + str8(topic) + str8(source) + str8(recipient)


def record_fields(event_id: str, schema_fingerprint: bytes) -> bytes:
    """The header bytes naming a record's event and schema, between the prefix and the tail:
    the same for every copy of one event (its recipients, its review copy)."""
    return str8(event_id) + bytes8_field(schema_fingerprint)


def header_bytes(
    prefix: bytes,
    event_id: str,
    schema_fingerprint: bytes,
    data_key_id: bytes,
    sealed_at_ms: int,
    nonce: bytes,
) -> bytes:
    """A whole header (the AAD) from :func:`header_prefix` and the per-record fields."""
    return header_from_parts(
        prefix, record_fields(event_id, schema_fingerprint), data_key_id, sealed_at_ms, nonce
    )


def header_from_parts(
    prefix: bytes, fields: bytes, data_key_id: bytes, sealed_at_ms: int, nonce: bytes
) -> bytes:
    """:func:`header_bytes` from :func:`header_prefix` and :func:`record_fields`."""
    return prefix + fields + _TAIL.pack(data_key_id, sealed_at_ms, nonce)


def encode_record(aad: bytes, announcement: bytes | None, ciphertext: bytes) -> bytes:
    """Assemble a record from its header bytes, announcement and ciphertext."""
    if announcement is None:
        return aad + ciphertext
    return b"".join((aad, _U16.pack(len(announcement)), announcement, ciphertext))


def parse_record(data: bytes) -> Parsed:
    """Split a record; raise :class:`BadVersion` or :class:`Malformed`.

    Written flat, without helpers: it runs once per record on the hot path.
    """
    if not data or data[0] != VERSION:
        raise BadVersion()
    size = len(data)
    try:
        kind = _KINDS[data[1]]
        flags = data[2]
        if flags & ~_KNOWN_FLAGS:
            raise Malformed()
        pos = 3
        fields: list[bytes] = []
        for _ in range(5):  # topic, source, recipient, event id, schema fingerprint
            n = data[pos]
            end = pos + 1 + n
            if n == 0 or end > size:
                raise Malformed()
            fields.append(data[pos + 1 : end])
            pos = end
        data_key_id, sealed_at_ms, nonce = _TAIL.unpack_from(data, pos)
        pos += _TAIL.size
        aad = data[:pos]
        announcement = None
        if flags & FLAG_INLINE_ANNOUNCEMENT:
            n = _U16.unpack_from(data, pos)[0]
            end = pos + 2 + n
            if end > size:
                raise Malformed()
            announcement = data[pos + 2 : end]
            pos = end
        topic = fields[0].decode("utf-8")
        source = fields[1].decode("utf-8")
        recipient = fields[2].decode("utf-8")
        event_id = fields[3].decode("utf-8")
    except (IndexError, KeyError, struct.error, UnicodeDecodeError):
        raise Malformed() from None
    ciphertext = data[pos:]
    if len(ciphertext) < 16:
        raise Malformed()
    header = Header(
        kind=kind,
        flags=flags,
        topic=topic,
        source=source,
        recipient=recipient,
        event_id=event_id,
        schema_fingerprint=fields[4],
        data_key_id=data_key_id,
        sealed_at_ms=sealed_at_ms,
        nonce=nonce,
    )
    return Parsed(header, aad, announcement, ciphertext)


@dataclass(frozen=True, slots=True)
class Announcement:
    """A data key's signed announcement (see the module docstring)."""

    kind: Kind
    suite_code: int
    data_key_id: bytes
    created_at_ms: int
    not_after_ms: int
    sender: str
    recipient: str
    signing_key_id: str
    recipient_key_id: str
    key_commitment: bytes
    wrapped_key: bytes
    signature: bytes

    @staticmethod
    def context(
        kind: Kind,
        suite_code: int,
        data_key_id: bytes,
        created_at_ms: int,
        not_after_ms: int,
        sender: str,
        recipient: str,
        signing_key_id: str,
        recipient_key_id: str,
    ) -> bytes:
        """The leading fields; also the tail of the HPKE ``info``."""
        return b"".join(
            (
                _ANN_FIXED.pack(
                    VERSION, kind, suite_code, data_key_id, created_at_ms, not_after_ms
                ),
                str8(sender),
                str8(recipient),
                str8(signing_key_id),
                str8(recipient_key_id),
            )
        )

    def context_bytes(self) -> bytes:
        return self.context(
            self.kind,
            self.suite_code,
            self.data_key_id,
            self.created_at_ms,
            self.not_after_ms,
            self.sender,
            self.recipient,
            self.signing_key_id,
            self.recipient_key_id,
        )

    def signed_bytes(self) -> bytes:
        """Everything the signature covers, after :data:`ANNOUNCEMENT_CONTEXT`."""
        if len(self.wrapped_key) > 0xFFFF:
            raise Malformed()
        return (
            self.context_bytes()
            + self.key_commitment
            + _U16.pack(len(self.wrapped_key))
            + self.wrapped_key
        )

    def encode(self) -> bytes:
        return self.signed_bytes() + self.signature


def parse_announcement(data: bytes) -> tuple[Announcement, bytes]:
    """Parse an announcement; return it with the exact bytes its signature covers."""
    if not data or data[0] != VERSION:
        raise BadVersion()
    r = Reader(data)
    try:
        _, kind, suite, key_id, created, not_after = _ANN_FIXED.unpack(r.take(_ANN_FIXED.size))
        ann_kind = Kind(kind)
    except ValueError:
        raise Malformed() from None
    sender = r.str8()
    recipient = r.str8()
    signing_key_id = r.str8()
    recipient_key_id = r.str8()
    commitment = r.take(COMMITMENT_BYTES)
    wrapped = r.bytes16()
    signed = data[: r.pos]
    signature = r.take(SIGNATURE_BYTES)
    if r.pos != len(data):
        raise Malformed()
    return (
        Announcement(
            kind=ann_kind,
            suite_code=suite,
            data_key_id=key_id,
            created_at_ms=created,
            not_after_ms=not_after,
            sender=sender,
            recipient=recipient,
            signing_key_id=signing_key_id,
            recipient_key_id=recipient_key_id,
            key_commitment=commitment,
            wrapped_key=wrapped,
            signature=signature,
        ),
        signed,
    )
