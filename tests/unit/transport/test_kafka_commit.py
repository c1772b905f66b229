"""KafkaTransport's commit and poll on fake aiokafka clients: what Kafka refuses or drops on the
way is never committed past, and never skipped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.producer import sender as aiokafka_sender

from broker.transport import (
    CommitFailed,
    KafkaTransport,
    Outgoing,
    PartitionsRevoked,
    TransportError,
    Unavailable,
)
from broker.transport._kafka import _delivered, _send_batched

INPUT = ("tiaki.ingress.police", 0)
OUTPUT = "tiaki.egress.msd"


class FakeBatch:
    """A record batch builder, as far as ``_send_batched`` uses one."""

    def append(self, **record: Any) -> object:
        return record

    def close(self) -> None:
        pass


class FakeProducer:
    """A transactional producer whose deliveries fail with ``refusal`` (None: succeed)."""

    def __init__(self, refusal: BaseException | None = None) -> None:
        self.refusal = refusal
        self.calls: list[str] = []
        self._sender = SimpleNamespace(sender_task=None)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.calls.append("send")
        delivery = asyncio.get_running_loop().create_future()
        if self.refusal is None:
            delivery.set_result(None)
        else:
            delivery.set_exception(self.refusal)
        return delivery

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        self.calls.append("offsets")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


class FakeConsumer:
    """A group member on one partition of ``INPUT``; records 0-39 in it, 10 committed."""

    def __init__(self, transport: KafkaTransport) -> None:
        self.transport = transport
        self.committed_offset = 10
        self.position = 10
        self.rebalance_next = False
        self.coordinator_away = False
        self._coordinator = SimpleNamespace(
            generation=7, member_id="m-1", group_id="g", _group_instance_id=None
        )
        self._client = SimpleNamespace(
            cluster=SimpleNamespace(partitions_for_topic=lambda topic: {0})
        )

    def subscription(self) -> set[str]:
        return {INPUT[0]}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if self.rebalance_next:  # a rebalance completes while getmany waits
            self.rebalance_next = False
            await self.transport._revoked({INPUT})
            self.transport._assigned(frozenset({INPUT}))
            self.position = self.committed_offset  # aiokafka starts from the committed offset
        messages = [
            SimpleNamespace(
                topic=INPUT[0],
                partition=INPUT[1],
                offset=offset,
                key=b"k",
                value=b"v",
                headers=[],
                timestamp=0,
            )
            for offset in range(self.position, min(self.position + 5, 40))
        ]
        self.position += len(messages)
        return {KafkaTopicPartition(*INPUT): messages} if messages else {}

    async def committed(self, tp: KafkaTopicPartition) -> int:
        if self.coordinator_away:
            await asyncio.sleep(3600)
        return self.committed_offset

    def seek(self, tp: KafkaTopicPartition, offset: int) -> None:
        self.position = offset

    async def seek_to_beginning(self, tp: KafkaTopicPartition) -> None:
        self.position = 0


def open_transport(
    producer: FakeProducer | None = None,
) -> tuple[KafkaTransport, FakeConsumer, FakeProducer]:
    profile: Any = SimpleNamespace()
    transport = KafkaTransport(profile, worker_id="w", commit_timeout_s=0.2, compression=None)
    consumer = FakeConsumer(transport)
    producer = producer or FakeProducer()
    replacement = FakeProducer()
    transport._new_producer = lambda: replacement  # type: ignore[method-assign]
    transport._consumer, transport._producer, transport._state = consumer, producer, "open"  # type: ignore[assignment]
    transport._assigned(frozenset({INPUT}))
    return transport, consumer, producer


@pytest.mark.parametrize(
    ("refusal", "expected", "retriable"),
    [
        (kafka_errors.MessageSizeTooLargeError(), TransportError, False),
        (kafka_errors.CorruptRecordException(), TransportError, False),
        (kafka_errors.KafkaError(), CommitFailed, True),
        (kafka_errors.KafkaTimeoutError(), Unavailable, True),
    ],
)
async def test_a_refused_produce_aborts_the_transaction(
    refusal: BaseException, expected: type[TransportError], retriable: bool
) -> None:
    """aiokafka fails only the refused batch's future; flush and commit_transaction succeed.
    The commit must wait for every delivery and abort, never commit the offsets without it."""
    transport, consumer, producer = open_transport(FakeProducer(refusal))
    records = await transport.poll(500, 100)
    with pytest.raises(TransportError) as raised:
        await transport.commit([Outgoing(OUTPUT, b"case-1", b"sealed")], records)
    assert type(raised.value) is expected
    assert raised.value.retriable is retriable
    assert producer.calls == ["begin", "send", "abort", "stop"]  # no offsets, no commit
    assert transport._producer is not producer  # replaced: its strays are fenced
    assert consumer.position == 10  # rewound to the committed offset
    assert (await transport.poll(500, 100))[0].offset == 10


async def test_a_delivered_batch_commits() -> None:
    transport, _, producer = open_transport()
    records = await transport.poll(500, 100)
    await transport.commit([Outgoing(OUTPUT, b"case-1", b"sealed")], records)
    assert producer.calls == ["begin", "send", "offsets", "commit"]


async def test_a_message_too_large_answer_fails_the_delivery_on_real_aiokafka() -> None:
    """aiokafka's own producer, its sender's response handler and ``_send_batched``: the
    refusal reaches ``_delivered`` (no network)."""
    producer = AIOKafkaProducer(
        bootstrap_servers="localhost:1",
        transactional_id="tiaki-broker-0",
        enable_idempotence=True,
        acks="all",
    )

    async def metadata(topic: str) -> set[int]:
        return {0}

    producer.client._wait_on_metadata = metadata
    producer._metadata.partitions_for_topic = lambda topic: {0}
    producer._txn_manager.set_pid_and_epoch(1, 0)
    try:
        await producer.begin_transaction()
        deliveries = await _send_batched(producer, [Outgoing(OUTPUT, b"case-1", b"x" * 100)])
        tp = KafkaTopicPartition(OUTPUT, 0)
        producer._txn_manager.partition_added(tp)
        batch = producer._message_accumulator._batches[tp].popleft()  # the sender took it
        handler = aiokafka_sender.SendProduceReqHandler(producer._sender, {tp: batch})
        # Kafka answers the produce with MESSAGE_TOO_LARGE (10) for the partition.
        handler.handle_response(
            SimpleNamespace(API_VERSION=7, topics=[(OUTPUT, [(0, 10, -1, -1, -1)])])
        )
        await producer.flush()  # returns normally: aiokafka does not say
        with pytest.raises(TransportError) as raised:
            await _delivered(deliveries)
        assert "MessageSizeTooLarge" in str(raised.value)
        assert not raised.value.retriable
    finally:
        await producer.client.close()
        producer._closed = True  # never started: nothing else to stop


async def test_records_fetched_across_a_rebalance_are_not_skipped_when_the_seek_fails() -> None:
    """The poll that straddles a rebalance drops what it fetched and seeks back to the
    committed offset; if that seek fails, the next rewind (or poll) must seek again, not
    read on past records nobody processed."""
    transport, consumer, _ = open_transport()
    consumer.rebalance_next = True
    consumer.coordinator_away = True
    with pytest.raises(Unavailable):
        await transport.poll(500, 100)
    consumer.coordinator_away = False
    await transport.rewind()
    assert [r.offset for r in await transport.poll(500, 100)] == [10, 11, 12, 13, 14]


async def test_a_poll_seeks_first_where_a_seek_failed() -> None:
    transport, consumer, _ = open_transport()
    consumer.rebalance_next = True
    consumer.coordinator_away = True
    with pytest.raises(Unavailable):
        await transport.poll(500, 100)
    consumer.coordinator_away = False
    assert [r.offset for r in await transport.poll(500, 100)] == [10, 11, 12, 13, 14]


async def test_a_revocation_waiting_for_the_lock_refuses_a_commit_made_before_it() -> None:
    """The worker checks the assignment generation, then commits; a revocation that is
    already ready takes the free lock first. A transaction of escalations alone must then
    not commit (it would carry no offsets, so nothing would fence it)."""
    transport, _, producer = open_transport()
    revocation = asyncio.ensure_future(transport._revoked({INPUT}))
    with pytest.raises(PartitionsRevoked):
        await transport.commit([Outgoing("tiaki.audit", b"req-1", b"escalated")], [])
    await revocation
    assert producer.calls == []
