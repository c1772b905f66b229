"""One contract for every transport: the same tests run on the in-memory fake and real Kafka.

A test module subclasses :class:`TransportContract` (with a name starting ``Test``) and defines
a ``harness`` fixture returning a :class:`Harness`. Every test tags what it writes with the
harness's unique ``token`` header and ignores anything else, so tests sharing a real Kafka (and
its provisioned topics) cannot see each other's records, and it starts from a fresh consumer
group positioned at the current end of the input topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import pytest

from broker.transport import (
    Outgoing,
    PartitionsRevoked,
    ProducerFenced,
    Publisher,
    Reader,
    Record,
    TransactionalTransport,
    TransportClosed,
    TransportError,
    partition_for,
)

TOKEN_HEADER = "tiaki-test-token"
#: Generous for real Kafka (group joins, transaction markers), instant for the fake.
DEADLINE_S = 20.0


class Harness(Protocol):
    """What the contract needs from an implementation under test."""

    input_topic: str  # the workers subscribe to it; the publisher writes it
    output_topic: str  # workers' transactions write it; the reader reads it
    partitions: int  # of the input topic
    token: bytes  # unique per test

    async def new_group(self) -> str:
        """A consumer group no one has used, positioned at the end of the input topic."""
        ...

    def worker(self, group_id: str, name: str) -> TransactionalTransport: ...

    def publisher(self) -> Publisher: ...

    def reader(self) -> Reader: ...

    def poison(self) -> Outgoing:
        """An output the worker may not write: a transaction containing it cannot commit."""
        ...

    def output(self, value: str) -> Outgoing:
        """An output to the output topic, tagged with this test's token."""
        ...


def mine(harness: Harness, records: Sequence[Record]) -> list[Record]:
    return [r for r in records if (TOKEN_HEADER, harness.token) in r.headers]


async def publish(harness: Harness, items: Sequence[tuple[bytes, bytes]]) -> list[Record]:
    async with harness.publisher() as publisher:
        return [
            await publisher.publish(
                harness.input_topic, key, value, ((TOKEN_HEADER, harness.token),)
            )
            for key, value in items
        ]


def position(record: Record) -> tuple[int, int]:
    """Where a record sits in its topic, to compare what two polls returned."""
    return record.partition, record.offset


def outputs_for(harness: Harness, records: Sequence[Record]) -> list[Outgoing]:
    return [
        Outgoing(harness.output_topic, r.key, b"out:" + r.value, ((TOKEN_HEADER, harness.token),))
        for r in records
    ]


async def drain(
    harness: Harness, worker: TransactionalTransport, want: int, *, commit: bool = False
) -> list[Record]:
    """Poll until ``want`` of this test's records arrived (committing each batch if asked)."""
    got: list[Record] = []
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while len(got) < want:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(got)} of {want}"
        batch = await worker.poll(max_records=100, timeout_ms=200)
        if commit and batch:
            await worker.commit(outputs_for(harness, mine(harness, batch)), batch)
        got.extend(mine(harness, batch))
    return got


async def read_outputs(harness: Harness, expect: int = 0) -> list[Record]:
    """This test's records on the output topic, once at least ``expect`` are there.

    Kafka writes a transaction's commit markers just after ``commit_transaction`` returns, so
    a read-committed reader may briefly not see a transaction that has committed.
    """
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    async with harness.reader() as reader:
        while True:
            found = mine(harness, await reader.read_all(harness.output_topic))
            if len(found) >= expect or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.1)


async def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


Worker = TransactionalTransport


