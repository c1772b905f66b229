"""Values that cross the transport boundary, and the protocols each transport implements."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

#: ``(topic, partition)``: the unit of ordering and of assignment.
TopicPartition = tuple[str, int]
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """A record as read from a topic; ``offset`` is its position in the partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int

    def __repr__(self) -> str:  # values are sealed personal data: never print them
        return f"Record({self.topic}[{self.partition}]@{self.offset}, {len(self.value)} bytes)"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce; the partition follows from the key (Kafka's murmur2 partitioner).

    A ``value`` of None is a tombstone (a compacted topic then forgets the key); it is read
    back, as every transport reads a null value, as ``b""``."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    def __repr__(self) -> str:
        size = "tombstone" if self.value is None else f"{len(self.value)} bytes"
        return f"Outgoing({self.topic}, {size})"


class AsyncResource(Protocol):
    """Started once, closed once; ``close`` is idempotent and completes even if closing fails."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class TransactionalTransport(AsyncResource, Protocol):
    """One broker worker's consume-transform-produce loop, exactly once.

    Use it one batch at a time::

        async with transport:
            while running:
                batch = await transport.poll(max_records=500, timeout_ms=100)
                outputs = transform(batch)
                try:
                    await transport.commit(outputs, batch)
                except TransportError as exc:
                    ...  # discard the batch: its records will be polled again
    """

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        """Up to ``max_records`` committed records from this worker's partitions, in offset
        order per partition; an empty list if none arrive within ``timeout_ms``."""
        ...

    async def commit(self, outputs: Sequence[Outgoing], consumed: Sequence[Record]) -> None:
        """Produce ``outputs`` and commit ``consumed`` (the highest offset + 1 per partition) in
        one transaction. On failure nothing is visible, every record polled since the last
        successful commit will be polled again, and a :class:`TransportError` is raised: a
        record Kafka refuses fails the whole transaction, and partitions changing hands
        between this call and the transaction's start refuse it
        (:class:`PartitionsRevoked`)."""
        ...

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this worker owns now."""
        ...

    def assignment_generation(self) -> int:
        """A counter bumped on every change of hands: each revocation and each assignment,
        even one that gives back the partitions this worker had. A caller that compares it
        (not :meth:`assignment`) sees partitions that left and came back between two looks,
        in which time another worker may have owned them and committed state for them."""
        ...

    async def missing_topics(self, topics: Collection[str]) -> frozenset[str]:
        """Those of ``topics`` Kafka does not have, or will not show this principal (no ACL
        on them): a transaction that writes one cannot commit. Asks the cluster afresh."""
        ...

    async def rewind(self) -> None:
        """Forget every record polled since the last successful commit and go back to the
        committed offsets, so each of them is polled again. For a caller that polls while a
        commit runs: a poll can overlap the rewind of a failed commit, and a caller that
        throws away what it holds calls this once no poll of its own is in flight."""
        ...


class Publisher(AsyncResource, Protocol):
    """Writes single records through an idempotent producer (adapters, tests)."""

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()
    ) -> Record:
        """Write one record and wait until it is acknowledged; return it with its position."""
        ...


class Reader(AsyncResource, Protocol):
    """Reads whole topics, read-committed (tests, rebuilding compacted state)."""

    async def read_all(self, topic: str) -> list[Record]:
        """Every committed record from the beginning to the end as of the call, by partition
        then offset."""
        ...

    async def read_from(
        self, topic: str, start: Mapping[int, int], *, limit: int | None = None
    ) -> list[Record]:
        """Committed records from ``start`` (partition to first offset; partitions not named
        from the beginning) to the end as of the call, by partition then offset. With
        ``limit``, stops once at least that many were read (a few more may come with the
        last fetch): read on from the offsets after the last record of each partition."""
        ...

    async def offsets_at(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the offset of the first record stamped at or after ``timestamp_ms``
        (the end of the partition if there is none): where :meth:`read_from` starts to read
        what was written since then."""
        ...

    async def missing_topics(self, topics: Collection[str]) -> frozenset[str]:
        """As :meth:`TransactionalTransport.missing_topics`."""
        ...
