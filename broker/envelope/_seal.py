"""Sealing and opening records: the safe layer over :mod:`broker.envelope._primitives`.

A :class:`Sealer` belongs to one principal (an adapter's agency, or the broker). For each
(recipient, kind) it keeps a *data key*: 32 random bytes for AES-256-GCM, wrapped once to the
recipient's current encryption key with HPKE and announced in a key announcement the sender
signs once with Ed25519. Every record is then one AES-GCM encryption whose associated data is
the record header (version, kind, topic, source, recipient, event id, schema fingerprint, data
key id, time, nonce). An :class:`Opener` verifies and unwraps each announcement once, caches the
data key, and from then on pays one AES-GCM decryption per record.

Data-key lifecycle (per sender, recipient and kind)
---------------------------------------------------

=====================================================  =====================================
condition, checked before every seal                   action
=====================================================  =====================================
no data key yet                                        create one (1 wrap + 1 sign)
``records`` sealed under it reached ``max_records``    rotate (reason ``count``)
``now`` past ``created_at + max_age``, or clock        rotate (reason ``age``)
went backwards
sender's current signing key or recipient's current    rotate (reason ``key``)
encryption key is no longer the one it names
otherwise                                              reuse (0 public-key operations)
=====================================================  =====================================

What the receiver learns, and what an auditor can check
-------------------------------------------------------

* Confidentiality: only the holder of the recipient's private encryption key (and the sender,
  who chose it) can recover a data key.
* Integrity and binding: changing any byte of a record, or presenting it on another topic, to
  another recipient, under another schema fingerprint or event id, fails authentication.
* Source authentication *to the recipient*: the announcement is signed by the sender, commits
  to the data key, and names the recipient; only sender and recipient hold the data key, so a
  record that opens came from the sender (or from the recipient itself).
* *Not* per-record non-repudiation: because the recipient also holds the data key, it could
  forge records under it, and a third party cannot tell them apart. What a third party can check
  from the announcement alone is that the sender created that data key for that recipient.
  For per-record proof, the sender adds a :class:`~broker.envelope.BatchSigner`: one signature
  over a Merkle root of record digests per batch, checkable with one verification per batch.
* Replays are caught by :class:`~broker.envelope.ReplayCache` after authentication.
* Not hidden from Kafka operators: the header is cleartext (topic, source, recipient, event id,
  schema fingerprint, time) and record sizes are visible.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broker.envelope import _primitives as p
from broker.envelope import _wire as w
from broker.envelope._errors import (
    KeyExpired,
    Oversized,
    Tampered,
    UnknownKey,
    WrongKind,
    WrongRecipient,
    WrongSource,
    WrongTopic,
)
from broker.envelope._keys import BROKER, KeyRing, Purpose
from broker.envelope._primitives import Algorithm, PublicKeyOps, Suite
from broker.envelope._replay import ReplayCache, from_ms, to_ms
from broker.envelope._wire import Kind

#: Largest payload sealed or opened by default (Kafka's default message limit is 1 MiB).
DEFAULT_MAX_PAYLOAD = 1024 * 1024 - 4096


@dataclass(frozen=True)
class RotationPolicy:
    """When a sender replaces a data key.

    The defaults keep public-key cost at four operations (wrap, sign, unwrap, verify) per
    10,000 records per recipient at most, and limit how much one leaked data key exposes to
    one hour or 10,000 records. Random 96-bit nonces stay far below AES-GCM's safe limit.
    """

    max_records: int = 10_000
    max_age: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_age <= timedelta(0):
            raise ValueError("rotation limits must be positive")


@dataclass(frozen=True)
class EnvelopeConfig:
    """Settings for sealing; build once at the edge."""

    suite: Suite = Suite.X25519
    rotation: RotationPolicy = field(default_factory=RotationPolicy)
    max_payload: int = DEFAULT_MAX_PAYLOAD
    #: Carry the announcement in every record (self-contained records, a few hundred bytes
    #: more; about 1.3 KiB more with the hybrid suite). If false, the runtime must deliver
    #: :meth:`Sealer.announcement` to the opener (:meth:`Opener.learn`) before the records.
    inline_announcement: bool = True


@dataclass(frozen=True)
class Opened:
    """A record that opened: its payload and its authenticated header fields."""

    payload: bytes
    kind: Kind
    topic: str
    source: str
    recipient: str
    event_id: str
    schema_fingerprint: bytes
    sealed_at: datetime
    data_key_id: bytes
    #: ``sealed_at`` exactly as the header carries it (what the replay check keys on).
    sealed_at_ms: int


@dataclass
class _SendKey:
    data_key_id: bytes
    cipher: p.DataKeyCipher
    created_ms: int
    not_after_ms: int
    signing_key_id: str
    recipient_key_id: str
    announcement: bytes
    records: int = 0
    #: Ring generation at the last full check, and the time the fast path may be used until.
    generation: int = -1
    keys_valid_until_ms: int = 0


@dataclass(frozen=True)
class SealerStatistics:
    records: int
    data_keys: int
    rotations: dict[str, int]
    public_key_ops: dict[str, int]


def _expected_parties(kind: Kind, source: str, recipient: str) -> bool:
    if kind is Kind.INGRESS:
        return recipient == BROKER and source != BROKER
    if kind is Kind.HOLD:
        return source == BROKER and recipient == BROKER
    return source == BROKER and recipient != BROKER


class Sealer:
    """Seals records from one principal; keeps one data key per (recipient, kind).

    ``random`` supplies data keys, ids and nonces (tests inject a seeded one); ``ops`` counts
    public-key operations and may be shared with an :class:`Opener` for a combined count.
    """

    def __init__(
        self,
        principal: str,
        keyring: KeyRing,
        *,
        config: EnvelopeConfig | None = None,
        random: p.Random = os.urandom,
        ops: PublicKeyOps | None = None,
    ) -> None:
        self.principal = principal
        self.config = config or EnvelopeConfig()
        self.ops = ops if ops is not None else PublicKeyOps()
        self._ring = keyring
        self._random = random
        self._keys: dict[tuple[str, Kind], _SendKey] = {}
        self._prefixes: dict[tuple[str, str, Kind], bytes] = {}
        #: The last seal's (now, event id, fingerprint, now in ms, record fields).
        self._last: tuple[datetime, str, bytes, int, bytes] | None = None
        self._records = 0
        self._data_keys = 0
        self._rotations = {"count": 0, "age": 0, "key": 0}

    def seal(
        self,
        payload: bytes,
        *,
        kind: Kind,
        topic: str,
        recipient: str,
        event_id: str,
        schema_fingerprint: bytes,
        now: datetime,
    ) -> bytes:
        """Seal ``payload`` for ``recipient`` on ``topic``; return the record bytes.

        Raises :class:`Oversized`, :class:`WrongKind` (an ingress record not addressed to the
        broker, or an egress record not from it), or a :class:`KeyUnusable` subclass when the
        sender or recipient has no current key.
        """
        if len(payload) > self.config.max_payload:
            raise Oversized()
        if not _expected_parties(kind, self.principal, recipient):
            raise WrongKind()
        # One event is sealed once per recipient (and review copy) at one time: its time and
        # the header fields naming it are worked out once for the run of seals.
        last = self._last
        now_ms = to_ms(now) if last is None or last[0] is not now else last[3]
        key = self._data_key(recipient, kind, now, now_ms)
        prefix = self._prefixes.get((topic, recipient, kind))
        if prefix is None:
            flags = w.FLAG_INLINE_ANNOUNCEMENT if self.config.inline_announcement else 0
            prefix = w.header_prefix(kind, flags, topic, self.principal, recipient)
            self._prefixes[(topic, recipient, kind)] = prefix
        if last is not None and last[1] == event_id and last[2] == schema_fingerprint:
            fields = last[4]
        else:
            fields = w.record_fields(event_id, schema_fingerprint)
        self._last = (now, event_id, schema_fingerprint, now_ms, fields)
        nonce = self._random(w.NONCE_BYTES)
        aad = w.header_from_parts(prefix, fields, key.data_key_id, now_ms, nonce)
        ciphertext = key.cipher.seal(nonce, payload, aad)
        key.records += 1
        self._records += 1
        announcement = key.announcement if self.config.inline_announcement else None
        return w.encode_record(aad, announcement, ciphertext)

    def announcement(self, recipient: str, kind: Kind, now: datetime) -> bytes:
        """The announcement of the data key the next record to ``recipient`` will use."""
        return self._data_key(recipient, kind, now, to_ms(now)).announcement

    def statistics(self) -> SealerStatistics:
        return SealerStatistics(
            records=self._records,
            data_keys=self._data_keys,
            rotations=dict(self._rotations),
            public_key_ops=self.ops.snapshot(),
        )

    # -- data keys ---------------------------------------------------------------------------

    def _data_key(self, recipient: str, kind: Kind, now: datetime, now_ms: int) -> _SendKey:
        ring = self._ring
        key = self._keys.get((recipient, kind))
        if (
            key is not None
            and key.generation == ring.generation
            and key.records < self.config.rotation.max_records
            and key.created_ms <= now_ms < key.keys_valid_until_ms
        ):
            return key  # nothing in the ring changed and no limit was reached: the fast path
        algorithm = self.config.suite.algorithm
        signing = ring.current(self.principal, Purpose.SIGNING, Algorithm.ED25519, now)
        encryption = ring.current(recipient, Purpose.ENCRYPTION, algorithm, now)
        if key is not None:
            rotation = self.config.rotation
            if key.records >= rotation.max_records:
                reason = "count"
            elif now_ms >= key.not_after_ms or now_ms < key.created_ms:
                reason = "age"
            elif key.signing_key_id != signing.key_id or key.recipient_key_id != encryption.key_id:
                reason = "key"
            else:
                key.generation = ring.generation
                return key
            self._rotations[reason] += 1
        key = self._new_data_key(recipient, kind, now_ms, signing.key_id, encryption.key_id)
        key.generation = ring.generation
        key.keys_valid_until_ms = min(
            key.not_after_ms, to_ms(signing.not_after), to_ms(encryption.not_after)
        )
        self._keys[(recipient, kind)] = key
        return key

    def _new_data_key(
        self, recipient: str, kind: Kind, now_ms: int, signing_key_id: str, recipient_key_id: str
    ) -> _SendKey:
        suite = self.config.suite
        data_key = self._random(p.DATA_KEY_BYTES)
        data_key_id = self._random(w.DATA_KEY_ID_BYTES)
        not_after_ms = now_ms + int(self.config.rotation.max_age.total_seconds() * 1000)
        context = w.Announcement.context(
            kind,
            suite.code,
            data_key_id,
            now_ms,
            not_after_ms,
            self.principal,
            recipient,
            signing_key_id,
            recipient_key_id,
        )
        wrapped = p.wrap(
            suite,
            self._ring.public_key(recipient_key_id),
            data_key,
            w.DATA_KEY_CONTEXT + context,
            self.ops,
        )
        unsigned = w.Announcement(
            kind=kind,
            suite_code=suite.code,
            data_key_id=data_key_id,
            created_at_ms=now_ms,
            not_after_ms=not_after_ms,
            sender=self.principal,
            recipient=recipient,
            signing_key_id=signing_key_id,
            recipient_key_id=recipient_key_id,
            key_commitment=p.digest(w.COMMITMENT_CONTEXT, data_key_id, data_key),
            wrapped_key=wrapped,
            signature=b"",
        )
        signed = unsigned.signed_bytes()
        signature = p.sign(
            self._ring.private_key(signing_key_id), w.ANNOUNCEMENT_CONTEXT + signed, self.ops
        )
        self._data_keys += 1
        return _SendKey(
            data_key_id=data_key_id,
            cipher=p.DataKeyCipher(data_key),
            created_ms=now_ms,
            not_after_ms=not_after_ms,
            signing_key_id=signing_key_id,
            recipient_key_id=recipient_key_id,
            announcement=signed + signature,
        )


@dataclass
class _ReceiveKey:
    announcement: bytes
    cipher: p.DataKeyCipher
    kind: Kind
    sender: str
    created_ms: int
    not_after_ms: int
    signing_key_id: str
    recipient_key_id: str
    generation: int = -1
    keys_valid_until: datetime | None = None


@dataclass(frozen=True)
class OpenerStatistics:
    records: int
    data_keys: int
    cache_hits: int
    cached: int
    public_key_ops: dict[str, int]


class Opener:
    """Opens records addressed to one principal; caches verified data keys.

    Pass a :class:`ReplayCache` to reject replayed event ids as part of :meth:`open`. Key
    states are re-checked on every record, so revoking the sender's signing key or this
    principal's encryption key stops records under data keys already cached.
    """

    def __init__(
        self,
        principal: str,
        keyring: KeyRing,
        *,
        replay: ReplayCache | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_data_keys: int = 4096,
        ops: PublicKeyOps | None = None,
    ) -> None:
        self.principal = principal
        self.replay = replay
        self.ops = ops if ops is not None else PublicKeyOps()
        self._ring = keyring
        # Header (at most ~1.3 KiB) plus a hybrid announcement (~1.5 KiB) fit in 4 KiB.
        self._max_record = max_payload + 4096
        self._max_keys = max_data_keys
        # Keyed by (sender, data key id): one sender cannot shadow another's data key.
        self._cache: OrderedDict[tuple[str, bytes], _ReceiveKey] = OrderedDict()
        self._records = 0
        self._data_keys = 0
        self._hits = 0

    def open(
        self,
        record: bytes,
        *,
        topic: str,
        now: datetime,
        kind: Kind | None = None,
        source: str | None = None,
    ) -> Opened:
        """Authenticate and decrypt ``record`` read from ``topic``.

        ``kind`` and ``source`` are what the channel implies (``tiaki.ingress.A`` means
        ingress from A); leave them ``None`` not to check. Raises an
        :class:`~broker.envelope.EnvelopeError` subclass and nothing else.
        """
        if len(record) > self._max_record:
            raise Oversized()
        parsed = w.parse_record(record)
        h = parsed.header
        if kind is not None and h.kind is not kind:
            raise WrongKind()
        if not _expected_parties(h.kind, h.source, h.recipient):
            raise WrongKind()
        if h.topic != topic:
            raise WrongTopic()
        if h.recipient != self.principal:
            raise WrongRecipient()
        if source is not None and h.source != source:
            raise WrongSource()
        key = self._receive_key(parsed, now)
        payload = key.cipher.open(h.nonce, parsed.ciphertext, parsed.aad)
        # Authenticated from here on.
        if not key.created_ms <= h.sealed_at_ms < key.not_after_ms:
            raise KeyExpired("data key used outside its announced validity")
        sealed_at = from_ms(h.sealed_at_ms)  # before the replay cache remembers anything
        if self.replay is not None:
            self.replay.check_and_remember(h.source, h.event_id, h.sealed_at_ms, now)
        self._records += 1
        return Opened(
            payload=payload,
            kind=h.kind,
            topic=h.topic,
            source=h.source,
            recipient=h.recipient,
            event_id=h.event_id,
            schema_fingerprint=h.schema_fingerprint,
            sealed_at=sealed_at,
            data_key_id=h.data_key_id,
            sealed_at_ms=h.sealed_at_ms,
        )

    def learn(self, announcement: bytes, now: datetime) -> bytes:
        """Verify and cache an announcement delivered on its own; return its data key id."""
        return self._accept(announcement, None, now)

    def statistics(self) -> OpenerStatistics:
        return OpenerStatistics(
            records=self._records,
            data_keys=self._data_keys,
            cache_hits=self._hits,
            cached=len(self._cache),
            public_key_ops=self.ops.snapshot(),
        )

    # -- data keys ---------------------------------------------------------------------------

    def _receive_key(self, parsed: w.Parsed, now: datetime) -> _ReceiveKey:
        h = parsed.header
        slot = (h.source, h.data_key_id)
        key = self._cache.get(slot)
        if key is None:
            if parsed.announcement is None:
                raise UnknownKey("data key not announced")
            self._accept(parsed.announcement, h, now)
            key = self._cache[slot]
        else:
            if parsed.announcement is not None and not p.equal(
                parsed.announcement, key.announcement
            ):
                raise Tampered()
            self._hits += 1
            self._cache.move_to_end(slot)
            # Revocation and expiry of the keys behind a cached data key take effect at once:
            # re-check them whenever the ring changed or the earlier not_after has passed.
            ring = self._ring
            if (
                key.generation != ring.generation
                or key.keys_valid_until is None
                or now >= key.keys_valid_until
            ):
                signer = ring.accepted(key.signing_key_id, key.sender, Purpose.SIGNING, now)
                mine = ring.accepted(key.recipient_key_id, self.principal, Purpose.ENCRYPTION, now)
                key.generation = ring.generation
                key.keys_valid_until = min(signer.not_after, mine.not_after)
        if key.kind is not h.kind or key.sender != h.source:
            raise Tampered()
        return key

    def _accept(self, announcement: bytes, header: w.Header | None, now: datetime) -> bytes:
        ann, signed = w.parse_announcement(announcement)
        if header is not None and (
            ann.data_key_id != header.data_key_id
            or ann.sender != header.source
            or ann.recipient != header.recipient
            or ann.kind is not header.kind
        ):
            raise Tampered()
        if ann.recipient != self.principal:
            raise WrongRecipient()
        try:
            suite = Suite.from_code(ann.suite_code)
        except ValueError:
            raise UnknownKey("unknown HPKE suite") from None
        ring = self._ring
        signer = ring.accepted(ann.signing_key_id, ann.sender, Purpose.SIGNING, now)
        p.verify(
            ring.public_key(signer.key_id),
            ann.signature,
            w.ANNOUNCEMENT_CONTEXT + signed,
            self.ops,
        )
        mine = ring.accepted(ann.recipient_key_id, self.principal, Purpose.ENCRYPTION, now)
        if mine.algorithm is not suite.algorithm:
            raise Tampered()
        data_key = p.unwrap(
            suite,
            ring.private_key(mine.key_id),
            ann.wrapped_key,
            w.DATA_KEY_CONTEXT + ann.context_bytes(),
            self.ops,
        )
        if len(data_key) != p.DATA_KEY_BYTES or not p.equal(
            p.digest(w.COMMITMENT_CONTEXT, ann.data_key_id, data_key), ann.key_commitment
        ):
            raise Tampered()
        self._data_keys += 1
        self._cache[(ann.sender, ann.data_key_id)] = _ReceiveKey(
            announcement=announcement,
            cipher=p.DataKeyCipher(data_key),
            kind=ann.kind,
            sender=ann.sender,
            created_ms=ann.created_at_ms,
            not_after_ms=ann.not_after_ms,
            signing_key_id=ann.signing_key_id,
            recipient_key_id=ann.recipient_key_id,
            generation=ring.generation,
            keys_valid_until=min(signer.not_after, mine.not_after),
        )
        while len(self._cache) > self._max_keys:
            self._cache.popitem(last=False)
        return ann.data_key_id
