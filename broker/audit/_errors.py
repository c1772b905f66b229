"""The audit package's exception tree::

    TiakiError
    └── AuditError                 anything the audit tools refuse to do
        ├── LogTampered            the log or a checkpoint fails verification (names where)
        ├── BadCheckpoint          a checkpoint is malformed or its signature does not verify
        │   └── RevokedKey         ...or it verifies, but under a key since revoked (distrusted)
        ├── InconsistentTrees      a consistency or inclusion proof does not hold
        ├── IndexFailure           the index database cannot be opened, read or written
        └── QueryError             a query's arguments are invalid (bad identifier, bad time)

Security checks say little (as the envelope's do): ``LogTampered`` names the first bad
*position* (``partition P offset O`` or ``chain C seq S``) and what kind of check failed, never
any record content. :class:`RevokedKey` is the one :class:`BadCheckpoint` that is *not* evidence
of tampering: revoking a key withdraws trust from everything it signed, so the verifier counts
such a checkpoint as distrusted (it vouches for nothing) instead of failing the log.
"""

from __future__ import annotations

from broker._errors import TiakiError


class AuditError(TiakiError):
    """Base class of every audit error."""


class LogTampered(AuditError):
    """The audit log or its checkpoints do not verify; ``position`` names the first bad place."""

    def __init__(self, position: str, reason: str) -> None:
        super().__init__(f"{position}: {reason}")
        self.position = position
        self.reason = reason


class BadCheckpoint(AuditError):
    """A checkpoint is malformed, signed by a key that may not sign it, or its signature fails."""


class RevokedKey(BadCheckpoint):
    """A checkpoint's signature verifies, but its key has since been revoked.

    Distrusted rather than tampered with: the checkpoint vouches for nothing, so the records it
    covers count as unsigned until a checkpoint under a trusted key covers them.
    """


class InconsistentTrees(AuditError):
    """A Merkle inclusion or consistency proof does not hold."""


class IndexFailure(AuditError):
    """The audit index cannot be opened, read or written."""


class QueryError(AuditError):
    """A query's arguments are invalid."""
