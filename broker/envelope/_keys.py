"""The key registry as values: key ids, purposes, algorithms, validity and a lifecycle.

A *key set* is the keys of one principal (an agency, or the broker), named by the agency
registry's ``key_ref`` (by default the agency id). Each key has an id, a purpose (encryption or
signing), an algorithm, a creation time, a ``not_after`` time and a state. This module does no
I/O: :mod:`broker.envelope._store` reads and writes the JSON documents.

Key lifecycle
-------------

Rules: a key is born ``active``. Rotation creates a new active key of the same purpose and
algorithm and moves the old one to ``retiring``: it may still open or verify what is in flight
but protects nothing new. Any key may be revoked, which is final. An ``active`` or ``retiring``
key whose ``not_after`` has passed is ``expired`` whether or not the stored document says so
yet (:meth:`KeyInfo.state_at`). Revoked and expired keys are refused for both sealing and
opening.

=============  =========  =============
from           event      to
=============  =========  =============
active         rotate     retiring
active         revoke     revoked
active         expire     expired
retiring       revoke     revoked
retiring       expire     expired
expired        revoke     revoked
=============  =========  =============

What each state allows:

=============  ====================================  ==================================
state          protect (seal to, wrap to, sign)      accept (open, unwrap, verify)
=============  ====================================  ==================================
active         yes                                   yes
retiring       no                                    yes
expired        no                                    no
revoked        no                                    no
=============  ====================================  ==================================
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.envelope import _primitives as p
from broker.envelope._errors import KeyExpired, KeyRevoked, KeyStoreError, UnknownKey
from broker.envelope._primitives import Algorithm

#: Validity of a newly generated key unless the caller says otherwise.
DEFAULT_KEY_VALIDITY = timedelta(days=365)

#: The broker's own principal and key set name.
BROKER = "broker"


class Purpose(StrEnum):
    ENCRYPTION = "encryption"
    SIGNING = "signing"


class KeyState(StrEnum):
    ACTIVE = "active"
    RETIRING = "retiring"
    REVOKED = "revoked"
    EXPIRED = "expired"


class KeyEvent(StrEnum):
    ROTATE = "rotate"
    REVOKE = "revoke"
    EXPIRE = "expire"


class KeyUse(StrEnum):
    #: Seal or wrap to the key, or sign with it: only for keys that are current.
    PROTECT = "protect"
    #: Open, unwrap or verify with it: also allowed while a key is retiring.
    ACCEPT = "accept"


#: The lifecycle (see the module docstring); a pair not listed is not allowed.
TRANSITIONS: Mapping[tuple[KeyState, KeyEvent], KeyState] = {
    (KeyState.ACTIVE, KeyEvent.ROTATE): KeyState.RETIRING,
    (KeyState.ACTIVE, KeyEvent.REVOKE): KeyState.REVOKED,
    (KeyState.ACTIVE, KeyEvent.EXPIRE): KeyState.EXPIRED,
    (KeyState.RETIRING, KeyEvent.REVOKE): KeyState.REVOKED,
    (KeyState.RETIRING, KeyEvent.EXPIRE): KeyState.EXPIRED,
    (KeyState.EXPIRED, KeyEvent.REVOKE): KeyState.REVOKED,
}

#: Which uses each state allows.
ALLOWED_USES: Mapping[KeyState, frozenset[KeyUse]] = {
    KeyState.ACTIVE: frozenset({KeyUse.PROTECT, KeyUse.ACCEPT}),
    KeyState.RETIRING: frozenset({KeyUse.ACCEPT}),
    KeyState.EXPIRED: frozenset(),
    KeyState.REVOKED: frozenset(),
}

_PURPOSE_OF = {
    Algorithm.ED25519: Purpose.SIGNING,
    Algorithm.X25519: Purpose.ENCRYPTION,
    Algorithm.MLKEM768_X25519: Purpose.ENCRYPTION,
}
_SHORT = {Purpose.ENCRYPTION: "enc", Purpose.SIGNING: "sig"}

#: The small-order points of Curve25519 (libsodium's list), as X25519 public keys with the
#: top bit cleared (X25519 ignores it). The shared secret with any of them is all zeros,
#: whatever the other side's private key: an agency document carrying one would make every
#: record sealed to it (X25519 alone) readable by anyone.
_X25519_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",  # 0
        "0100000000000000000000000000000000000000000000000000000000000000",  # 1
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p (= 0)
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1 (= 1)
    )
)
_X25519_BYTES = 32


def _small_order_x25519(algorithm: Algorithm, public: bytes) -> bool:
    """True if the X25519 key (alone, or the X25519 half of a hybrid, which comes last) is
    a small-order point, which no honest key generation makes."""
    if algorithm is Algorithm.ED25519:
        return False
    point = bytearray(public[-_X25519_BYTES:])
    point[-1] &= 0x7F
    return bytes(point) in _X25519_SMALL_ORDER


def key_id_pattern(owner: str) -> re.Pattern[str]:
    """Key ids ``owner`` may use: ``<owner>.<enc|sig>.<UTC time>.<8 hex>`` (see
    :func:`new_key_id`). The owner is the whole of what comes before the last three parts,
    so one key set's id can never be another's."""
    return re.compile(re.escape(owner) + _KEY_ID_AFTER_OWNER)


#: What follows the owner in a key id (:func:`new_key_id`).
_KEY_ID_AFTER_OWNER = r"\.(enc|sig)\.[0-9]{8}T[0-9]{6}Z\.[0-9a-f]{8}"
#: Any key set's key id (:func:`key_id_pattern` with any owner of a key set's form).
_ANY_KEY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}" + _KEY_ID_AFTER_OWNER)


def shown_key_id(key_id: str) -> str:
    """``key_id`` as an error may show it. An envelope's key id is the sender's to write (up
    to 255 bytes), and the error reaches the quarantine, the sender's refusal notice, the
    audit log and the logs: one not in Tiaki's format is described, never repeated."""
    if _ANY_KEY_ID.fullmatch(key_id):
        return key_id
    return f"(a key id not in Tiaki's format, {len(key_id.encode())} bytes)"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """A time with its zone; :class:`ValueError` if it has none, or if in UTC it falls outside
    years 1 to 9999 (``0001-01-01T00:00:00+14:00``): such a time parses, but every later
    conversion (:func:`format_time`, on each save) raises ``OverflowError``."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("time without a zone")
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range in UTC") from None
    return value


@dataclass(frozen=True)
class KeyInfo:
    """The public description of one key, as kept in a key set's public document."""

    key_id: str
    owner: str
    purpose: Purpose
    algorithm: Algorithm
    created_at: datetime
    not_after: datetime
    state: KeyState
    public: bytes
    revoked_at: datetime | None = None
    reason: str | None = None

    def state_at(self, now: datetime) -> KeyState:
        """The state at ``now``: a stored active or retiring key past ``not_after`` is expired."""
        if self.state in (KeyState.ACTIVE, KeyState.RETIRING) and now >= self.not_after:
            return KeyState.EXPIRED
        return self.state

    def allows(self, use: KeyUse, now: datetime) -> bool:
        return use in ALLOWED_USES[self.state_at(now)] and now >= self.created_at

    def check(self, use: KeyUse, now: datetime) -> None:
        """Raise :class:`KeyRevoked`, :class:`KeyExpired` or :class:`UnknownKey` unless allowed."""
        state = self.state_at(now)
        if use in ALLOWED_USES[state] and now >= self.created_at:
            return
        if state is KeyState.REVOKED:
            raise KeyRevoked(f"key {self.key_id} is revoked")
        if state is KeyState.EXPIRED:
            raise KeyExpired(f"key {self.key_id} expired")
        if now < self.created_at:
            raise UnknownKey(f"key {self.key_id} is not valid yet")
        raise KeyExpired(f"key {self.key_id} is retiring and protects nothing new")

    def transition(self, event: KeyEvent, now: datetime, reason: str | None = None) -> KeyInfo:
        """Apply ``event``; raise :class:`KeyStoreError` if the table does not allow it."""
        current = self.state_at(now)
        target = TRANSITIONS.get((current, event))
        if target is None:
            raise KeyStoreError(f"key {self.key_id} is {current.value}; cannot {event.value} it")
        if target is KeyState.REVOKED:
            return replace(self, state=target, revoked_at=now, reason=reason)
        return replace(self, state=target)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "key_id": self.key_id,
            "purpose": self.purpose.value,
            "algorithm": self.algorithm.value,
            "created_at": format_time(self.created_at),
            "not_after": format_time(self.not_after),
            "state": self.state.value,
            "public_key": b64(self.public),
        }
        if self.revoked_at is not None:
            doc["revoked_at"] = format_time(self.revoked_at)
        if self.reason is not None:
            doc["reason"] = self.reason
        return doc

    @classmethod
    def from_json(cls, owner: str, doc: Mapping[str, Any]) -> KeyInfo:
        reason = doc.get("reason")
        if reason is not None and not isinstance(reason, str):
            # A key is a frozen value and gets hashed: a list or an object here made it
            # unhashable, and one such document stopped every broker worker's keys task.
            raise KeyStoreError(
                f"key {shown_key_id(str(doc.get('key_id')))} in key set {owner!r}: its reason"
                " is not text"
            )
        try:
            revoked_at = doc.get("revoked_at")
            info = cls(
                key_id=str(doc["key_id"]),
                owner=owner,
                purpose=Purpose(doc["purpose"]),
                algorithm=Algorithm(doc["algorithm"]),
                created_at=parse_time(doc["created_at"]),
                not_after=parse_time(doc["not_after"]),
                state=KeyState(doc["state"]),
                public=unb64(doc["public_key"]),
                revoked_at=parse_time(revoked_at) if revoked_at else None,
                reason=reason,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyStoreError(f"malformed key entry in key set {owner!r}: {exc}") from None
        if _PURPOSE_OF[info.algorithm] is not info.purpose:
            raise KeyStoreError(
                f"key {info.key_id}: {info.algorithm.value} is not for {info.purpose.value}"
            )
        # A key id names its key set: a document may not carry (and so replace) another's key.
        match = key_id_pattern(owner).fullmatch(info.key_id)
        if match is None or match.group(1) != _SHORT[info.purpose]:
            raise KeyStoreError(
                f"key {info.key_id!r} in key set {owner!r}: {info.purpose.value} keys of"
                f" {owner!r} need an id {owner}.{_SHORT[info.purpose]}.<UTC time>.<8 hex>"
            )
        p.load_public(info.algorithm, info.public)  # refuse a malformed public key early
        if _small_order_x25519(info.algorithm, info.public):
            raise KeyStoreError(f"key {info.key_id}: the X25519 public key is a small-order point")
        return info


def _identity(info: KeyInfo) -> tuple[str, Purpose, Algorithm, bytes]:
    """What a key id stands for, which no later document may change."""
    return info.owner, info.purpose, info.algorithm, info.public


def new_key_id(owner: str, purpose: Purpose, now: datetime, random: p.Random) -> str:
    """``<owner>.<enc|sig>.<UTC time>.<8 hex>``: readable, sortable and unique."""
    return f"{owner}.{_SHORT[purpose]}.{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.{random(4).hex()}"


class KeyRing:
    """Key sets in memory: public keys of every principal, private keys of the ones held here.

    The sealer and opener read it on every record (dictionary look-ups only), so rotation and
    revocation take effect on the next record, even for data keys already cached.
    """

    def __init__(self) -> None:
        self._keys: dict[str, KeyInfo] = {}
        self._private: dict[str, p.PrivateKey] = {}
        self._private_raw: dict[str, bytes] = {}
        self._public: dict[str, p.PublicKey] = {}
        self._refs: dict[str, str] = {}
        #: Bumped on every change, so sealers and openers can cache look-ups between changes.
        self.generation = 0

    # -- principals and key sets -----------------------------------------------------------

    def bind(self, principal: str, key_ref: str) -> None:
        """Say that ``principal`` uses key set ``key_ref`` (the agency registry's ``keys``)."""
        self._refs[principal] = key_ref
        self.generation += 1

    def key_set_of(self, principal: str) -> str:
        return self._refs.get(principal, principal)

    @property
    def principals(self) -> dict[str, str]:
        return dict(self._refs)

    def owners(self) -> list[str]:
        return sorted({info.owner for info in self._keys.values()})

    # -- reading -----------------------------------------------------------------------------

    def add(self, info: KeyInfo, private: bytes | None = None) -> None:
        """Add or replace a key; ``private`` only where this process may hold it."""
        if private is not None:
            if p.derive_public(info.algorithm, private) != info.public:
                raise KeyStoreError(f"private key of {info.key_id} does not match its public key")
            self._private[info.key_id] = p.load_private(info.algorithm, private)
            self._private_raw[info.key_id] = private
        self._keys[info.key_id] = info
        self._public.pop(info.key_id, None)
        self.generation += 1

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def get(self, key_id: str) -> KeyInfo:
        info = self._keys.get(key_id)
        if info is None:
            raise UnknownKey(f"unknown key {shown_key_id(key_id)}")
        return info

    def keys(self, owner: str | None = None) -> list[KeyInfo]:
        """Keys, oldest first, of one key set or of all."""
        found = [k for k in self._keys.values() if owner is None or k.owner == owner]
        return sorted(found, key=lambda k: (k.owner, k.created_at, k.key_id))

    def has_private(self, key_id: str) -> bool:
        return key_id in self._private

    def private_bytes(self, key_id: str) -> bytes:
        """Raw private bytes, for the key store only."""
        try:
            return self._private_raw[key_id]
        except KeyError:
            raise UnknownKey(f"no private key held for {shown_key_id(key_id)}") from None

    def public_key(self, key_id: str) -> p.PublicKey:
        key = self._public.get(key_id)
        if key is None:
            info = self.get(key_id)
            key = self._public[key_id] = p.load_public(info.algorithm, info.public)
        return key

    def private_key(self, key_id: str) -> p.PrivateKey:
        try:
            return self._private[key_id]
        except KeyError:
            raise UnknownKey(f"no private key held for {shown_key_id(key_id)}") from None

    def current(
        self, principal: str, purpose: Purpose, algorithm: Algorithm, now: datetime
    ) -> KeyInfo:
        """The newest key of ``principal`` allowed to protect at ``now``.

        Raises :class:`KeyRevoked` or :class:`KeyExpired` when the newest key of that purpose
        and algorithm is revoked or expired, :class:`UnknownKey` when there is none.
        """
        owner = self.key_set_of(principal)
        candidates = [
            k
            for k in self.keys(owner)
            if k.purpose is purpose and k.algorithm is algorithm and k.created_at <= now
        ]
        usable = [k for k in candidates if k.allows(KeyUse.PROTECT, now)]
        if usable:
            return usable[-1]
        if not candidates:
            raise UnknownKey(f"no {algorithm.value} {purpose.value} key for {principal}")
        candidates[-1].check(KeyUse.PROTECT, now)
        raise UnknownKey(f"no current {algorithm.value} {purpose.value} key for {principal}")

    def accepted(self, key_id: str, principal: str, purpose: Purpose, now: datetime) -> KeyInfo:
        """The key ``key_id`` if it belongs to ``principal``, has ``purpose`` and may accept."""
        info = self.get(key_id)
        if info.owner != self.key_set_of(principal) or info.purpose is not purpose:
            raise UnknownKey(
                f"key {shown_key_id(key_id)} is not a {purpose.value} key of {principal}"
            )
        info.check(KeyUse.ACCEPT, now)
        return info

    # -- changing ----------------------------------------------------------------------------

    def generate(
        self,
        owner: str,
        algorithm: Algorithm,
        now: datetime,
        random: p.Random,
        validity: timedelta = DEFAULT_KEY_VALIDITY,
    ) -> KeyInfo:
        """Create a new active key in key set ``owner``, holding its private half."""
        purpose = _PURPOSE_OF[algorithm]
        private, public = p.generate(algorithm, random)
        info = KeyInfo(
            key_id=new_key_id(owner, purpose, now, random),
            owner=owner,
            purpose=purpose,
            algorithm=algorithm,
            created_at=now,
            not_after=now + validity,
            state=KeyState.ACTIVE,
            public=public,
        )
        self.add(info, private)
        return info

    def rotate(
        self,
        owner: str,
        now: datetime,
        random: p.Random,
        validity: timedelta = DEFAULT_KEY_VALIDITY,
        purposes: Iterable[Purpose] = (Purpose.ENCRYPTION, Purpose.SIGNING),
    ) -> list[KeyInfo]:
        """Replace every active key of ``owner`` (of the given purposes); return the new keys."""
        wanted = set(purposes)
        algorithms: list[Algorithm] = []
        for info in self.keys(owner):
            if info.purpose in wanted and info.state_at(now) is KeyState.ACTIVE:
                self._keys[info.key_id] = info.transition(KeyEvent.ROTATE, now)
                self.generation += 1
                if info.algorithm not in algorithms:
                    algorithms.append(info.algorithm)
        if not algorithms:
            raise KeyStoreError(f"key set {owner!r} has no active key to rotate")
        return [self.generate(owner, a, now, random, validity) for a in algorithms]

    def update_from(self, fresh: KeyRing) -> tuple[list[KeyInfo], list[KeyInfo]]:
        """Take in what changed in ``fresh`` (the key folder read again): new keys (with their
        private halves where ``fresh`` holds them) and changed states (rotation, revocation).
        Returns (changed, refused): a revoked key stays revoked whatever ``fresh`` says
        (revocation is final; a document that un-revokes one is stale or tampered with), and
        a key id keeps its owner, purpose, algorithm and public key (a document that changes
        them is not describing the same key). Keys missing from ``fresh`` are kept: a key set
        is never shrunk by a read."""
        changed: list[KeyInfo] = []
        refused: list[KeyInfo] = []
        for info in fresh.keys(None):  # every key set
            old = self._keys.get(info.key_id)
            if old == info:
                continue
            if old is not None and (
                old.state is KeyState.REVOKED or _identity(old) != _identity(info)
            ):
                refused.append(info)
                continue
            private = None
            if fresh.has_private(info.key_id) and not self.has_private(info.key_id):
                private = fresh.private_bytes(info.key_id)
            self.add(info, private)
            changed.append(info)
        for principal, ref in fresh.principals.items():
            if self._refs.get(principal) != ref:
                self.bind(principal, ref)
        return changed, refused

    def revoke(self, key_id: str, now: datetime, reason: str | None = None) -> KeyInfo:
        """Revoke ``key_id`` at ``now``; final."""
        info = self.get(key_id).transition(KeyEvent.REVOKE, now, reason)
        self._keys[key_id] = info
        self.generation += 1
        return info

    def expire(self, now: datetime) -> list[KeyInfo]:
        """Record as expired every key whose ``not_after`` has passed; return those changed."""
        changed = []
        for info in list(self._keys.values()):
            if info.state is not KeyState.EXPIRED and info.state_at(now) is KeyState.EXPIRED:
                self._keys[info.key_id] = replace(info, state=KeyState.EXPIRED)
                self.generation += 1
                changed.append(self._keys[info.key_id])
        return changed
