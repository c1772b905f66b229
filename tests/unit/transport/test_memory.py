"""What the in-memory cluster offers beyond the shared contract: fault injection, fencing,
pattern subscriptions, Kafka's partitioner, provisioned topics, offsets with marker gaps."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import DefaultPartitioner

from broker.platform import AUDIT, egress, ingress
from broker.transport import (
    CommitFailed,
    InMemoryCluster,
    NotAuthorized,
    Outgoing,
    PartitionsRevoked,
    ProducerFenced,
    TransportError,
    Unavailable,
    partition_for,
)

POLICE = ingress("police")


@pytest.mark.parametrize("key", [b"", b"a", b"case-1", b"0123456789abcdef" * 5])
def test_partition_for_matches_kafkas_default_partitioner(key: bytes) -> None:
    partitions = list(range(6))
    assert partition_for(key, 6) == DefaultPartitioner()(key, partitions, partitions)


async def test_fail_next_commit_aborts_once_and_redelivers() -> None:
    cluster = InMemoryCluster.provisioned(["police", "msd"])
    async with cluster.publisher() as pub, cluster.worker("g", "w") as worker:
        await pub.publish(POLICE, b"case", b"1")
        batch = await worker.poll(10, 0)
        cluster.fail_next_commit(Unavailable("coordinator away"))
        with pytest.raises(Unavailable):
            await worker.commit([Outgoing(AUDIT, b"case", b"a")], batch)
        assert cluster.committed("g") == {}
        again = await worker.poll(10, 0)
        assert [r.offset for r in again] == [r.offset for r in batch]
        await worker.commit([Outgoing(AUDIT, b"case", b"a")], again)
    assert cluster.committed("g") == {(POLICE, batch[0].partition): batch[0].offset + 1}
    async with cluster.reader() as reader:
        audit = await reader.read_all(AUDIT)
    assert [r.value for r in audit] == [b"a"]
    # the aborted record and both transaction markers took offsets, as on Kafka
    assert audit[0].offset == 2


async def test_default_failure_is_retriable_commit_failed() -> None:
    cluster = InMemoryCluster()
    cluster.fail_next_commit()
    async with cluster.worker("g", "w") as worker:
        with pytest.raises(CommitFailed) as raised:
            await worker.commit([Outgoing("t", None, b"x")], [])
    assert raised.value.retriable


async def test_fail_next_poll() -> None:
    cluster = InMemoryCluster()
    cluster.fail_next_poll()
    async with cluster.worker("g", "w") as worker:
        with pytest.raises(TransportError):
            await worker.poll(1, 0)
        assert await worker.poll(1, 0) == []


async def test_same_worker_id_fences_the_older_instance_even_across_groups() -> None:
    cluster = InMemoryCluster()
    async with cluster.worker("g1", "w") as old, cluster.worker("g2", "w") as new:
        with pytest.raises(ProducerFenced):
            await old.commit([Outgoing("t", None, b"x")], [])
        await new.commit([Outgoing("t", None, b"y")], [])


async def test_pattern_subscription_picks_up_new_ingress_topics() -> None:
    cluster = InMemoryCluster(partitions=2)
    async with cluster.worker() as worker:
        assert worker.assignment() == frozenset()
        cluster.create_topic(ingress("msd"))
        cluster.create_topic(egress("msd"))
        assert worker.assignment() == {(ingress("msd"), 0), (ingress("msd"), 1)}


async def test_provisioned_cluster_refuses_unknown_topics() -> None:
    cluster = InMemoryCluster.provisioned(["police"])
    async with cluster.publisher() as pub:
        with pytest.raises(NotAuthorized):
            await pub.publish("tiaki.nowhere", None, b"x")


async def test_poll_waits_for_data_until_the_timeout() -> None:
    cluster = InMemoryCluster.provisioned(["police"])
    async with cluster.worker("g", "w") as worker, cluster.publisher() as pub:
        assert await worker.poll(10, 20) == []
        await pub.publish(POLICE, None, b"x")
        assert [r.value for r in await worker.poll(10, 20)] == [b"x"]


def test_records_do_not_print_their_values() -> None:
    cluster_record = Outgoing("t", b"secret-key", b"secret-value")
    assert "secret" not in repr(cluster_record)


async def test_every_assignment_is_a_new_generation_even_with_the_same_partitions() -> None:
    """A worker that loses its partitions and gets the same ones back (another worker held
    them in between) sees the same set but a new generation: the worker re-reads its state."""
    cluster = InMemoryCluster.provisioned(["police"])
    async with cluster.worker("g", "a") as a:
        before, generation = a.assignment(), a.assignment_generation()
        assert generation >= 1
        async with cluster.worker("g", "b"):
            assert a.assignment() != before
        assert a.assignment() == before
        assert a.assignment_generation() >= generation + 2


async def test_a_refused_produce_aborts_the_whole_transaction() -> None:
    """Kafka refusing one record (too large) must abort the transaction: neither the other
    records nor the offsets commit, and the batch is polled again."""
    cluster = InMemoryCluster.provisioned(["police", "msd"])
    msd = egress("msd")
    async with cluster.publisher() as pub, cluster.worker("g", "w") as worker:
        await pub.publish(POLICE, b"case", b"1")
        batch = await worker.poll(10, 0)
        cluster.refuse_next_produce(msd)
        with pytest.raises(TransportError) as raised:
            await worker.commit(
                [Outgoing(AUDIT, b"case", b"a"), Outgoing(msd, b"case", b"x")], batch
            )
        assert not raised.value.retriable  # the same record would be refused again
        assert cluster.committed("g") == {}
        again = await worker.poll(10, 0)
        assert [r.offset for r in again] == [r.offset for r in batch]
    async with cluster.reader() as reader:
        assert await reader.read_all(AUDIT) == []
        assert await reader.read_all(msd) == []


async def test_a_rebalance_while_a_commit_waits_refuses_it() -> None:
    """A commit made for the partitions a worker had must not land once they changed hands,
    even one that consumes nothing (escalations), which the ledger cannot refuse."""
    cluster = InMemoryCluster.provisioned(["police", "msd"])
    cluster.delay_commits(0.05)
    async with cluster.worker("g", "w1") as worker:
        commit = asyncio.ensure_future(worker.commit([Outgoing(AUDIT, b"req", b"escalated")], []))
        await asyncio.sleep(0)
        async with cluster.worker("g", "w2"):
            with pytest.raises(PartitionsRevoked):
                await commit
    async with cluster.reader() as reader:
        assert await reader.read_all(AUDIT) == []


async def test_a_worker_taken_over_while_its_commit_is_in_flight_commits_nothing() -> None:
    """As on Kafka: the newer worker's InitProducerId aborts the open transaction, and the old
    one's EndTxn is fenced."""
    cluster = InMemoryCluster(partitions=1)
    cluster.create_topic("tiaki.ingress.a")
    cluster.create_topic("tiaki.egress.b")
    async with cluster.publisher() as publisher:
        await publisher.publish("tiaki.ingress.a", b"k", b"v")
    old = cluster.worker(worker_id="0")
    await old.start()
    await old.commit([], await old.poll(10, 10))
    cluster.delay_commits(0.05)
    commit = asyncio.create_task(old.commit([Outgoing("tiaki.egress.b", b"k", b"out")], []))
    await asyncio.sleep(0.01)
    new = cluster.worker(worker_id="0")  # the same transactional id
    await new.start()
    with pytest.raises(ProducerFenced):
        await commit
    async with cluster.reader() as reader:
        assert await reader.read_all("tiaki.egress.b") == []
    await new.close()
