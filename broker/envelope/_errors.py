"""The envelope's exception family.

Every failure to seal or open a record is an :class:`EnvelopeError`; the runtime sends the record
to quarantine under the class's ``quarantine_reason`` and never matches on message text::

    TiakiError
    ├── EnvelopeError             quarantine_reason
    │   ├── BadVersion            bad_version             first byte is not a known wire version
    │   ├── Malformed             malformed_envelope      lengths or fields do not parse
    │   ├── Oversized             oversized               record or payload above the limit
    │   ├── WrongKind             wrong_kind              ingress where egress was expected, or back
    │   ├── WrongTopic            wrong_topic             sealed for another topic
    │   ├── WrongRecipient        wrong_recipient         sealed for another principal
    │   ├── WrongSource           wrong_source            not from the source the topic implies
    │   ├── Tampered              tampered                AEAD, HPKE or key commitment check failed
    │   ├── BadSignature          bad_signature           Ed25519 signature did not verify
    │   ├── Replayed              replayed                event id already seen from this source
    │   │   └── Stale             stale                   too old (or too far ahead) to prove fresh
    │   └── KeyUnusable           key_unusable            HPKE refuses the key (low-order, other suite)
    │       ├── UnknownKey        unknown_key             no such key (or data key not announced)
    │       ├── KeyRevoked        key_revoked
    │       └── KeyExpired        key_expired
    └── KeyStoreError             (no reason code: a set-up fault, not a record fault)

Security checks say little, as :class:`cryptography.fernet.InvalidToken` does: a message names
the failed check, never which byte or field value made it fail. Key errors name the key id,
which is public.
"""

from __future__ import annotations

from typing import ClassVar

from broker._errors import TiakiError


class EnvelopeError(TiakiError):
    """A record could not be sealed or opened; see ``quarantine_reason``."""

    quarantine_reason: ClassVar[str] = "envelope_error"
    default_message: ClassVar[str] = "envelope rejected"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class BadVersion(EnvelopeError):
    quarantine_reason = "bad_version"
    default_message = "unknown envelope version"


class Malformed(EnvelopeError):
    quarantine_reason = "malformed_envelope"
    default_message = "malformed envelope"


class Oversized(EnvelopeError):
    quarantine_reason = "oversized"
    default_message = "envelope or payload too large"


class WrongKind(EnvelopeError):
    quarantine_reason = "wrong_kind"
    default_message = "envelope of the wrong kind for this channel"


class WrongTopic(EnvelopeError):
    quarantine_reason = "wrong_topic"
    default_message = "envelope sealed for another topic"


class WrongRecipient(EnvelopeError):
    quarantine_reason = "wrong_recipient"
    default_message = "envelope sealed for another recipient"


class WrongSource(EnvelopeError):
    quarantine_reason = "wrong_source"
    default_message = "envelope not from the expected source"


class Tampered(EnvelopeError):
    quarantine_reason = "tampered"
    default_message = "envelope failed authentication"


class BadSignature(EnvelopeError):
    quarantine_reason = "bad_signature"
    default_message = "signature did not verify"


class Replayed(EnvelopeError):
    quarantine_reason = "replayed"
    default_message = "event id already seen from this source"


class Stale(Replayed):
    quarantine_reason = "stale"
    default_message = "envelope outside the replay window"


class KeyUnusable(EnvelopeError):
    quarantine_reason = "key_unusable"
    default_message = "key cannot be used"


class UnknownKey(KeyUnusable):
    quarantine_reason = "unknown_key"
    default_message = "unknown key"


class KeyRevoked(KeyUnusable):
    quarantine_reason = "key_revoked"
    default_message = "key revoked"


class KeyExpired(KeyUnusable):
    quarantine_reason = "key_expired"
    default_message = "key expired"


class KeyStoreError(TiakiError):
    """The key folder is missing, malformed or has unsafe permissions."""
