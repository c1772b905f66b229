"""The transport contract on the real, secured Kafka (the same tests run on the fake).

The broker principal runs the workers; an agency publishes to its own ingress topic and reads
its own egress topic, as in production. Each test uses a fresh consumer group
(``tiaki-broker-test-…``) whose offsets start at the current end of the input topic, and
unique transactional ids, so tests neither interfere nor fence each other.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from broker.platform import AUDIT, PLAIN_TOPICS, Profile, egress, ingress
from broker.transport import KafkaPublisher, KafkaReader, KafkaTransport, Outgoing, Record
from tests.contract.transport_suite import (
    TOKEN_HEADER,
    TransportContract,
    drain,
    mine,
    outputs_for,
    publish,
    read_outputs,
)
from tests.integration.conftest import Cluster

AGENCY = "school-central"  # a quiet agency: other integration tests use police and health
FORBIDDEN = ingress("corrections")  # the broker may read ingress topics, never write them
#: Rejoin quickly when a second worker joins, so the tests do not wait on heartbeats.
FAST_GROUP = {"heartbeat_interval_ms": 200, "session_timeout_ms": 6000}


@dataclass
class KafkaHarness:
    broker: Profile
    agency: Profile
    input_topic: str = ingress(AGENCY)
    output_topic: str = egress(AGENCY)
    partitions: int = 3
    token: bytes = field(default_factory=lambda: uuid.uuid4().hex.encode())

    async def new_group(self) -> str:
        group = f"tiaki-broker-test-{uuid.uuid4().hex[:10]}"
        consumer = AIOKafkaConsumer(
            **self.broker.aiokafka_kwargs(), group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.input_topic, p) for p in range(self.partitions)]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.commit(dict(ends.items()))
        finally:
            await consumer.stop()
        return group

    def worker(
        self, group_id: str, name: str, consumer_options: dict[str, int] = FAST_GROUP
    ) -> KafkaTransport:
        return KafkaTransport(
            self.broker,
            worker_id=f"{group_id.removeprefix('tiaki-broker-')}-{name}",
            group_id=group_id,
            topics=[self.input_topic],
            consumer_options=consumer_options,
        )

    def publisher(self) -> KafkaPublisher:
        return KafkaPublisher(self.agency)

    def reader(self) -> KafkaReader:
        return KafkaReader(self.agency)

    def output(self, value: str) -> Outgoing:
        return Outgoing(self.output_topic, None, value.encode(), ((TOKEN_HEADER, self.token),))

    def poison(self) -> Outgoing:
        return Outgoing(FORBIDDEN, b"k", b"the broker may not write here")


@pytest.fixture
def harness(cluster: Cluster) -> KafkaHarness:
    return KafkaHarness(cluster.profile("broker"), cluster.profile(AGENCY))


class TestKafkaTransport(TransportContract):
    pass


async def test_no_produce_is_retried_for_a_concurrent_transaction_change(
    harness: KafkaHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Thirty transactions of records (300 KB each) and offsets commit without one produce
    retry.

    Before the transport waited for its records before adding the consumed offsets, Kafka's
    produce verification (KIP-890) met the offsets' change to the same transaction and
    answered NOT_ENOUGH_REPLICAS, which aiokafka retries after ``retry_backoff_ms`` and logs as
    a warning (see the transport's module docs); without the wait, this test saw 6 of them."""
    count, per_poll = 300, 10
    group = await harness.new_group()
    await publish(harness, [(f"SYN-KEY-{i}".encode(), b"v" * 30_000) for i in range(count)])
    transactions = 0
    caplog.set_level(logging.WARNING, logger="aiokafka.producer.sender")
    async with harness.worker(group, "w1") as worker:
        got: list[Record] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(got) < count:
            assert asyncio.get_running_loop().time() < deadline, f"only {len(got)} of {count}"
            batch = await worker.poll(max_records=per_poll, timeout_ms=200)
            if batch:
                await worker.commit(outputs_for(harness, mine(harness, batch)), batch)
                transactions += 1
                got.extend(mine(harness, batch))
    assert transactions >= count // per_poll
    assert len(await read_outputs(harness, count)) == count
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []


def _batch_codecs(segment: bytes) -> list[int]:
    """The compression codec of every record batch in a Kafka log segment (the on-disk
    format is the wire format: base offset, length, then the batch, whose attributes sit at
    byte 21 and name the codec in their low three bits)."""
    codecs, at = [], 0
    while at + 23 <= len(segment):
        length = int.from_bytes(segment[at + 8 : at + 12], "big")
        if length <= 0:
            break  # preallocated zeros at the end of an active segment
        codecs.append(int.from_bytes(segment[at + 21 : at + 23], "big") & 0x07)
        at += 12 + length
    return codecs


async def test_batches_for_compressed_topics_are_lz4_on_disk_and_read_back_whole(
    harness: KafkaHarness, cluster: Cluster
) -> None:
    """A topic in ``compressed_topics`` gets lz4 record batches (read off Kafka's own log
    files), and a read-committed consumer gets every record back as it was; the broker's
    default compresses its plain-Avro topics only, never a sealed one."""
    if cluster.kafka is None:
        pytest.skip("needs the local cluster's log files")
    group = await harness.new_group()
    count = 40
    await publish(harness, [(f"SYN-LZ4-{i}".encode(), b"synthetic " * 40) for i in range(count)])
    transport = KafkaTransport(
        harness.broker,
        worker_id=f"{group.removeprefix('tiaki-broker-')}-lz4",
        group_id=group,
        topics=[harness.input_topic],
        consumer_options=FAST_GROUP,
        compressed_topics=[harness.output_topic],
    )
    async with transport as worker:
        batch = mine(harness, await drain(harness, worker, count))
        await worker.commit(outputs_for(harness, batch), batch)
    got = await read_outputs(harness, count)
    assert sorted(r.value for r in got) == sorted(b"out:" + r.value for r in batch)
    segments = sorted((cluster.kafka.data).glob(f"{harness.output_topic}-*/*.log"))
    codecs = [c for path in segments for c in _batch_codecs(path.read_bytes())]
    assert 3 in codecs  # lz4
    assert AUDIT in PLAIN_TOPICS
    assert not any(t.startswith("tiaki.egress.") for t in PLAIN_TOPICS)
