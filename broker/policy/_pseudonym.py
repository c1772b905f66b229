"""Per-recipient pseudonyms: the same person looks the same at one recipient, unlinkable at two.

Each recipient gets its own key, derived from one secret the broker holds (never in the repo):
``key_r = HMAC-SHA256(secret, "tiaki-pseudonym-v1" || 0x00 || recipient)``. A value's pseudonym
at ``r`` is ``HMAC-SHA256(key_r, value)``, shortened to 120 bits and written in base32. Without
the secret two recipients cannot join their pseudonyms, and neither can reverse one; with the
secret the broker (and compliance, through the audit index) can.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from typing import Any

from broker.policy._fields import Transform, transforms_for

_LABEL = b"tiaki-pseudonym-v1"
MIN_SECRET_BYTES = 32


class Pseudonymiser:
    """Keyed pseudonyms per recipient; holds the secret and a per-recipient cache of keys."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the pseudonym secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = bytes(secret)
        self._transforms: dict[str, dict[str, Transform]] = {}

    def __repr__(self) -> str:
        return "Pseudonymiser(<secret>)"

    def pseudonym(self, recipient: str, value: Any) -> str:
        """The pseudonym of ``value`` as ``recipient`` sees it."""
        return str(self._function(recipient)(value))

    def transforms(self, recipient: str) -> dict[str, Transform]:
        """Every field action as a function, pseudonymising for ``recipient`` (cached)."""
        table = self._transforms.get(recipient)
        if table is None:
            table = transforms_for(self._function(recipient))
            self._transforms[recipient] = table
        return table

    def _function(self, recipient: str) -> Transform:
        key = hmac.new(self._secret, _LABEL + b"\x00" + recipient.encode(), hashlib.sha256).digest()

        def pseudonymise(value: Any) -> str:
            text = value.isoformat() if isinstance(value, dt.date) else str(value)
            digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
            return "ps_" + base64.b32encode(digest[:15]).decode().lower()

        return pseudonymise
