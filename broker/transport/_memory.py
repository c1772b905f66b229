"""An in-memory Kafka: enough of its semantics for the broker's unit tests and the simulator.

What it models, because the pipeline depends on it:

- topics with partitions; a keyed record goes to ``murmur2(key) % partitions`` exactly as
  Kafka's default partitioner places it; records without a key go round-robin;
- offsets that, as in Kafka, are not contiguous for readers: every transaction's commit or
  abort marker takes an offset, and aborted records keep theirs but are never returned;
- transactions: a commit appends all outputs and moves the group's offsets in one step; a
  failed commit appends nothing visible, rewinds the worker and raises;
- consumer groups: committed offsets, members, and an eager rebalance whenever a member joins
  or leaves (every partition revoked, then partition p of every topic to one member, as
  Kafka's range assignor co-partitions topics of one count), with the same stale-batch rule
  as the aiokafka transport (see :mod:`broker.transport._ledger`), and an assignment
  generation bumped at every rebalance, even one that leaves a member's partitions as they
  were;
- fencing: starting a worker with a transactional id that a live worker holds fences the old
  one, whose next commit raises :class:`ProducerFenced`;
- fault injection: :meth:`InMemoryCluster.fail_next_commit`, :meth:`~InMemoryCluster.fail_next_poll`,
  :meth:`~InMemoryCluster.deny_writes`, :meth:`~InMemoryCluster.refuse_next_produce` (Kafka
  refusing one record of a transaction, which must abort it), and
  :meth:`~InMemoryCluster.delay_commits` (commits that take a while, as Kafka's round trips
  do, so a worker's polls overlap them; a rebalance during the wait refuses the commit, as
  the aiokafka transport's lock does).

It is single-event-loop and not thread-safe; past its optional delay, a commit has no
``await`` inside, so no rebalance can observe a half-done transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.partitioner import murmur2

from broker.platform import (
    AUDIT,
    BROKER_GROUP_PREFIX,
    DLQ,
    POLICY,
    REVIEW,
    STATE_CASES,
    STATE_REQUESTS,
    STATE_SEEN,
    STATE_TALLIES,
    egress,
    ingress,
)
from broker.transport._errors import (
    CommitFailed,
    NotAuthorized,
    PartitionsRevoked,
    ProducerFenced,
    TransportClosed,
    TransportError,
)
from broker.transport._ledger import Ledger
from broker.transport._resource import ResourceBase
from broker.transport._types import Headers, Outgoing, Record, TopicPartition

#: The broker's default subscription: every agency's ingress topic.
INGRESS_PATTERN = r"^tiaki\.ingress\..*"


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) gives ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class _Entry:
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int
    visible: bool  # False for aborted records and transaction markers


@dataclass
class _Group:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    members: list[InMemoryTransport] = field(default_factory=list)
    generation: int = 0


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class InMemoryCluster:
    """Topics, consumer groups and transactions in one process.

    ``partitions`` is the count for topics created implicitly (``auto_create``) or by
    :meth:`create_topic` without a count; ``clock_ms`` stamps records (inject a fake clock).
    """

    def __init__(
        self,
        *,
        partitions: int = 3,
        auto_create: bool = True,
        clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.default_partitions = partitions
        self.auto_create = auto_create
        self._clock_ms = clock_ms
        self._logs: dict[str, list[list[_Entry]]] = {}
        self._groups: dict[str, _Group] = {}
        self._denied: set[str] = set()
        self._refusals: dict[str, list[TransportError]] = {}
        self._txn_holders: dict[str, InMemoryTransport] = {}
        self._commit_failures: list[TransportError] = []
        self._poll_failures: list[TransportError] = []
        self._commit_delay_s = 0.0
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._changed = asyncio.Event()
        self._member_ids = itertools.count()

    @classmethod
    def provisioned(cls, agency_ids: Iterable[str], *, partitions: int = 3) -> InMemoryCluster:
        """A cluster with the topics ``tiaki provision`` creates for these agencies, and no
        implicit topic creation (as on the real, provisioned Kafka)."""
        cluster = cls(partitions=partitions, auto_create=False)
        for agency in agency_ids:
            cluster.create_topic(ingress(agency))
            cluster.create_topic(egress(agency))
        for name in (AUDIT, REVIEW, DLQ, STATE_CASES, STATE_REQUESTS):
            cluster.create_topic(name)
        cluster.create_topic(POLICY, 1)
        cluster.create_topic(STATE_SEEN, 1)
        cluster.create_topic(STATE_TALLIES, 1)
        return cluster

    # -- topics --------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        """Create ``name`` (a no-op if it exists); pattern subscribers rebalance to take it."""
        if name in self._logs:
            return
        self._logs[name] = [[] for _ in range(partitions or self.default_partitions)]
        for group in self._groups.values():
            if any(member.subscribes(name) for member in group.members):
                self._rebalance(group)

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""
        return {name: len(parts) for name, parts in self._logs.items()}

    def delete_topic(self, name: str) -> None:
        """Delete ``name`` and everything on it, as ``kafka-topics --delete`` would."""
        self._logs.pop(name, None)

    def missing(self, topics: Collection[str]) -> frozenset[str]:
        """Those of ``topics`` that do not exist and would not be made by a first write."""
        if self.auto_create:
            return frozenset()
        return frozenset(topics).difference(self._logs)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset of each partition (the high-water mark)."""
        return {p: self._next_offset(log) for p, log in enumerate(self._partitions(topic))}

    def committed(self, group_id: str) -> dict[TopicPartition, int]:
        """The group's committed offsets."""
        group = self._groups.get(group_id)
        return dict(group.committed) if group else {}

    # -- fault injection -----------------------------------------------------------------

    def fail_next_commit(self, error: TransportError | None = None) -> None:
        """Make the next commit by any worker abort and raise ``error`` (default
        :class:`CommitFailed`); its outputs stay invisible and its records are polled again."""
        self._commit_failures.append(error or CommitFailed("injected commit failure"))

    def fail_next_poll(self, error: TransportError | None = None) -> None:
        """Make the next poll by any worker raise ``error`` (default: a retriable one)."""
        self._poll_failures.append(error or TransportError("injected poll failure", retriable=True))

    def refuse_next_produce(self, topic: str, error: TransportError | None = None) -> None:
        """Make Kafka refuse the next record a transaction writes to ``topic`` (by default as
        too large, which no retry mends): that transaction aborts and raises ``error``, and
        none of it is visible, the other records and the offsets included."""
        self._refusals.setdefault(topic, []).append(
            error
            or TransportError(
                "MessageSizeTooLargeError: Kafka refused a batch of the transaction",
                retriable=False,
            )
        )

    def delay_commits(self, seconds: float) -> None:
        """Make every commit wait ``seconds`` before it lands or fails."""
        self._commit_delay_s = seconds

    def deny_writes(self, topic: str) -> None:
        """Refuse writes to ``topic`` as a missing ACL would: a commit that writes it fails."""
        self._denied.add(topic)

    # -- clients -------------------------------------------------------------------------

    def worker(
        self,
        group_id: str = BROKER_GROUP_PREFIX,
        worker_id: str = "0",
        *,
        topics: Sequence[str] | None = None,
        pattern: str | None = None,
    ) -> InMemoryTransport:
        """A broker worker in ``group_id``, subscribed to ``topics`` or to ``pattern``
        (default: every ingress topic)."""
        return InMemoryTransport(self, group_id, worker_id, topics=topics, pattern=pattern)

    def publisher(self) -> InMemoryPublisher:
        return InMemoryPublisher(self)

    def reader(self) -> InMemoryReader:
        return InMemoryReader(self)

    # -- internals shared by the clients -------------------------------------------------

    def _partitions(self, topic: str) -> list[list[_Entry]]:
        if topic not in self._logs:
            if not self.auto_create:
                raise NotAuthorized(f"{topic}: no such topic")
            self.create_topic(topic)
        return self._logs[topic]

    @staticmethod
    def _next_offset(log: list[_Entry]) -> int:
        return log[-1].offset + 1 if log else 0

    def _choose(self, topic: str, key: bytes | None) -> int:
        count = len(self._partitions(topic))
        if key is None:
            counter = self._round_robin.setdefault(topic, itertools.count())
            return next(counter) % count
        return partition_for(key, count)

    def _append(self, outputs: Sequence[Outgoing], *, visible: bool) -> list[Record]:
        """Append ``outputs`` and, for a transaction, one marker per partition touched."""
        now = self._clock_ms()
        written: list[Record] = []
        touched: set[TopicPartition] = set()
        for out in outputs:
            partition = self._choose(out.topic, out.key)
            log = self._logs[out.topic][partition]
            offset = self._next_offset(log)
            value = out.value if out.value is not None else b""  # a tombstone reads as b""
            log.append(_Entry(offset, out.key, value, out.headers, now, visible))
            touched.add((out.topic, partition))
            written.append(Record(out.topic, partition, offset, out.key, value, out.headers, now))
        for topic, partition in sorted(touched):
            log = self._logs[topic][partition]
            log.append(_Entry(self._next_offset(log), None, b"", (), now, visible=False))
        self._notify()
        return written

    def _publish(self, out: Outgoing) -> Record:
        if out.topic in self._denied:
            raise NotAuthorized(f"{out.topic}: writes refused")
        now = self._clock_ms()
        partition = self._choose(out.topic, out.key)
        log = self._logs[out.topic][partition]
        offset = self._next_offset(log)
        value = out.value if out.value is not None else b""
        log.append(_Entry(offset, out.key, value, out.headers, now, visible=True))
        self._notify()
        return Record(out.topic, partition, offset, out.key, value, out.headers, now)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    def _join(self, member: InMemoryTransport) -> None:
        holder = self._txn_holders.get(member.transactional_id)
        if holder is not None and holder is not member:
            holder._fenced = True
        self._txn_holders[member.transactional_id] = member
        group = self._groups.setdefault(member.group_id, _Group())
        group.members.append(member)
        self._rebalance(group)

    def _leave(self, member: InMemoryTransport) -> None:
        if self._txn_holders.get(member.transactional_id) is member:
            del self._txn_holders[member.transactional_id]
        group = self._groups.get(member.group_id)
        if group is not None and member in group.members:
            group.members.remove(member)
            member._assign(frozenset())
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Eager: every member loses everything, then partitions are dealt out round-robin,
        each to the first member in join order whose subscription covers its topic."""
        group.generation += 1
        shares: dict[int, set[TopicPartition]] = {id(m): set() for m in group.members}
        for topic in sorted(self._logs):
            takers = [m for m in group.members if m.subscribes(topic)]
            for partition in range(len(self._logs[topic])):
                if takers:
                    shares[id(takers[partition % len(takers)])].add((topic, partition))
        for member in group.members:
            member._assign(frozenset(shares[id(member)]))

    def _take_commit_failure(self, outputs: Sequence[Outgoing]) -> TransportError | None:
        if self._commit_failures:
            return self._commit_failures.pop(0)
        for out in outputs:
            if self._refusals.get(out.topic):
                return self._refusals[out.topic].pop(0)
            if out.topic in self._denied:
                return NotAuthorized(f"{out.topic}: writes refused; transaction aborted")
        return None

    def _take_poll_failure(self) -> TransportError | None:
        return self._poll_failures.pop(0) if self._poll_failures else None


class InMemoryTransport(ResourceBase):
    """A broker worker on an :class:`InMemoryCluster`; see :class:`TransactionalTransport`."""

    def __init__(
        self,
        cluster: InMemoryCluster,
        group_id: str,
        worker_id: str,
        *,
        topics: Sequence[str] | None = None,
        pattern: str | None = None,
    ) -> None:
        if topics is not None and pattern is not None:
            raise ValueError("subscribe to topics or to a pattern, not both")
        self.group_id = group_id
        self.worker_id = worker_id
        self.transactional_id = f"{BROKER_GROUP_PREFIX}-{worker_id}"
        self._cluster = cluster
        self._topics = frozenset(topics) if topics is not None else None
        self._pattern = re.compile(pattern or INGRESS_PATTERN) if topics is None else None
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._generation = 0
        self._positions: dict[TopicPartition, int] = {}
        self._ledger = Ledger()
        self._state = "new"
        self._fenced = False
        self._rotation = 0

    def subscribes(self, topic: str) -> bool:
        """Whether this worker's subscription covers ``topic``."""
        if self._topics is not None:
            return topic in self._topics
        return self._pattern is not None and self._pattern.match(topic) is not None

    async def start(self) -> None:
        if self._state != "new":
            raise TransportClosed("a transport starts once")
        self._state = "open"
        self._cluster._join(self)

    async def close(self) -> None:
        if self._state == "open":
            self._cluster._leave(self)
        self._state = "closed"

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assignment

    def assignment_generation(self) -> int:
        return self._generation

    def _assign(self, partitions: frozenset[TopicPartition]) -> None:
        self._ledger.revoked(self._assignment)
        self._assignment = partitions
        self._generation += 1  # eager: revocation and assignment are one step here
        group = self._cluster._groups[self.group_id]
        self._positions = {tp: group.committed.get(tp, 0) for tp in partitions}

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransportClosed(f"worker {self.worker_id} is {self._state}")

    async def missing_topics(self, topics: Collection[str]) -> frozenset[str]:
        self._check_open()
        return self._cluster.missing(topics)

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            failure = self._cluster._take_poll_failure()
            if failure is not None:
                raise failure
            records = self._take(max_records)
            if records or loop.time() >= deadline:
                self._ledger.polled(records)
                return records
            await self._cluster._wait_for_change(deadline - loop.time())
            self._check_open()

    def _take(self, max_records: int) -> list[Record]:
        order = sorted(self._assignment)
        if not order:
            return []
        self._rotation = (self._rotation + 1) % len(order)
        records: list[Record] = []
        for topic, partition in order[self._rotation :] + order[: self._rotation]:
            log = self._cluster._logs[topic][partition]
            position = self._positions[(topic, partition)]
            index = self._index_of(log, position)
            while index < len(log) and len(records) < max_records:
                entry = log[index]
                if entry.visible:
                    records.append(
                        Record(
                            topic,
                            partition,
                            entry.offset,
                            entry.key,
                            entry.value,
                            entry.headers,
                            entry.timestamp_ms,
                        )
                    )
                position = entry.offset + 1
                index += 1
            self._positions[(topic, partition)] = position
        return records

    @staticmethod
    def _index_of(log: list[_Entry], offset: int) -> int:
        """The index of the first entry at or after ``offset`` (offsets only grow)."""
        lo, hi = 0, len(log)
        while lo < hi:
            mid = (lo + hi) // 2
            if log[mid].offset < offset:
                lo = mid + 1
            else:
                hi = mid
        return lo

    async def commit(self, outputs: Sequence[Outgoing], consumed: Sequence[Record]) -> None:
        self._check_open()
        self._check_not_fenced()
        if not outputs and not consumed:
            return
        generation = self._generation
        if self._cluster._commit_delay_s:
            await asyncio.sleep(self._cluster._commit_delay_s)
            self._check_open()
        try:
            self._check_not_fenced()  # taken over while committing: Kafka fences the EndTxn
            if self._generation != generation:
                raise PartitionsRevoked("partitions changed hands before the commit began")
            offsets = self._ledger.to_commit(consumed, self._assignment)
            failure = self._cluster._take_commit_failure(outputs)
            if failure is not None:
                self._cluster._append(
                    [o for o in outputs if o.topic not in self._cluster._denied], visible=False
                )
                raise failure
            for out in outputs:
                self._cluster._partitions(out.topic)
        except TransportError:
            self._rewind()
            raise
        self._cluster._append(outputs, visible=True)
        group = self._cluster._groups[self.group_id]
        group.committed.update(offsets)
        self._ledger.committed(offsets)

    def _check_not_fenced(self) -> None:
        if self._fenced:
            raise ProducerFenced(f"transactional id {self.transactional_id} was taken over")

    async def rewind(self) -> None:
        self._check_open()
        committed = self._cluster._groups[self.group_id].committed
        for tp in self._ledger.rewind():
            if tp in self._assignment:
                self._positions[tp] = committed.get(tp, 0)

    def _rewind(self) -> None:
        for tp, offset in self._ledger.rewind().items():
            if tp in self._assignment:
                self._positions[tp] = offset


