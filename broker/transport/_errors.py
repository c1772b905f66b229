"""The transport's exception tree, rooted at :class:`broker._errors.TiakiError`.

aiokafka's errors never escape the transport: :mod:`broker.transport._kafka` translates them at
the boundary, and the in-memory transport raises the same classes, so callers handle one tree::

    TiakiError
    └── TransportError          retriable = False unless an instance says otherwise
        ├── TransportClosed     used before start() or after close()
        ├── Unavailable         retriable: Kafka could not be reached or did not answer in time
        ├── NotAuthorized       an ACL refused a topic, group or transactional id
        ├── CommitFailed        retriable: the transaction was aborted; nothing of it is visible
        │   └── PartitionsRevoked   retriable: a rebalance took partitions the batch came from
        └── ProducerFenced      a newer worker with the same transactional id took over: close

Whatever :meth:`commit` raises, the transaction's outputs are invisible to read-committed
readers and the consumer is rewound, so every record polled since the last successful commit
is polled again (except after :class:`ProducerFenced`, when the worker must close and let its
successor resume from the committed offsets). Messages name topics and partitions, never a
key or a value.
"""

from __future__ import annotations

from broker._errors import TiakiError


class TransportError(TiakiError):
    """Base class of every transport error; ``retriable`` says whether trying again may help."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class TransportClosed(TransportError):
    """The transport was used before :meth:`start` or after :meth:`close`."""


class Unavailable(TransportError):
    """Kafka could not be reached, or did not answer within its timeouts."""

    retriable = True


class NotAuthorized(TransportError):
    """An ACL refused access to a topic, a consumer group or a transactional id."""


class CommitFailed(TransportError):
    """The transaction was aborted: none of its outputs or offsets took effect."""

    retriable = True


class PartitionsRevoked(CommitFailed):
    """A rebalance happened since the batch was polled; its records belong to a stale epoch."""


class ProducerFenced(TransportError):
    """Another worker started with the same transactional id; this one must close."""
