"""The envelope: sealing, signing and opening records end to end, and the key registry.

Pure code: nothing here does I/O except :class:`KeyStore` (the key folder) and the ``tiaki
keys`` command line. Time is always passed in as ``now``; randomness can be injected.

Typical use::

    ring = KeyStore(settings.keys_dir).load(principals, private_for=["police"])
    sealer = Sealer("police", ring)
    record = sealer.seal(payload, kind=Kind.INGRESS, topic="tiaki.ingress.police",
                         recipient="broker", event_id=event_id,
                         schema_fingerprint=fingerprint, now=now)

    opener = Opener("broker", ring, replay=ReplayCache())
    opened = opener.open(record, topic="tiaki.ingress.police", now=now,
                         kind=Kind.INGRESS, source="police")

Every failure is an :class:`EnvelopeError` with a ``quarantine_reason``.
"""

from broker.envelope._batch import (
    Batch,
    BatchSigner,
    BatchStatement,
    InclusionProof,
    KeyOrigin,
    verify_batch,
    verify_inclusion,
    verify_origin,
)
from broker.envelope._errors import (
    BadSignature,
    BadVersion,
    EnvelopeError,
    KeyExpired,
    KeyRevoked,
    KeyStoreError,
    KeyUnusable,
    Malformed,
    Oversized,
    Replayed,
    Stale,
    Tampered,
    UnknownKey,
    WrongKind,
    WrongRecipient,
    WrongSource,
    WrongTopic,
)
from broker.envelope._keys import (
    ALLOWED_USES,
    BROKER,
    DEFAULT_KEY_VALIDITY,
    TRANSITIONS,
    KeyEvent,
    KeyInfo,
    KeyRing,
    KeyState,
    KeyUse,
    Purpose,
)
from broker.envelope._primitives import Algorithm, PublicKeyOps, Suite
from broker.envelope._replay import ReplayCache, ReplayStatistics
from broker.envelope._seal import (
    EnvelopeConfig,
    Opened,
    Opener,
    OpenerStatistics,
    RotationPolicy,
    Sealer,
    SealerStatistics,
)
from broker.envelope._store import KeyStore, init_dev_keys
from broker.envelope._wire import VERSION, Kind

__all__ = [
    "ALLOWED_USES",
    "BROKER",
    "DEFAULT_KEY_VALIDITY",
    "TRANSITIONS",
    "VERSION",
    "Algorithm",
    "BadSignature",
    "BadVersion",
    "Batch",
    "BatchSigner",
    "BatchStatement",
    "EnvelopeConfig",
    "EnvelopeError",
    "InclusionProof",
    "KeyEvent",
    "KeyExpired",
    "KeyInfo",
    "KeyOrigin",
    "KeyRevoked",
    "KeyRing",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "KeyUnusable",
    "KeyUse",
    "Kind",
    "Malformed",
    "Opened",
    "Opener",
    "OpenerStatistics",
    "Oversized",
    "PublicKeyOps",
    "Purpose",
    "ReplayCache",
    "ReplayStatistics",
    "Replayed",
    "RotationPolicy",
    "Sealer",
    "SealerStatistics",
    "Stale",
    "Suite",
    "Tampered",
    "UnknownKey",
    "WrongKind",
    "WrongRecipient",
    "WrongSource",
    "WrongTopic",
    "init_dev_keys",
    "verify_batch",
    "verify_inclusion",
    "verify_origin",
]
