"""The transport on Apache Kafka through aiokafka: exactly-once consume-transform-produce.

A :class:`KafkaTransport` is one broker worker: an ``AIOKafkaConsumer`` in the group
(read-committed, no auto-commit, subscribed to a topic list or to ``^tiaki\\.ingress\\..*``) and
a transactional ``AIOKafkaProducer`` whose id is ``tiaki-broker-<worker_id>``. ``commit`` runs
``begin_transaction``, one record batch per output partition, waits for their delivery, then
``send_offsets_to_transaction`` and ``commit_transaction``; on any failure, a batch Kafka
refused included, it aborts, rewinds the consumer and raises a :class:`TransportError`.

Why each delivery is checked: aiokafka fails a batch that Kafka refuses for good
(``MESSAGE_TOO_LARGE``, ``INVALID_TXN_STATE``, ``CORRUPT_MESSAGE``) only on that batch's
future; ``flush`` and ``commit_transaction`` succeed all the same, and the transaction would
commit its offsets without the record.

Why the offsets wait for the records: Kafka 3.6 and later verify each transactional produce
with the transaction coordinator (KIP-890, ``transaction.partition.verification.enable``, on by
default). If that check meets the coordinator while it is writing another change to the same
transaction, such as the consumer-offsets partition that ``send_offsets_to_transaction`` adds,
it fails with ``CONCURRENT_TRANSACTIONS``, which the broker reports to clients of aiokafka's
protocol version as ``NOT_ENOUGH_REPLICAS``: the whole produce request is retried after
``retry_backoff_ms`` (100 ms). Overlapping the two made that happen on about every other
transaction in the benchmark (a 100 ms stall in the latency tail); waiting costs one round
trip and removes it. ``tests/integration/test_transport_contract.py`` checks no produce is
retried.

What it guarantees:

- atomicity: a batch's outputs and its offsets commit together or not at all, and
  read-committed consumers (the adapters, the audit indexer, the next worker) never see aborted
  outputs;
- no transaction is in flight when partitions are revoked: ``commit`` and the rebalance
  listener share one lock, so a rebalance waits for the commit (or abort) to finish first;
  and one that takes the lock first refuses the commit (:class:`PartitionsRevoked`): the
  commit begins only if the assignment generation is still the one ``commit`` was called
  under, so a transaction made for partitions that left (its escalations, say) never lands;
- a batch polled before a rebalance is never committed after it: the first commit after a
  revocation with outstanding records raises :class:`PartitionsRevoked` and rewinds (see
  :mod:`broker.transport._ledger` for why the whole batch goes); records a poll fetched across
  a rebalance are dropped and re-fetched from the committed offsets (a seek there that fails
  is tried again before the next poll reads anything, and by every rewind);
- case ownership: the consumer uses the range assignor (aiokafka's default, round-robin,
  would split partition p of two ingress topics across workers), which ``consumer_options``
  cannot change; at every assignment the subscribed topics' partition counts are compared and
  a mismatch is logged (``copartitioning``), since the range assignor co-partitions only
  topics of one count;
- an assignment generation (``assignment_generation``), bumped by every revocation and every
  assignment, so a worker notices partitions that left and came back;
- zombie fencing by transactional id: starting a worker with the same ``worker_id`` bumps the
  producer epoch, Kafka aborts the old instance's open transaction, and the old instance's next
  transactional call fails with :class:`ProducerFenced` (it must close);
- zombie fencing by group membership (KIP-447, through :mod:`broker.transport._fencing`): the
  offsets go to Kafka in TxnOffsetCommit v3/v4 with the consumer's generation, member id and
  group instance id, so the group coordinator refuses them from a worker the group has
  expelled (stalled past ``session_timeout_ms``, say) or moved past; the transaction then
  aborts, the batch is rewound and ``commit`` raises :class:`PartitionsRevoked`, never a
  duplicate. A worker whose aiokafka has already dropped its membership (a refused heartbeat)
  does not try: without a generation, Kafka would take the offsets unchecked, as from a client
  older than KIP-447. The membership is read when the commit starts, under the lock: a
  rebalance cannot change it before the commit ends (its revocation waits for the lock), only
  an expulsion can, which is what the coordinator checks. A transaction that consumes nothing
  (due escalations, audit checkpoints) commits one assigned partition's committed offset
  again, unchanged, so that it is checked the same way;
- stable offsets (KIP-447): every committed-offset fetch (after an assignment, and for a
  rewind) is OffsetFetch v7 with ``require_stable``, so while another worker's transaction
  holding offsets for a partition is pending, the new owner gets no offset and reads nothing
  from it; it starts once that transaction has committed (from its offsets) or aborted (from
  the ones before). This covers the zombie whose offsets were accepted before it was expelled:
  its commit may still land, and the new owner starts after it;
- cancellation safety: the commit-or-abort sequence runs in a task shielded from the caller's
  cancellation, and ``close`` waits for it, so SIGTERM mid-commit leaves a finished or aborted
  transaction, never a half-written one;
- ``close`` is idempotent and stops both clients even if one of them fails to stop.

What it does not give, and why that is acceptable:

- fencing through aiokafka's own API: it has none for KIP-447, so the transport replaces two
  methods of its own clients' internals (the producer's TxnOffsetCommit and the consumer's
  offset fetch; see :mod:`broker.transport._fencing`). ``start`` checks that aiokafka is the
  0.14 series and that those internals are as they were written against, and refuses to start
  otherwise, rather than commit unfenced after an upgrade. A broker older than Kafka 2.5 (no
  TxnOffsetCommit v3, no OffsetFetch v7) fails every commit loudly instead of falling back.
- fencing a worker with nothing to fence by: a transaction that consumes nothing from a
  worker with no assigned partition, or none with a committed offset yet, carries no offsets
  and is not checked (only the transactional id fences it, against the same worker
  restarted). Escalations follow the assignment, so such a worker has none of another
  worker's to duplicate.
- waiting without end: a new owner's first fetch waits as long as the pending transaction,
  which Kafka aborts after ``transaction_timeout_ms`` if its producer never ends it; until
  then those partitions are not read. A rewind's fetch gives up after ``commit_timeout_s``.
- a clean recovery from every failure: after a failed transaction (including one whose
  ``commit_transaction`` timed out with an unknown outcome) the producer is replaced by a new
  one with the same transactional id, which makes the coordinator finish the old transaction,
  and the consumer is sent back to the group's committed offsets, which are right whichever
  way it ended. Only when that replacement itself fails is the transport left refusing
  commits (non-retriable error), and the worker must be restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from broker.platform import BROKER_GROUP_PREFIX, PLAIN_TOPICS, Profile
from broker.transport._errors import (
    CommitFailed,
    NotAuthorized,
    PartitionsRevoked,
    ProducerFenced,
    TransportClosed,
    TransportError,
    Unavailable,
)
from broker.transport._fencing import (
    GroupMemberFenced,
    MemberGroupId,
    check_aiokafka,
    fence_producer,
    group_metadata,
    require_stable_offsets,
)
from broker.transport._ledger import Ledger
from broker.transport._memory import INGRESS_PATTERN, partition_for
from broker.transport._resource import ResourceBase
from broker.transport._types import Headers, Outgoing, Record, TopicPartition

log = structlog.get_logger("tiaki.broker")

#: Consumer settings exactly-once and case ownership depend on; ``consumer_options`` may not
#: name them. The range assignor gives one member partition p of every subscribed topic (when
#: the topics have the same partition count), so one worker owns all of a case's events across
#: agencies; aiokafka's default, round-robin, deals the sorted list of all partitions out and
#: splits them.
_CONSUMER_FIXED = (
    "group_id",
    "isolation_level",
    "enable_auto_commit",
    "auto_offset_reset",
    "partition_assignment_strategy",
)
ASSIGNORS = (RangePartitionAssignor,)

#: How long the consumer-lag gauge waits for a partition's position before skipping it.
LAG_POSITION_WAIT_S = 0.5

_FENCED = (kafka_errors.ProducerFenced, kafka_errors.InvalidProducerEpoch)
_UNAUTHORIZED = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.SaslAuthenticationFailed,
)
_UNAVAILABLE = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.NoBrokersAvailable,
)


def translate(exc: BaseException) -> TransportError:
    """The transport error for an aiokafka error (messages name classes, never data)."""
    if isinstance(exc, TransportError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, GroupMemberFenced):
        return PartitionsRevoked(
            f"{exc.code}: the group coordinator refused this worker's offsets (generation "
            f"{exc.member.generation_id}); the group has moved on without it"
        )
    if isinstance(exc, _FENCED):
        return ProducerFenced(f"{name}: a newer worker holds this transactional id")
    if isinstance(exc, _UNAUTHORIZED):
        return NotAuthorized(f"{name}: {exc}")
    if isinstance(exc, _UNAVAILABLE):
        return Unavailable(f"{name}: {exc}")
    if isinstance(exc, TimeoutError):
        return Unavailable("timed out waiting for Kafka")
    if isinstance(exc, kafka_errors.ConsumerStoppedError):
        return TransportClosed("the consumer is stopped")
    retriable = bool(getattr(exc, "retriable", False))
    return TransportError(f"{name}: {exc}", retriable=retriable)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Raise aiokafka's errors as :class:`TransportError`; let programming errors through."""
    try:
        yield
    except (
        kafka_errors.KafkaError,
        kafka_errors.IllegalOperation,
        kafka_errors.ConsumerStoppedError,
        # A bounded wait inside ran out (asyncio.timeout), such as a committed offset fetch
        # held by another worker's pending transaction (require_stable).
        TimeoutError,
    ) as exc:
        raise translate(exc) from exc