class InMemoryPublisher(ResourceBase):
    """Writes single records to an :class:`InMemoryCluster`; see :class:`Publisher`."""

    def __init__(self, cluster: InMemoryCluster) -> None:
        self._cluster = cluster
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()
    ) -> Record:
        if not self._open:
            raise TransportClosed("publisher is not open")
        return self._cluster._publish(Outgoing(topic, key, value, headers))


class InMemoryReader(ResourceBase):
    """Reads whole topics of an :class:`InMemoryCluster`; see :class:`Reader`."""

    def __init__(self, cluster: InMemoryCluster) -> None:
        self._cluster = cluster
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def read_all(self, topic: str) -> list[Record]:
        return await self.read_from(topic, {})

    async def missing_topics(self, topics: Collection[str]) -> frozenset[str]:
        if not self._open:
            raise TransportClosed("reader is not open")
        return self._cluster.missing(topics)

    async def offsets_at(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        if not self._open:
            raise TransportClosed("reader is not open")
        found: dict[int, int] = {}
        for p, log in enumerate(self._cluster._logs.get(topic, ())):
            end = log[-1].offset + 1 if log else 0
            found[p] = next((e.offset for e in log if e.timestamp_ms >= timestamp_ms), end)
        return found

    async def read_from(
        self, topic: str, start: Mapping[int, int], *, limit: int | None = None
    ) -> list[Record]:
        if not self._open:
            raise TransportClosed("reader is not open")
        if topic not in self._cluster._logs:
            return []
        out: list[Record] = []
        for p, log in enumerate(self._cluster._logs[topic]):
            for e in log:
                if limit is not None and len(out) >= limit:
                    return out
                if e.visible and e.offset >= start.get(p, 0):
                    out.append(
                        Record(topic, p, e.offset, e.key, e.value, e.headers, e.timestamp_ms)
                    )
        return out