class TransportContract:
    """The behaviour the broker's pipeline relies on, whichever transport runs it."""

    async def test_records_arrive_in_order_per_partition(self, harness: Harness) -> None:
        group = await harness.new_group()
        items = [(f"case-{i % 7}".encode(), f"{i}".encode()) for i in range(40)]
        sent = await publish(harness, items)
        async with harness.worker(group, "a") as worker:
            got = await drain(harness, worker, len(items))
        assert sorted(r.value for r in got) == sorted(v for _, v in items)
        for partition in range(harness.partitions):
            offsets = [r.offset for r in got if r.partition == partition]
            assert offsets == sorted(offsets)
        for key in {k for k, _ in items}:
            assert [r.value for r in got if r.key == key] == [v for k, v in items if k == key]
        assert {(r.partition, r.offset) for r in sent} == {(r.partition, r.offset) for r in got}

    async def test_same_key_same_partition_as_kafka_places_it(self, harness: Harness) -> None:
        keys = [f"case-{i}".encode() for i in range(12)]
        sent = await publish(harness, [(k, b"x") for k in keys for _ in range(3)])
        by_key: dict[bytes | None, set[int]] = {}
        for record in sent:
            by_key.setdefault(record.key, set()).add(record.partition)
        for key, partitions in by_key.items():
            assert key is not None
            assert partitions == {partition_for(key, harness.partitions)}

    async def test_committed_transaction_is_visible_and_moves_offsets(
        self, harness: Harness
    ) -> None:
        group = await harness.new_group()
        await publish(harness, [(f"k{i}".encode(), f"first-{i}".encode()) for i in range(10)])
        async with harness.worker(group, "a") as worker:
            first = await drain(harness, worker, 10)
            await worker.commit(outputs_for(harness, first), first)
        outputs = await read_outputs(harness, len(first))
        assert sorted(r.value for r in outputs) == sorted(b"out:" + r.value for r in first)

        await publish(harness, [(f"k{i}".encode(), f"second-{i}".encode()) for i in range(5)])
        async with harness.worker(group, "b") as successor:
            second = await drain(harness, successor, 5)
            assert all(r.value.startswith(b"second-") for r in second)
            assert not mine(harness, await successor.poll(max_records=100, timeout_ms=300))

    async def test_a_tombstone_is_committed_and_read_back_empty(self, harness: Harness) -> None:
        """A null value (a compacted topic's deletion of its key) goes in a transaction like
        any record and is read as ``b""``, so state loaders can tell it apart."""
        group = await harness.new_group()
        await publish(harness, [(b"k-tomb", b"in")])
        tag = ((TOKEN_HEADER, harness.token),)
        async with harness.worker(group, "a") as worker:
            batch = await drain(harness, worker, 1)
            outputs = [Outgoing(harness.output_topic, b"k-tomb", b"kept", tag)]
            await worker.commit(
                [*outputs, Outgoing(harness.output_topic, b"k-tomb", None, tag)], batch
            )
        written = await read_outputs(harness, 2)
        assert [(r.key, r.value) for r in written] == [(b"k-tomb", b"kept"), (b"k-tomb", b"")]

    async def test_missing_topics_names_only_the_absent_ones(self, harness: Harness) -> None:
        """The broker holds shares for an agency whose egress topic is missing rather than
        write there (a transaction writing a missing topic cannot commit): both clients can
        tell which topics a cluster lacks."""
        absent = f"tiaki.egress.synthetic-absent-{harness.token.decode()[:8]}"
        async with harness.worker(await harness.new_group(), "a") as worker:
            asked = [harness.input_topic, harness.output_topic, absent]
            assert await worker.missing_topics(asked) == {absent}
            assert await worker.missing_topics([]) == frozenset()
        async with harness.reader() as reader:
            assert await reader.missing_topics([harness.output_topic, absent]) == {absent}

    async def test_failed_commit_is_invisible_and_records_come_again(
        self, harness: Harness
    ) -> None:
        group = await harness.new_group()
        await publish(harness, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(6)])
        async with harness.worker(group, "a") as worker:
            batch = await drain(harness, worker, 6)
            with pytest.raises(TransportError) as raised:
                await worker.commit([*outputs_for(harness, batch), harness.poison()], batch)
            assert not isinstance(raised.value, PartitionsRevoked)
            assert await read_outputs(harness) == []

            again = await drain(harness, worker, 6)
            assert sorted(map(position, again)) == sorted(map(position, batch))
            await worker.commit(outputs_for(harness, again), again)
        outputs = await read_outputs(harness, len(batch))
        assert sorted(r.value for r in outputs) == sorted(b"out:" + r.value for r in batch), [
            (r.partition, r.offset, r.value) for r in outputs
        ]

    async def test_rewind_sends_uncommitted_records_back(self, harness: Harness) -> None:
        group = await harness.new_group()
        await publish(harness, [(f"k{i}".encode(), f"first-{i}".encode()) for i in range(5)])
        async with harness.worker(group, "a") as worker:
            first = await drain(harness, worker, 5)
            await worker.commit(outputs_for(harness, first), first)
            await publish(harness, [(f"k{i}".encode(), f"second-{i}".encode()) for i in range(5)])
            second = await drain(harness, worker, 5)
            await worker.rewind()
            again = await drain(harness, worker, 5)
            assert sorted(map(position, again)) == sorted(map(position, second))
            assert all(r.value.startswith(b"second-") for r in again)

    async def test_polls_during_a_failed_commit_then_a_rewind_lose_nothing(
        self, harness: Harness
    ) -> None:
        """What a worker that polls while it commits relies on: whatever its polls returned
        while a failed commit was rolled back, a rewind afterwards brings every uncommitted
        record back exactly once."""
        group = await harness.new_group()
        await publish(harness, [(f"k{i}".encode(), f"a-{i}".encode()) for i in range(6)])
        async with harness.worker(group, "a") as worker:
            batch = await drain(harness, worker, 6)
            later = await publish(
                harness, [(f"k{i}".encode(), f"b-{i}".encode()) for i in range(6)]
            )
            failing = asyncio.create_task(
                worker.commit([*outputs_for(harness, batch), harness.poison()], batch)
            )
            while not failing.done():  # polls overlap the commit and its rollback
                await worker.poll(max_records=100, timeout_ms=5)
            with pytest.raises(TransportError):
                await failing
            await worker.rewind()
            again = await drain(harness, worker, 12)
            assert sorted(map(position, again)) == sorted(map(position, [*batch, *later]))
            await worker.commit(outputs_for(harness, again), again)
            assert not mine(harness, await worker.poll(max_records=100, timeout_ms=300))
        outputs = await read_outputs(harness, 12)
        assert len(outputs) == 12

    async def test_two_workers_split_partitions_and_see_each_record_once(
        self, harness: Harness
    ) -> None:
        group = await harness.new_group()
        async with harness.worker(group, "a") as a, harness.worker(group, "b") as b:
            await wait_for(
                lambda: (
                    a.assignment()
                    and b.assignment()
                    and not a.assignment() & b.assignment()
                    and len(a.assignment() | b.assignment()) == harness.partitions
                ),
                "both workers to own partitions",
            )
            items = [(f"case-{i}".encode(), f"{i}".encode()) for i in range(60)]
            await publish(harness, items)
            seen: dict[str, list[Record]] = {"a": [], "b": []}

            async def run(name: str, worker: TransactionalTransport) -> None:
                deadline = asyncio.get_running_loop().time() + DEADLINE_S
                while sum(map(len, seen.values())) < len(items):
                    assert asyncio.get_running_loop().time() < deadline
                    batch = await worker.poll(max_records=10, timeout_ms=100)
                    if batch:
                        await worker.commit(outputs_for(harness, mine(harness, batch)), batch)
                        seen[name].extend(mine(harness, batch))

            await asyncio.gather(run("a", a), run("b", b))
        everything = seen["a"] + seen["b"]
        assert sorted(r.value for r in everything) == sorted(v for _, v in items)
        assert seen["a"]
        assert seen["b"]
        outputs = await read_outputs(harness, len(items))
        assert len(outputs) == len(items)

    async def test_batch_polled_before_a_rebalance_is_refused_then_redelivered(
        self, harness: Harness
    ) -> None:
        group = await harness.new_group()
        await publish(harness, [(f"case-{i}".encode(), f"{i}".encode()) for i in range(20)])
        async with harness.worker(group, "a") as a:
            batch = await drain(harness, a, 20)
            before, generation = a.assignment(), a.assignment_generation()
            async with harness.worker(group, "b") as b:
                await wait_for(lambda: a.assignment() != before and b.assignment(), "the rebalance")
                assert a.assignment_generation() > generation
                with pytest.raises(PartitionsRevoked) as raised:
                    await a.commit(outputs_for(harness, batch), batch)
                assert raised.value.retriable
                assert await read_outputs(harness) == []
                owned = {
                    name: sum((r.topic, r.partition) in w.assignment() for r in batch)
                    for name, w in (("a", a), ("b", b))
                }
                got = await asyncio.gather(
                    drain(harness, a, owned["a"], commit=True),
                    drain(harness, b, owned["b"], commit=True),
                )
        assert sorted(r.value for part in got for r in part) == sorted(r.value for r in batch)
        assert len(await read_outputs(harness, len(batch))) == len(batch)

    async def test_partitions_that_come_back_are_a_new_generation(self, harness: Harness) -> None:
        """A worker that loses its partitions and gets the same ones back sees the same set
        but a new assignment generation: another worker owned them in between."""
        group = await harness.new_group()

        async def polling(what: str, condition: Callable[[], object], *workers: Worker) -> None:
            deadline = asyncio.get_running_loop().time() + DEADLINE_S
            while not condition():
                assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
                for worker in workers:  # nothing was published: polls return nothing of ours
                    assert not mine(harness, await worker.poll(max_records=10, timeout_ms=50))

        async with harness.worker(group, "a") as a:
            await polling(
                "a to own every partition", lambda: len(a.assignment()) == harness.partitions, a
            )
            before, generation = a.assignment(), a.assignment_generation()
            async with harness.worker(group, "b") as b:
                await polling("b to own partitions", lambda: bool(b.assignment()), a, b)
            await polling(
                "the partitions to come back",
                lambda: a.assignment() == before and a.assignment_generation() >= generation + 2,
                a,
            )

    async def test_close_is_idempotent_and_closed_means_closed(self, harness: Harness) -> None:
        group = await harness.new_group()
        worker = harness.worker(group, "a")
        await worker.start()
        await worker.close()
        await worker.close()
        with pytest.raises(TransportClosed):
            await worker.poll(max_records=1, timeout_ms=10)
        with pytest.raises(TransportClosed):
            await worker.commit([], [])
        for resource in (harness.publisher(), harness.reader()):
            async with resource:
                pass
            await resource.close()

    async def test_empty_commit_is_a_no_op(self, harness: Harness) -> None:
        group = await harness.new_group()
        async with harness.worker(group, "a") as worker:
            await worker.commit([], [])
            assert not mine(harness, await worker.poll(max_records=10, timeout_ms=100))

    async def test_restarted_worker_fences_its_zombie(self, harness: Harness) -> None:
        group = await harness.new_group()
        # Same worker id: the second start fences the first.
        async with harness.worker(group, "a") as zombie, harness.worker(group, "a") as successor:
            with pytest.raises(ProducerFenced) as raised:
                await zombie.commit([harness.output("zombie")], [])
            assert not raised.value.retriable
            await successor.commit([harness.output("successor")], [])
        assert [r.value for r in await read_outputs(harness, 1)] == [b"successor"]

    async def test_offsets_at_a_time_start_a_read_of_what_was_written_since(
        self, harness: Harness
    ) -> None:
        group = await harness.new_group()
        async with harness.worker(group, "a") as worker:
            await worker.commit([harness.output(f"before-{i}") for i in range(6)], [])
            async with harness.reader() as reader:
                before = mine(harness, await reader.read_all(harness.output_topic))
                stamp = max(r.timestamp_ms for r in before) + 1
                await asyncio.sleep(0.05)  # the next records are stamped later
                await worker.commit([harness.output(f"after-{i}") for i in range(6)], [])
                start = await reader.offsets_at(harness.output_topic, stamp)
                since = mine(harness, await reader.read_from(harness.output_topic, start))
                future = await reader.offsets_at(harness.output_topic, stamp + 3_600_000)
                assert not mine(harness, await reader.read_from(harness.output_topic, future))
        assert sorted(r.value for r in since) == sorted(f"after-{i}".encode() for i in range(6))

    async def test_reading_from_offsets_resumes_where_a_limited_read_stopped(
        self, harness: Harness
    ) -> None:
        group = await harness.new_group()
        async with harness.worker(group, "a") as worker:  # unkeyed: spread over partitions
            await worker.commit([harness.output(f"{i}") for i in range(30)], [])
        ours = {(r.partition, r.offset) for r in await read_outputs(harness, 30)}
        # From the first of this test's records in each partition (the topic is shared).
        start = {p: min(o for q, o in ours if q == p) for p in {p for p, _ in ours}}
        got: list[Record] = []
        async with harness.reader() as reader:
            whole = mine(harness, await reader.read_from(harness.output_topic, start))
            position = dict(start)
            for _ in range(100):  # small reads, each resuming after the last
                part = await reader.read_from(harness.output_topic, position, limit=4)
                if not part:
                    break
                for r in part:
                    position[r.partition] = max(position.get(r.partition, 0), r.offset + 1)
                got.extend(mine(harness, part))
        assert {(r.partition, r.offset) for r in whole} == ours
        assert sorted((r.partition, r.offset) for r in got) == sorted(ours)  # each once