def _sender_failure(producer: AIOKafkaProducer) -> BaseException | None:
    """What stopped the producer's sender task, if it has stopped: a fenced producer (a newer
    worker with this transactional id) ends it, and aiokafka then answers every transactional
    call, such as adding the offsets, with ``IllegalOperation``, which would hide the fencing
    and send the recovery down the path that replaces the producer: that would fence the
    newer worker in turn."""
    task = producer._sender.sender_task
    if task is None or not task.done() or task.cancelled():
        return None
    failure: BaseException | None = task.exception()
    return failure


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery's outcome as seen, for a transaction that failed before ``_commit``
    read it (the transaction's error is what gets reported then)."""
    if not future.cancelled():
        future.exception()


def _headers(raw: Sequence[tuple[str, bytes]] | None) -> Headers:
    return tuple((k, bytes(v)) for k, v in raw or ())


def _record(message: Any) -> Record:
    return Record(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value if message.value is not None else b"",
        _headers(message.headers),
        message.timestamp,
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, transport: KafkaTransport) -> None:
        self._transport = transport

    async def on_partitions_revoked(self, revoked: set[KafkaTopicPartition]) -> None:
        await self._transport._revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[KafkaTopicPartition]) -> None:
        self._transport._assigned(frozenset((tp.topic, tp.partition) for tp in assigned))


