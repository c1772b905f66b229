"""The only module that touches ``cryptography.hazmat``.

Everything here is a thin, typed wrapper; nothing is hand-rolled. Public-key operations take a
:class:`PublicKeyOps` counter so callers (and the benchmark) can show that they happen once per
data key, not once per record. Randomness for key generation, data keys and nonces comes from an
injected ``random(n) -> bytes`` so tests can be deterministic; HPKE draws its ephemeral key from
OpenSSL, which cannot be injected.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.envelope._errors import BadSignature, KeyStoreError, KeyUnusable, Tampered

#: ``random(n)`` returns ``n`` unpredictable bytes; production passes :func:`os.urandom`.
Random: TypeAlias = Callable[[int], bytes]

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SIGNATURE_BYTES = 64
DIGEST_BYTES = 32


class Algorithm(StrEnum):
    """Key algorithms the key registry holds."""

    ED25519 = "ed25519"
    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"


class Suite(StrEnum):
    """HPKE suites for wrapping data keys; the value is the configuration name."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"

    @property
    def algorithm(self) -> Algorithm:
        """The recipient key algorithm this suite needs."""
        return Algorithm(self.value)

    @property
    def code(self) -> int:
        """The suite's byte on the wire."""
        return _SUITE_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Suite:
        for suite, value in _SUITE_CODES.items():
            if value == code:
                return suite
        raise ValueError(code)


_SUITE_CODES = {Suite.X25519: 1, Suite.MLKEM768_X25519: 2}

_HPKE = {
    Suite.X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    Suite.MLKEM768_X25519: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
}

PrivateKey: TypeAlias = (
    ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
)
PublicKey: TypeAlias = (
    ed25519.Ed25519PublicKey | x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
)


@dataclass
class PublicKeyOps:
    """Counts of public-key operations, for statistics and the benchmark."""

    wraps: int = 0
    unwraps: int = 0
    signs: int = 0
    verifies: int = 0

    @property
    def total(self) -> int:
        return self.wraps + self.unwraps + self.signs + self.verifies

    def snapshot(self) -> dict[str, int]:
        return {
            "wraps": self.wraps,
            "unwraps": self.unwraps,
            "signs": self.signs,
            "verifies": self.verifies,
            "total": self.total,
        }


# --- keys -----------------------------------------------------------------------------------

_MLKEM_SEED = 64
_RAW = 32
_MLKEM768_PUBLIC = 1184


def generate(algorithm: Algorithm, random: Random) -> tuple[bytes, bytes]:
    """Return ``(private_bytes, public_bytes)`` for a fresh key drawn from ``random``."""
    if algorithm is Algorithm.MLKEM768_X25519:
        private = random(_MLKEM_SEED) + random(_RAW)
    else:
        private = random(_RAW)
    return private, derive_public(algorithm, private)


def load_private(algorithm: Algorithm, data: bytes) -> PrivateKey:
    """Rebuild a private key from its raw bytes (hybrid: ML-KEM seed then X25519 scalar)."""
    try:
        if algorithm is Algorithm.ED25519:
            return ed25519.Ed25519PrivateKey.from_private_bytes(data)
        if algorithm is Algorithm.X25519:
            return x25519.X25519PrivateKey.from_private_bytes(data)
        if len(data) != _MLKEM_SEED + _RAW:
            raise ValueError("hybrid private key has the wrong length")
        return hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(data[:_MLKEM_SEED]),
            x25519.X25519PrivateKey.from_private_bytes(data[_MLKEM_SEED:]),
        )
    except ValueError:
        raise KeyStoreError(f"malformed {algorithm.value} private key") from None


def load_public(algorithm: Algorithm, data: bytes) -> PublicKey:
    """Rebuild a public key from its raw bytes (hybrid: ML-KEM-768 then X25519)."""
    try:
        if algorithm is Algorithm.ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        if algorithm is Algorithm.X25519:
            return x25519.X25519PublicKey.from_public_bytes(data)
        if len(data) != _MLKEM768_PUBLIC + _RAW:
            raise ValueError("hybrid public key has the wrong length")
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(data[:_MLKEM768_PUBLIC]),
            x25519.X25519PublicKey.from_public_bytes(data[_MLKEM768_PUBLIC:]),
        )
    except ValueError:
        raise KeyStoreError(f"malformed {algorithm.value} public key") from None


def derive_public(algorithm: Algorithm, private: bytes) -> bytes:
    """Raw public bytes for raw private bytes of ``algorithm``."""
    key = load_private(algorithm, private)
    if isinstance(key, ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey):
        return key.public_key().public_bytes_raw()
    # The hybrid key object has no serialisation of its own; rebuild it from its two halves.
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(private[:_MLKEM_SEED])
    dh = x25519.X25519PrivateKey.from_private_bytes(private[_MLKEM_SEED:])
    return kem.public_key().public_bytes_raw() + dh.public_key().public_bytes_raw()


# --- operations ------------------------------------------------------------------------------


def wrap(
    suite: Suite, recipient: PublicKey, data_key: bytes, info: bytes, ops: PublicKeyOps
) -> bytes:
    """HPKE-seal ``data_key`` to ``recipient``; ``info`` binds the context.

    Raises :class:`KeyUnusable` for a recipient key HPKE cannot seal to: one of another suite
    (``TypeError``), or a public key the key agreement refuses, such as a low-order X25519
    point, whose shared secret would be all zeros (``ValueError``). Either is a fault of that
    one key, not of the sender's set-up, so :meth:`Sealer.seal` raises only envelope errors
    and the runtime holds what was for that recipient instead of stopping.
    """
    if isinstance(recipient, ed25519.Ed25519PublicKey):
        raise KeyStoreError("a signing key cannot receive a wrapped data key")
    ops.wraps += 1
    try:
        return _HPKE[suite].encrypt(data_key, recipient, info=info)
    except TypeError:
        raise KeyUnusable(f"recipient key does not fit suite {suite.value}") from None
    except ValueError:
        raise KeyUnusable("recipient key refused by the key agreement") from None


def unwrap(
    suite: Suite, private: PrivateKey, wrapped: bytes, info: bytes, ops: PublicKeyOps
) -> bytes:
    """Open an HPKE-wrapped data key; any failure is :class:`Tampered`."""
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raise Tampered()
    ops.unwraps += 1
    try:
        return _HPKE[suite].decrypt(wrapped, private, info=info)
    except (InvalidTag, TypeError, ValueError):
        raise Tampered() from None


def sign(private: PrivateKey, message: bytes, ops: PublicKeyOps) -> bytes:
    """Ed25519 signature over ``message``."""
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise KeyStoreError("only an Ed25519 key can sign")
    ops.signs += 1
    return private.sign(message)


def verify(public: PublicKey, signature: bytes, message: bytes, ops: PublicKeyOps) -> None:
    """Check an Ed25519 signature; raise :class:`BadSignature` if it does not verify."""
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise BadSignature()
    ops.verifies += 1
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise BadSignature() from None


class DataKeyCipher:
    """AES-256-GCM under one data key; per-record, no public-key cost."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise Tampered() from None


def digest(*parts: bytes) -> bytes:
    """SHA-256 over the concatenation of ``parts``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
