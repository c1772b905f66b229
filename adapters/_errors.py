"""The adapter SDK's exception tree, rooted at :class:`~broker._errors.TiakiError`::

    AdapterError
    ├── AdapterConfigError    a bad adapter configuration file (``file:line:column: reason``)
    ├── InvalidEvent          an event that does not match its schema: refused at ``publish``,
    │                         before anything is stored, so the caller can fix it
    ├── OutboxError           the local outbox cannot be read or written (disk full, corrupt)
    └── SourceRejected        one source item (a file, a CSV row, a webhook body) is unusable;
                              sources move the item to their rejected folder with the reason

Kafka's own errors never escape raw: the transport raises
:class:`~broker.transport.TransportError`, which the SDK treats as "keep it in the outbox and
try again" (publishing) or "poll again" (subscribing).
"""

from __future__ import annotations

from broker._errors import TiakiError


class AdapterError(TiakiError):
    """Base class for every error the adapter SDK raises deliberately."""


class AdapterConfigError(AdapterError):
    """An adapter configuration is invalid; the message starts with ``file:line:column``."""


class InvalidEvent(AdapterError):
    """An event does not match its schema (or names an unknown event type)."""


class OutboxError(AdapterError):
    """The local durable outbox or state database cannot be used."""


class SourceRejected(AdapterError):
    """One item from a source cannot become an event; ``reason`` says why (no data values)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
