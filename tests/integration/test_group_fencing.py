"""KIP-447 on the real, secured Kafka: offsets committed in a transaction are fenced by the
consumer group, and a new owner waits for a pending transaction's offsets.

Both tests fail on the transport before KIP-447 (TxnOffsetCommit v0, OffsetFetch without
``require_stable``): the first delivers the expelled worker's outputs a second time, the
second hands the new owner offsets that the pending transaction is about to move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.protocol.group import LeaveGroupRequest

from broker.transport import KafkaTransport, Outgoing, PartitionsRevoked, Record
from tests.contract.transport_suite import TOKEN_HEADER, mine, publish, read_outputs
from tests.integration import test_transport_contract as contract
from tests.integration.conftest import Cluster

#: A zombie's heartbeats are rare enough that it cannot notice its expulsion during a test.
ZOMBIE_GROUP = {"heartbeat_interval_ms": 20_000, "session_timeout_ms": 60_000}


@pytest.fixture
def harness(cluster: Cluster) -> contract.KafkaHarness:
    return contract.KafkaHarness(cluster.profile("broker"), cluster.profile(contract.AGENCY))


def _outputs(harness: contract.KafkaHarness, name: str, values: list[bytes]) -> list[Outgoing]:
    """Outputs all on one partition (one key), so the last one read marks the end of all."""
    tag = ((TOKEN_HEADER, harness.token),)
    return [
        Outgoing(harness.output_topic, b"SYN-OUT", name.encode() + b":" + v, tag) for v in values
    ]


async def _poll_mine(
    worker: KafkaTransport, harness: contract.KafkaHarness, n: int
) -> list[Record]:
    got: list[Record] = []
    async with asyncio.timeout(20):
        while len(mine(harness, got)) < n:
            got.extend(await worker.poll(max_records=100, timeout_ms=200))
    return got


async def _expel(harness: contract.KafkaHarness, group: str, member_id: str) -> None:
    """Remove ``member_id`` from ``group`` at the group coordinator, as a session timeout
    would (without waiting for one): a LeaveGroup on the member's behalf."""
    client = AIOKafkaClient(**harness.broker.aiokafka_kwargs())
    await client.bootstrap()
    try:
        node = await client.coordinator_lookup(CoordinationType.GROUP, group)
        response = await client.send(
            node, LeaveGroupRequest(group, member_id), group=ConnectionGroup.COORDINATION
        )
        assert response.error_code == 0
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _transactional(harness: contract.KafkaHarness, group: str) -> AsyncIterator[Any]:
    producer = AIOKafkaProducer(
        **harness.broker.aiokafka_kwargs(),
        transactional_id=f"{group}-pending",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_an_expelled_worker_cannot_commit_what_its_successor_processed(
    harness: contract.KafkaHarness,
) -> None:
    """A worker the group expelled mid-batch (its heartbeats would only tell it later) commits
    after its successor has processed and committed the same records: the group coordinator
    refuses its offsets (TxnOffsetCommit v3 names its generation and member), the transaction
    aborts, and each input is delivered once, by the successor. Its next transaction, with
    nothing consumed, is refused the same way."""
    group = await harness.new_group()
    inputs = await publish(harness, [(f"SYN-KEY-{i}".encode(), b"in-%d" % i) for i in range(3)])
    async with harness.worker(group, "zombie", ZOMBIE_GROUP) as zombie:
        batch = await _poll_mine(zombie, harness, len(inputs))
        member_id = zombie._consumer._coordinator.member_id  # type: ignore[union-attr]
        await _expel(harness, group, member_id)
        async with harness.worker(group, "successor") as successor:
            taken = await _poll_mine(successor, harness, len(inputs))
            values = [r.value for r in mine(harness, taken)]
            await successor.commit(_outputs(harness, "successor", values), taken)
            with pytest.raises(PartitionsRevoked, match=r"UNKNOWN_MEMBER_ID|ILLEGAL_GENERATION"):
                await zombie.commit(
                    _outputs(harness, "zombie", [r.value for r in mine(harness, batch)]), batch
                )
            # Nor does a transaction that consumes nothing (a due escalation, say): it commits
            # an assigned partition's offset unchanged, for the coordinator to check.
            with pytest.raises(PartitionsRevoked, match=r"UNKNOWN_MEMBER_ID|ILLEGAL_GENERATION"):
                await zombie.commit(_outputs(harness, "zombie", [b"escalation"]), [])
            # Read-committed readers stop at the first open transaction on a partition: once
            # this later one is seen, the zombie's transaction before it has ended.
            await successor.commit(_outputs(harness, "successor", [b"end"]), [])
    delivered = [r.value for r in await read_outputs(harness, len(inputs) + 1)]
    assert sorted(delivered) == sorted(
        [b"successor:" + r.value for r in inputs] + [b"successor:end"]
    )


async def test_a_new_owner_waits_for_a_pending_transactions_offsets(
    harness: contract.KafkaHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """While a transaction holding offsets for a partition is pending, a worker assigned the
    partition is given no offset to start from (OffsetFetch ``require_stable``), so it polls
    nothing; once the transaction commits, it resumes exactly where that transaction left."""
    group = await harness.new_group()
    inputs = await publish(harness, [(b"SYN-KEY-ONE-CASE", b"in-%d" % i) for i in range(3)])
    tp = TopicPartition(harness.input_topic, inputs[0].partition)
    # aiokafka logs each committed-offset fetch it will retry, at debug level.
    caplog.set_level(logging.DEBUG, logger="aiokafka.consumer.group_coordinator")
    async with _transactional(harness, group) as pending:
        await pending.begin_transaction()
        # The first two inputs count as done in the pending transaction (group empty: v0 is
        # accepted without a member, which is how a worker's offsets got in before KIP-447).
        await pending.send_offsets_to_transaction({tp: inputs[2].offset}, group)
        async with harness.worker(group, "owner") as owner:
            early: list[Record] = []
            async with asyncio.timeout(20):
                while not owner.assignment():
                    early.extend(await owner.poll(max_records=100, timeout_ms=200))
            for _ in range(8):  # 1.6 s: far longer than a committed-offset fetch takes
                early.extend(await owner.poll(max_records=100, timeout_ms=200))
            assert mine(harness, early) == []
            assert any("UnstableOffsetCommit" in r.getMessage() for r in caplog.records)
            await pending.commit_transaction()
            after = await _poll_mine(owner, harness, 1)
            for _ in range(3):  # anything else would come with or soon after it
                after.extend(await owner.poll(max_records=100, timeout_ms=200))
            assert [r.value for r in mine(harness, after)] == [inputs[2].value]
