"""How an adapter reaches Kafka: a small interface with the aiokafka implementation and an
in-memory one beside it (for unit tests and for trying an adapter without a cluster).

::

    class Connection:
        def publisher() -> Publisher                  # idempotent producer (broker.transport)
        def feed(topics, group_id) -> Feed            # the agency's egress topic (and a
                                                      # regional hub's), in a group

    class Feed:                                       # async context manager
        async def poll(max_records, timeout_ms) -> list[Record]
        async def commit(records) -> None             # highest offset + 1 per partition

A feed reads committed records only (the broker writes egress in transactions) and never
commits by itself: the subscriber commits once each record is handled, parked for a retry or
dead-lettered. After a restart or a rebalance it resumes from the group's committed offsets,
so a record whose handling was not recorded is delivered again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka import errors as kafka_errors

from broker.platform import Profile
from broker.transport import (
    AsyncResource,
    InMemoryCluster,
    InMemoryTransport,
    KafkaPublisher,
    NotAuthorized,
    Publisher,
    Record,
    ResourceBase,
    TransportClosed,
    TransportError,
    Unavailable,
)


class Feed(AsyncResource, Protocol):
    """One agency's egress topic (and, for a regional hub, its region's aggregates topic) read
    in a consumer group, committed by hand."""

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    async def commit(self, records: Sequence[Record]) -> None: ...


class Connection(Protocol):
    """Makes the two clients an adapter needs."""

    def publisher(self) -> Publisher: ...

    def feed(self, topics: str | Sequence[str], group_id: str) -> Feed: ...


def _topics(topics: str | Sequence[str]) -> tuple[str, ...]:
    """One topic name, or several: a ``str`` is one name, never a sequence of letters."""
    return (topics,) if isinstance(topics, str) else tuple(topics)


def _offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


def _translate(exc: BaseException) -> TransportError:
    name = type(exc).__name__
    if isinstance(
        exc,
        kafka_errors.TopicAuthorizationFailedError
        | kafka_errors.GroupAuthorizationFailedError
        | kafka_errors.SaslAuthenticationFailed,
    ):
        return NotAuthorized(name)
    if isinstance(exc, kafka_errors.ConsumerStoppedError):
        return TransportClosed(name)
    return Unavailable(f"{name}: Kafka is unreachable or refused the request")


class KafkaFeed(ResourceBase):
    """:class:`Feed` on aiokafka: read-committed, no auto-commit, earliest on a new group."""

    def __init__(
        self, profile: Profile, topics: str | Sequence[str], group_id: str, **options: Any
    ) -> None:
        self._profile = profile
        self._topics = _topics(topics)
        self._group_id = group_id
        self._options = options
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            **self._options,
            **self._profile.aiokafka_kwargs(),
            group_id=self._group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await self._consumer.start()
        except kafka_errors.KafkaError as exc:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
            raise _translate(exc) from exc

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        if self._consumer is None:
            raise TransportClosed("feed is not open")
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except kafka_errors.KafkaError as exc:
            raise _translate(exc) from exc
        return [
            Record(
                m.topic,
                m.partition,
                m.offset,
                m.key,
                m.value if m.value is not None else b"",
                tuple((k, bytes(v)) for k, v in m.headers or ()),
                m.timestamp,
            )
            for messages in batches.values()
            for m in messages
        ]

    async def commit(self, records: Sequence[Record]) -> None:
        if self._consumer is None:
            raise TransportClosed("feed is not open")
        if not records:
            return
        offsets = {KafkaTopicPartition(t, p): o for (t, p), o in _offsets(records).items()}
        try:
            await self._consumer.commit(offsets)
        except kafka_errors.KafkaError as exc:
            raise _translate(exc) from exc


class KafkaConnection:
    """Clients on a real cluster, with the agency's connection profile.

    ``request_timeout_ms`` bounds how long one send waits while Kafka is unreachable before
    the event goes back to waiting in the outbox.
    """

    def __init__(self, profile: Profile, *, request_timeout_ms: int = 10_000) -> None:
        self.profile = profile
        self._request_timeout_ms = request_timeout_ms

    def publisher(self) -> Publisher:
        return KafkaPublisher(
            self.profile,
            request_timeout_ms=self._request_timeout_ms,
            linger_ms=0,
        )

    def feed(self, topics: str | Sequence[str], group_id: str) -> Feed:
        return KafkaFeed(self.profile, topics, group_id)


class InMemoryFeed(ResourceBase):
    """:class:`Feed` on an :class:`~broker.transport.InMemoryCluster` consumer group."""

    def __init__(
        self, cluster: InMemoryCluster, topics: str | Sequence[str], group_id: str
    ) -> None:
        self._worker: InMemoryTransport = cluster.worker(
            group_id, worker_id=group_id, topics=_topics(topics)
        )

    async def start(self) -> None:
        await self._worker.start()

    async def close(self) -> None:
        await self._worker.close()

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        return await self._worker.poll(max_records, timeout_ms)

    async def commit(self, records: Sequence[Record]) -> None:
        await self._worker.commit((), records)


class InMemoryConnection:
    """Clients on an in-memory cluster; ``down`` makes every client act as if Kafka were
    unreachable (publishes raise :class:`~broker.transport.Unavailable`)."""

    def __init__(self, cluster: InMemoryCluster) -> None:
        self.cluster = cluster
        self.down = False

    def publisher(self) -> Publisher:
        return _SwitchablePublisher(self)

    def feed(self, topics: str | Sequence[str], group_id: str) -> Feed:
        return InMemoryFeed(self.cluster, topics, group_id)


class _SwitchablePublisher(ResourceBase):
    def __init__(self, connection: InMemoryConnection) -> None:
        self._connection = connection
        self._inner = connection.cluster.publisher()

    async def start(self) -> None:
        if self._connection.down:
            raise Unavailable("in-memory cluster is down")
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Record:
        if self._connection.down:
            raise Unavailable("in-memory cluster is down")
        return await self._inner.publish(topic, key, value, headers)
