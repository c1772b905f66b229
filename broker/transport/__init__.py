"""How the broker's workers talk to Kafka: a small async interface, two implementations.

The interface (:mod:`broker.transport._types`)::

    Record(topic, partition, offset, key, value, headers, timestamp_ms)   # consumed
    Outgoing(topic, key, value, headers=())                                # to produce

    class TransactionalTransport:       # one broker worker; an async context manager
        async def start() -> None
        async def close() -> None       # idempotent; completes even if closing fails
        async def poll(max_records, timeout_ms) -> list[Record]
        async def commit(outputs: Sequence[Outgoing], consumed: Sequence[Record]) -> None
        def assignment() -> frozenset[tuple[str, int]]
        async def missing_topics(topics) -> frozenset[str]   # absent or not visible to it

    class Publisher:                    # idempotent producer: adapters, tests
        async def publish(topic, key, value, headers=()) -> Record
    class Reader:                       # read-committed, whole topics: tests, state rebuild
        async def read_all(topic) -> list[Record]
        async def read_from(topic, start, limit=None) -> list[Record]   # from offsets
        async def offsets_at(topic, timestamp_ms) -> dict[int, int]     # where a time starts
        async def missing_topics(topics) -> frozenset[str]

``poll`` returns committed records only (read-committed) from the partitions the consumer group
assigned to this worker, in offset order per partition. ``commit`` is one Kafka transaction:
every output plus the consumed offsets (highest + 1 per partition) for the worker's group. If it
raises (always a :class:`TransportError`; see :mod:`broker.transport._errors`), nothing of the
transaction is visible and the worker is rewound, so everything polled since the last successful
commit is polled again: the caller discards its batch. Use one batch at a time.

Implementations:

- :class:`KafkaTransport`, :class:`KafkaPublisher`, :class:`KafkaReader` on aiokafka (the
  exactly-once guarantees and their limits are in :mod:`broker.transport._kafka`);
- :class:`InMemoryCluster` and its :class:`InMemoryTransport`, :class:`InMemoryPublisher`,
  :class:`InMemoryReader`, for unit tests and the simulator, with fault injection.

Both pass one contract suite (``tests/contract/transport_suite.py``).
"""

from broker.transport._errors import (
    CommitFailed,
    NotAuthorized,
    PartitionsRevoked,
    ProducerFenced,
    TransportClosed,
    TransportError,
    Unavailable,
)
from broker.transport._kafka import (
    CONNECT_TIMEOUT_S,
    KafkaPublisher,
    KafkaReader,
    KafkaTransport,
)
from broker.transport._memory import (
    INGRESS_PATTERN,
    InMemoryCluster,
    InMemoryPublisher,
    InMemoryReader,
    InMemoryTransport,
    partition_for,
)
from broker.transport._resource import ResourceBase
from broker.transport._types import (
    AsyncResource,
    Headers,
    Outgoing,
    Publisher,
    Reader,
    Record,
    TopicPartition,
    TransactionalTransport,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "INGRESS_PATTERN",
    "AsyncResource",
    "CommitFailed",
    "Headers",
    "InMemoryCluster",
    "InMemoryPublisher",
    "InMemoryReader",
    "InMemoryTransport",
    "KafkaPublisher",
    "KafkaReader",
    "KafkaTransport",
    "NotAuthorized",
    "Outgoing",
    "PartitionsRevoked",
    "ProducerFenced",
    "Publisher",
    "Reader",
    "Record",
    "ResourceBase",
    "TopicPartition",
    "TransactionalTransport",
    "TransportClosed",
    "TransportError",
    "Unavailable",
    "partition_for",
]