def copartitioning_problem(partitions: Mapping[str, int]) -> str | None:
    """Why ``partitions`` (topic to partition count, for the subscribed ingress topics) are
    not co-partitioned, or None if they are: with counts that differ, the range assignor can
    give partition p of two agencies' topics to two workers, and a case's events then meet
    on no single worker (its membership and requests are decided on half the story)."""
    counts = sorted(set(partitions.values()))
    if len(counts) <= 1:
        return None
    by_count = {n: sorted(t for t, c in partitions.items() if c == n) for n in counts}
    shown = "; ".join(f"{n}: {', '.join(ts)}" for n, ts in by_count.items())
    return f"ingress topics differ in partition count ({shown})"


#: Record-batch compression codecs by name (Kafka's own names), for ``compression``.
COMPRESSION = {"lz4": DefaultRecordBatch.CODEC_LZ4, "zstd": DefaultRecordBatch.CODEC_ZSTD}


class KafkaTransport(ResourceBase):
    """One broker worker on Kafka; see :class:`TransactionalTransport` and the module docs.

    ``profile`` is the broker principal's connection profile. Subscribe to ``topics`` or to
    ``pattern`` (default: every ingress topic). ``consumer_options`` and ``producer_options``
    pass further aiokafka settings (timeouts, batch sizes); they cannot override the settings
    exactly-once depends on.

    Record batches for ``compressed_topics`` (default: the plain-Avro topics, audit and state)
    are compressed with ``compression`` (``lz4``, ``zstd``, or None for none); every other
    batch goes as it is. A decision's audit record repeats most of the one before it (the
    route, rules and every field's action for each candidate recipient), so its batches shrink
    several times over, which is bytes Kafka need not take in over TLS, write and replicate.
    Sealed records are ciphertext and would only cost the compressor's time. Consumers
    decompress transparently (aiokafka with its ``lz4`` extra, which Tiaki depends on).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        worker_id: str,
        group_id: str = BROKER_GROUP_PREFIX,
        topics: Sequence[str] | None = None,
        pattern: str | None = None,
        transaction_timeout_ms: int = 60_000,
        commit_timeout_s: float = 60.0,
        close_timeout_s: float = 30.0,
        consumer_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        compressed_topics: Collection[str] = PLAIN_TOPICS,
        compression: str | None = "lz4",
    ) -> None:
        if topics is not None and pattern is not None:
            raise ValueError("subscribe to topics or to a pattern, not both")
        if compression is not None and compression not in COMPRESSION:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSION)} or None")
        fixed = sorted(set(consumer_options or {}) & set(_CONSUMER_FIXED))
        if fixed:
            raise ValueError(
                f"consumer_options may not set {', '.join(fixed)}: exactly once "
                "and case ownership depend on them"
            )
        self.group_id = group_id
        self.worker_id = worker_id
        self.transactional_id = f"{BROKER_GROUP_PREFIX}-{worker_id}"
        self._profile = profile
        self._topics = tuple(topics) if topics is not None else None
        self._pattern = pattern or INGRESS_PATTERN
        self._commit_timeout_s = commit_timeout_s
        self._close_timeout_s = close_timeout_s
        self._consumer_options = dict(consumer_options or {})
        self._producer_options = dict(producer_options or {})
        self._transaction_timeout_ms = transaction_timeout_ms
        self._compressed = (
            frozenset(compressed_topics) if compression is not None else frozenset[str]()
        )
        self._codec = COMPRESSION[compression] if compression is not None else 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._ledger = Ledger()
        #: Committed offsets of assigned partitions as this worker last committed or read
        #: them, to carry its membership in transactions that consume nothing; forgotten at
        #: every revocation and failed commit (a lost commit reply leaves them unknown).
        self._committed: dict[TopicPartition, int] = {}
        self._assignment: frozenset[TopicPartition] = frozenset()
        #: Partitions whose consumer position is in doubt (a rewind or a poll across a
        #: rebalance could not seek them): sought to their committed offsets before the next
        #: poll reads anything.
        self._misplaced: set[TopicPartition] = set()
        self._generation = 0
        #: Why the subscribed topics are not co-partitioned, as of the last assignment.
        self.copartitioning: str | None = None
        self._epoch = 0
        self._broken: TransportError | None = None
        self._state = "new"

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assignment

    def assignment_generation(self) -> int:
        return self._generation

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, as the consumer's metadata says (what the assignor
        used), or None if that is not known (not started, or a topic it has not seen)."""
        consumer = self._consumer
        if consumer is None:
            return None
        return len(consumer._client.cluster.partitions_for_topic(topic) or ()) or None

    def _assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self._assignment = partitions
        self._generation += 1
        self.copartitioning = None
        consumer = self._consumer
        if consumer is None:
            return
        cluster = consumer._client.cluster  # the metadata the assignor just used
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in consumer.subscription()}
        self.copartitioning = copartitioning_problem(counts)
        if self.copartitioning is not None:
            log.error(
                "ingress topics are not co-partitioned: a case's events may reach two workers; "
                "give every ingress topic the same partition count (tiaki provision)",
                problem=self.copartitioning,
            )

    async def missing_topics(self, topics: Collection[str]) -> frozenset[str]:
        # The consumer's client: the producer is replaced after a failed transaction, and a
        # look on the stopped one would open a connection nothing closes.
        consumer, _ = self._check_open()
        return await _missing(consumer._client, topics)

    async def lag(self) -> dict[TopicPartition, int]:
        """Records waiting on each assigned partition: the high watermark the last fetch saw,
        minus this worker's position (for the consumer-lag metric; no network round trip)."""
        if self._state != "open" or self._consumer is None:
            return {}
        consumer = self._consumer
        out: dict[TopicPartition, int] = {}
        for topic, partition in sorted(self._assignment):
            tp = KafkaTopicPartition(topic, partition)
            high = consumer.highwater(tp)
            if high is None:
                continue
            # A partition whose position is being reset (after a rebalance, its committed
            # offset held by a pending transaction) would have position() wait for it, and
            # the gauge would stall the observer, and a stop; it is skipped this time.
            with contextlib.suppress(kafka_errors.KafkaError, AssertionError, TimeoutError):
                async with asyncio.timeout(LAG_POSITION_WAIT_S):
                    position = await consumer.position(tp)
                out[(topic, partition)] = max(0, high - position)
        return out

    async def start(self) -> None:
        if self._state != "new":
            raise TransportClosed("a transport starts once")
        self._state = "open"
        check_aiokafka()  # before any client exists: no unfenced commit on an aiokafka it moved
        # The producer first: its InitProducerId fences a zombie with the same transactional
        # id (and aborts its open transaction) before this worker joins the group.
        self._producer = self._new_producer()
        self._consumer = self._new_consumer()
        with _translated():
            await self._producer.start()
            await self._consumer.start()
            # Its group coordinator exists from start(); it fetches offsets once subscribed.
            require_stable_offsets(self._consumer)
            listener = _Listener(self)
            if self._topics is not None:
                self._consumer.subscribe(topics=list(self._topics), listener=listener)
            else:
                self._consumer.subscribe(pattern=self._pattern, listener=listener)

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        # Let an in-flight commit or abort finish first (bounded: its own timeouts apply).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout_s), self._lock:
                pass
        failures: list[BaseException] = []
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                await client.stop()
            except Exception as exc:  # each client must still get its stop
                failures.append(exc)
        if failures:
            raise translate(failures[0]) from failures[0]

    def _check_open(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        if self._state != "open" or self._consumer is None or self._producer is None:
            raise TransportClosed(f"worker {self.worker_id} is {self._state}")
        return self._consumer, self._producer

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        consumer, _ = self._check_open()
        if self._misplaced:  # a seek failed: nothing is read until it has worked
            await self._place(consumer)
        epoch = self._epoch
        with _translated():
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        if self._epoch != epoch:
            # Partitions were revoked while we waited. Drop what came back and put the
            # partitions we (again) own at their committed offsets, whichever assignment
            # the records were fetched under (so never at the first offset returned).
            # Noted before any await: if a seek fails, the consumer stands past records the
            # ledger never saw, and the next poll or rewind must seek again.
            self._misplaced.update((tp.topic, tp.partition) for tp in batches)
            await self._place(consumer)
            return []
        records = [_record(m) for messages in batches.values() for m in messages]
        self._ledger.polled(records)
        return records

    async def commit(self, outputs: Sequence[Outgoing], consumed: Sequence[Record]) -> None:
        self._check_open()
        if self._broken is not None:
            raise self._broken
        if not outputs and not consumed:
            return
        # The generation the caller made the batch under (no await since it could look): a
        # revocation already waiting for the lock would otherwise run first, and a transaction
        # of escalations alone would then commit with no offsets to be fenced by.
        generation = self._generation
        task = asyncio.ensure_future(self._commit(list(outputs), list(consumed), generation))
        # If the caller is cancelled, the commit or abort still runs to the end; close()
        # waits for it through the lock. Retrieve its outcome so it is never "unhandled".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(task)

    async def rewind(self) -> None:
        consumer, _ = self._check_open()
        async with self._lock:  # not during a commit or a rebalance
            # The committed offset, not the first polled one: a poll that overlapped a failed
            # commit's rewind may have seen the old position.
            await self._rewind_to_committed(consumer)

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self._consumer_options,
            **self._profile.aiokafka_kwargs(),
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=ASSIGNORS,
        )

    def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            # One batch per partition per transaction (see _send_batched): room for a poll's
            # worth of 1 KiB records, well under Kafka's default 1 MiB message.max.bytes.
            **({"max_batch_size": 512 * 1024} | self._producer_options),
            **self._profile.aiokafka_kwargs(),
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            transaction_timeout_ms=self._transaction_timeout_ms,
        )
        fence_producer(producer)
        return producer

    async def _commit(
        self, outputs: Sequence[Outgoing], consumed: Sequence[Record], generation: int
    ) -> None:
        async with self._lock:
            consumer, producer = self._check_open()
            try:
                if self._generation != generation:
                    raise PartitionsRevoked("partitions changed hands before the commit began")
                offsets = self._ledger.to_commit(consumed, self._assignment)
            except PartitionsRevoked:
                self._rewind_to_first_polled(consumer)
                raise
            member = group_metadata(consumer)
            if member is None and (offsets or self._assignment):
                # aiokafka dropped the membership (a heartbeat was refused): the group has
                # expelled this worker, and its revocation comes with the rejoin.
                self._rewind_to_first_polled(consumer)
                raise PartitionsRevoked("this worker is no longer a member of its group")
            began = False
            try:
                async with asyncio.timeout(self._commit_timeout_s):
                    # The offsets the group coordinator checks the membership against.
                    fenced = offsets or await self._unchanged_offset(consumer)
                    await producer.begin_transaction()
                    began = True
                    deliveries = await _send_batched(
                        producer, outputs, self._compressed, self._codec
                    )
                    # Before the offsets (see the module docs: not during a produce), and
                    # before the commit, which would commit without a refused batch.
                    await _delivered(deliveries)
                    if fenced and member is not None:
                        await producer.send_offsets_to_transaction(
                            {KafkaTopicPartition(*tp): o for tp, o in fenced.items()},
                            MemberGroupId(member),  # KIP-447: the coordinator checks it
                        )
                    await producer.commit_transaction()
            except Exception as exc:
                self._committed.clear()
                cause = _sender_failure(producer) or exc
                error = await self._recover(consumer, producer, translate(cause), began)
                raise error from exc
            self._committed.update(fenced)
            self._ledger.committed(offsets)

    async def _unchanged_offset(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """For a transaction that consumes nothing (escalations, audit checkpoints), one
        assigned partition's committed offset, committed again unchanged: without offsets the
        group coordinator has no membership to check, and an expelled worker's transaction
        would land. Empty if there is no assigned partition with a committed offset (then
        there is nothing of another worker's to duplicate either: escalations follow the
        assignment)."""
        for tp in sorted(self._assignment):
            if tp in self._committed:
                return {tp: self._committed[tp]}
        for tp in sorted(self._assignment)[:1]:  # one round trip at most
            with _translated():
                offset = await consumer.committed(KafkaTopicPartition(*tp))
            if offset is not None:
                self._committed[tp] = offset
                return {tp: offset}
        return {}

    async def _recover(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        error: TransportError,
        began: bool,
    ) -> TransportError:
        """After a failed transaction: make sure nothing of it can still become visible,
        rewind the consumer, and return the error to raise.

        aiokafka's abort is not enough. When Kafka refuses to add a partition to the
        transaction, aiokafka clears its list of the transaction's partitions, still sends
        the batches waiting for them, and then "aborts" locally without an EndTxn because it
        believes the transaction empty; the next transaction's commit then commits those
        batches too (seen on Kafka 4.3 with aiokafka 0.14). So after any failed transaction
        the producer is replaced by a new one with the same transactional id: its
        InitProducerId bumps the epoch, which fences the old producer's stray batches and
        makes the coordinator abort whatever it left open.
        The consumer then goes back to the group's committed offsets, which are right
        whatever the old transaction's outcome was.
        """
        if isinstance(error, ProducerFenced):
            self._broken = error
            self._rewind_to_first_polled(consumer)
            return error
        if began:
            try:
                async with asyncio.timeout(self._commit_timeout_s):
                    await producer.abort_transaction()
            except Exception as exc:  # fatal state, or the coordinator did not answer
                if isinstance(translate(exc), ProducerFenced):
                    self._broken = translate(exc)
                    self._rewind_to_first_polled(consumer)
                    return self._broken
        if began:
            try:
                await self._replace_producer(producer)
            except Exception as exc:
                self._broken = TransportError(
                    f"could not replace the producer after a failed transaction "
                    f"({type(exc).__name__}); restart the worker",
                    retriable=False,
                )
                self._ledger.rewind()
                return self._broken
        try:
            await self._rewind_to_committed(consumer)
        except (TransportError, TimeoutError) as exc:
            self._broken = TransportError(
                f"could not rewind after a failed transaction ({exc}); restart the worker",
                retriable=False,
            )
            return self._broken
        return error

    async def _replace_producer(self, old: AIOKafkaProducer) -> None:
        new = self._new_producer()
        try:
            async with asyncio.timeout(self._commit_timeout_s):
                await new.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await new.stop()
            raise
        self._producer = new
        # The old one's remaining batches now fail with an epoch error; stop it quietly.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await old.stop()

    async def _rewind_to_committed(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every partition with outstanding records to its committed offset."""
        self._misplaced.update(self._ledger.rewind())
        await self._place(consumer)

    async def _place(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every partition whose position is in doubt to its committed offset; those a
        failure (raised) leaves unsought stay in doubt, for the next poll or rewind."""
        with _translated():
            async with asyncio.timeout(self._commit_timeout_s):
                for tp in sorted(self._misplaced):
                    if tp in self._assignment:
                        await self._seek_committed(consumer, KafkaTopicPartition(*tp))
                    self._misplaced.discard(tp)

    def _rewind_to_first_polled(self, consumer: AIOKafkaConsumer) -> None:
        for (topic, partition), offset in self._ledger.rewind().items():
            if (topic, partition) in self._assignment:
                consumer.seek(KafkaTopicPartition(topic, partition), offset)

    @staticmethod
    async def _seek_committed(consumer: AIOKafkaConsumer, tp: KafkaTopicPartition) -> None:
        offset = await consumer.committed(tp)
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        async with self._lock:  # waits for any in-flight commit or abort
            if partitions:  # the first join revokes nothing, and nothing was fetched before
                self._epoch += 1
                self._generation += 1
            self._ledger.revoked(partitions)
            # aiokafka puts partitions it assigns again at their committed offsets itself.
            self._misplaced -= partitions
            self._committed.clear()
            self._assignment = frozenset()


class KafkaPublisher(ResourceBase):
    """An idempotent producer for single records (``acks=all``); see :class:`Publisher`."""

    def __init__(self, profile: Profile, **producer_options: Any) -> None:
        self._profile = profile
        self._options = producer_options
        self._producer: AIOKafkaProducer | None = None
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise TransportClosed("a publisher starts once")
        self._state = "open"
        self._producer = AIOKafkaProducer(
            **self._options, **self._profile.aiokafka_kwargs(), enable_idempotence=True, acks="all"
        )
        with _translated():
            await self._producer.start()

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        if self._producer is not None:
            with _translated():
                await asyncio.shield(self._producer.stop())

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()
    ) -> Record:
        if self._state != "open" or self._producer is None:
            raise TransportClosed("publisher is not open")
        with _translated():
            meta = await self._producer.send_and_wait(topic, value, key=key, headers=list(headers))
        return Record(topic, meta.partition, meta.offset, key, value, headers, meta.timestamp)


#: How long a one-shot command (``tiaki review list``, ``tiaki quarantine list``) waits for
#: the cluster to answer when it connects (``connect_timeout_s``). A Kafka that is up answers
#: in milliseconds; without a bound, a port that takes the connection but never answers (a
#: TLS terminator with nothing behind it, a hung broker) holds the command for aiokafka's
#: ``request_timeout_ms``, 40 s per bootstrap server, before it fails. 15 s leaves a slow
#: network room while an operator still sees the failure soon. The broker worker's clients
#: (its transactions, its state reads) are not bounded by it.
CONNECT_TIMEOUT_S = 15.0


def no_answer(profile: Profile, seconds: float) -> str:
    """What to tell an operator when Kafka did not answer a connection within ``seconds``."""
    where = profile.source if profile.source is not None else "the connection profile"
    return (
        f"no answer from Kafka at {profile.bootstrap_servers} within {seconds:g} s: check "
        f"that Kafka is up and that {where} names it (bootstrap_servers)"
    )


class KafkaReader(ResourceBase):
    """Reads whole topics read-committed, with no consumer group; see :class:`Reader`.

    A read ends when every partition reached its *high watermark* as of the read's start,
    every transaction open then having ended: a read-committed consumer's own end offsets are
    last stable offsets, which stop short of a transaction still in flight. A worker that takes
    partitions over reads the state topics this way, so a transaction its predecessor (or a
    zombie of it) committed just before the handover is in what it reads, not lost behind the
    last stable offset while the new owner processes on state without it (a recipient that had
    just left a case would still be in it). The high watermarks come from a second, read-
    uncommitted consumer used for nothing else. ``timeout_s`` bounds a read (then
    :class:`Unavailable`; the worker's state re-read tries again, and a transaction Kafka has
    not ended within its timeout is aborted by then).

    ``connect_timeout_s`` bounds :meth:`start`, the wait for the cluster to answer (then
    :class:`Unavailable` naming the bootstrap servers). One-shot commands pass
    :data:`CONNECT_TIMEOUT_S`; the default, None, leaves it to aiokafka, which gives each
    bootstrap server ``request_timeout_ms`` (40 s) to answer, as the broker worker's reads do.
    """

    def __init__(
        self, profile: Profile, *, timeout_s: float = 30.0, connect_timeout_s: float | None = None
    ) -> None:
        self._profile = profile
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        #: Read-uncommitted, for high watermarks only: it never fetches.
        self._marks: AIOKafkaConsumer | None = None
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise TransportClosed("a reader starts once")
        self._state = "open"
        self._consumer = AIOKafkaConsumer(
            **self._profile.aiokafka_kwargs(),
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            # A start offset that retention has since deleted reads on from the log's start.
            auto_offset_reset="earliest",
        )
        self._marks = AIOKafkaConsumer(
            **self._profile.aiokafka_kwargs(),
            group_id=None,
            isolation_level="read_uncommitted",
            enable_auto_commit=False,
        )
        bound = self._connect_timeout_s
        try:
            async with asyncio.timeout(bound):  # None: no bound
                with _translated():  # aiokafka's own timeouts come out as Unavailable
                    await self._consumer.start()
                    await self._marks.start()
        except TimeoutError:  # so only the bound raises this
            if bound is None:
                raise
            raise Unavailable(no_answer(self._profile, bound)) from None

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        failed: BaseException | None = None
        for consumer in (self._consumer, self._marks):  # each, even if the first one fails
            if consumer is not None:
                try:
                    with _translated():
                        await asyncio.shield(consumer.stop())
                except TransportError as exc:
                    failed = failed or exc
        if failed is not None:
            raise failed

    async def read_all(self, topic: str) -> list[Record]:
        return await self.read_from(topic, {})

    def _open_consumer(self) -> AIOKafkaConsumer:
        if self._state != "open" or self._consumer is None:
            raise TransportClosed("reader is not open")
        return self._consumer

    async def read_from(
        self, topic: str, start: Mapping[int, int], *, limit: int | None = None
    ) -> list[Record]:
        consumer = self._open_consumer()
        try:
            # The bound outside the translation, so that only the bound's expiry is the
            # TimeoutError caught here (aiokafka's own come out as Unavailable).
            async with asyncio.timeout(self._timeout_s):
                with _translated():
                    records = await self._read(consumer, topic, start, limit)
        except TimeoutError:
            raise Unavailable(f"{topic}: not read to its end within {self._timeout_s} s") from None
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    async def missing_topics(self, topics: Collection[str]) -> frozenset[str]:
        return await _missing(self._open_consumer()._client, topics)

    async def offsets_at(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        consumer = self._open_consumer()
        try:
            async with asyncio.timeout(self._timeout_s):  # outside, as in read_from
                with _translated():
                    partitions = await _partitions(consumer, topic)
                    found = await consumer.offsets_for_times(
                        dict.fromkeys(partitions, timestamp_ms)
                    )
                    ends = await consumer.end_offsets(partitions)
        except TimeoutError:
            raise Unavailable(f"{topic}: offsets not found within {self._timeout_s} s") from None
        return {
            tp.partition: found[tp].offset if found.get(tp) is not None else ends[tp]
            for tp in partitions
        }

    async def _read(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        start: Mapping[int, int],
        limit: int | None,
    ) -> list[Record]:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for tp in partitions:
            if start.get(tp.partition, 0) > 0:
                consumer.seek(tp, start[tp.partition])
        # High watermarks (see the class docs): a read-committed consumer's position passes
        # committed records, aborted ones and transaction markers alike, so it reaches each
        # one once the transactions open now have ended.
        ends = await self._high_watermarks(partitions)
        records: list[Record] = []
        while pending := [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if limit is not None and len(records) >= limit:
                break
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, messages in batches.items():
                records.extend(_record(m) for m in messages if m.offset < ends[tp])
        # No unsubscribe(): after a manual assign() it leaves aiokafka's stop() hanging; the
        # next read assigns afresh anyway.
        return records

    async def _high_watermarks(
        self, partitions: Sequence[KafkaTopicPartition]
    ) -> dict[KafkaTopicPartition, int]:
        marks = self._marks
        if marks is None:
            raise TransportClosed("reader is not open")
        found: dict[KafkaTopicPartition, int] = await marks.end_offsets(partitions)
        return found


async def _missing(client: Any, topics: Collection[str]) -> frozenset[str]:
    """Those of ``topics`` not in a fresh metadata response for every topic: absent, or not
    described to this principal (Kafka lists only the topics it may describe)."""
    with _translated():
        cluster = await client.fetch_all_metadata()  # a new ClusterMetadata: the client's own
    return frozenset(t for t in topics if not cluster.partitions_for_topic(t))


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[KafkaTopicPartition]:
    """The topic's partitions, or a clear error if it is missing or not readable."""
    cluster = await consumer._client.fetch_all_metadata()  # what consumer.topics() uses
    if topic in cluster.unauthorized_topics:
        raise NotAuthorized(f"{topic}: reads refused")
    numbers = cluster.partitions_for_topic(topic)
    if not numbers:
        raise TransportError(f"{topic}: no such topic (run `tiaki provision`)")
    return [KafkaTopicPartition(topic, p) for p in sorted(numbers)]


async def _send_batched(
    producer: AIOKafkaProducer,
    outputs: Sequence[Outgoing],
    compressed: Collection[str] = (),
    codec: int = 0,
) -> list[asyncio.Future[Any]]:
    """Send ``outputs`` as one record batch per partition, each in the order given; batches
    for a topic in ``compressed`` are compressed with ``codec`` (a record-batch codec number).
    Returns the batches' delivery futures, for :func:`_delivered`.

    ``producer.send`` costs tens of microseconds of Python per record (a future, a partitioner
    call, an accumulator lookup); filling a batch builder per partition and handing it over
    whole costs a few. Partitions follow Kafka's default partitioner for keyed records, as
    ``send`` would place them; records without a key are spread round-robin. A full builder
    is sent and a new one started, so order within a partition is kept.
    """
    by_partition: dict[tuple[str, int], list[Outgoing]] = {}
    spread: dict[str, int] = {}
    #: An event's egress records share its case key: hash each key once (murmur2 is Python).
    placed: dict[tuple[bytes, int], int] = {}
    counts: dict[str, int] = {}  # partitions per topic, asked once per transaction
    for out in outputs:
        count = counts.get(out.topic, 0)
        if not count:
            count = counts[out.topic] = len(await producer.partitions_for(out.topic))
        if out.key is not None:
            partition = placed.get((out.key, count), -1)
            if partition < 0:
                partition = placed[out.key, count] = partition_for(out.key, count)
        else:
            partition = spread.get(out.topic, 0) % count
            spread[out.topic] = partition + 1
        by_partition.setdefault((out.topic, partition), []).append(out)
    deliveries: list[asyncio.Future[Any]] = []
    for (topic, partition), records in by_partition.items():
        builder = _builder(producer, codec if topic in compressed else 0)
        batch = builder()
        for out in records:
            headers = list(out.headers)
            if batch.append(key=out.key, value=out.value, timestamp=None, headers=headers) is None:
                # Full (append closed it). A new builder always takes its first record, so
                # a record larger than a batch still goes, in a batch of its own.
                deliveries.append(await _submit(producer, batch, topic, partition))
                batch = builder()
                batch.append(key=out.key, value=out.value, timestamp=None, headers=headers)
        deliveries.append(await _submit(producer, batch, topic, partition))
    return deliveries


def _builder(producer: AIOKafkaProducer, codec: int) -> Callable[[], Any]:
    """Makes empty record batches for ``producer`` compressed with ``codec`` (0: none).

    The producer's own ``create_batch`` uses its one ``compression_type`` for every topic;
    this is the same builder with the codec chosen per topic (the batch size and the
    transactional flag are the producer's, as ``create_batch`` would set them)."""
    if not codec:
        return lambda: producer.create_batch()
    accumulator = producer._message_accumulator
    transactional = producer._txn_manager is not None
    return lambda: BatchBuilder(accumulator._batch_size, codec, is_transactional=transactional)


async def _submit(
    producer: AIOKafkaProducer, batch: Any, topic: str, partition: int
) -> asyncio.Future[Any]:
    batch.close()  # so no ``send`` can add to it behind our back
    delivery: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
    delivery.add_done_callback(_retrieve)
    return delivery


#: Produce errors about the records themselves: the same records would be refused again, so
#: retrying the transaction cannot help (the worker stops and says so rather than loop).
_REFUSED_RECORDS = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
)


async def _delivered(deliveries: Sequence[asyncio.Future[Any]]) -> None:
    """Wait until Kafka has answered for every batch of ``deliveries``; raise the first
    refusal as a :class:`TransportError` (the transaction must then abort, not commit).

    Fencing, ACLs and timeouts translate as anywhere else. A refusal of the records
    themselves (:data:`_REFUSED_RECORDS`) is not retriable; any other, such as
    ``INVALID_TXN_STATE``, is :class:`CommitFailed`, which a replaced producer may not meet."""
    if deliveries:
        await asyncio.wait(deliveries)
    for delivery in deliveries:
        exc = delivery.exception() if not delivery.cancelled() else asyncio.CancelledError()
        if exc is None:
            continue
        refused = f"{type(exc).__name__}: Kafka refused a batch of the transaction"
        error = translate(exc)
        if isinstance(exc, _REFUSED_RECORDS):
            error = TransportError(refused, retriable=False)
        elif type(error) is TransportError:
            error = CommitFailed(refused)
        raise error from exc
