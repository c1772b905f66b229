"""The adapter SDK through which agencies publish to and receive from Tiaki.

An agency's IT team builds one :class:`AdapterClient` from its connection profile and key
folder, publishes events (they wait in a durable outbox while Kafka is unreachable) and runs
a handler over what the policies let it receive::

    from adapters import AdapterClient, accept_task

    async with AdapterClient.from_files(
        "oranga-tamariki",
        profile=Path(".tiaki/profiles/oranga-tamariki.json"),
        keys_dir=Path(".tiaki/keys"),
        state_dir=Path("/var/lib/tiaki-adapter"),
    ) as client:
        async def handle(event: Received) -> None:
            case_system.apply(event.idempotency_key, event.body)     # apply once per key
            if event.event_type == "TaskEvent":
                await client.publish("TaskEvent", accept_task(event))
        await client.run(handle, stop)

Reference adapters (:func:`run_adapter`, ``tiaki adapter run``) wire sources (watched folder,
HTTP webhook) and sinks (folder, webhook, stdout) to a client from a YAML configuration. The
guide is ``docs/adapters.md``.
"""

from adapters._client import AdapterClient, ClientStatistics, Handler, RetryPolicy
from adapters._config import AdapterConfig, load_config
from adapters._connection import (
    Connection,
    Feed,
    InMemoryConnection,
    InMemoryFeed,
    KafkaConnection,
    KafkaFeed,
)
from adapters._deadletter import DeadLetter, DeadLetters
from adapters._errors import (
    AdapterConfigError,
    AdapterError,
    InvalidEvent,
    OutboxError,
    SourceRejected,
)
from adapters._events import (
    Received,
    accept_task,
    complete_task,
    decline_task,
    information_request,
    information_response,
    task_update,
)
from adapters._metrics import AdapterMetrics
from adapters._runner import Adapter
from adapters._sinks import FolderSink, Sink, SinkFailed, StdoutSink, WebhookSink
from adapters._sources import FolderSource, Source, WebhookSource

__all__ = [
    "Adapter",
    "AdapterClient",
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterMetrics",
    "ClientStatistics",
    "Connection",
    "DeadLetter",
    "DeadLetters",
    "Feed",
    "FolderSink",
    "FolderSource",
    "Handler",
    "InMemoryConnection",
    "InMemoryFeed",
    "InvalidEvent",
    "KafkaConnection",
    "KafkaFeed",
    "OutboxError",
    "Received",
    "RetryPolicy",
    "Sink",
    "SinkFailed",
    "Source",
    "SourceRejected",
    "StdoutSink",
    "WebhookSink",
    "WebhookSource",
    "accept_task",
    "complete_task",
    "decline_task",
    "information_request",
    "information_response",
    "load_config",
    "task_update",
]
