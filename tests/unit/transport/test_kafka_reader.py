"""KafkaReader on fake aiokafka consumers: a read waits for the transactions open when it
began, so a state re-read after a handover holds the predecessor's last commit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition as KafkaTopicPartition

from broker.transport import KafkaReader, Unavailable, _kafka

TOPIC = "tiaki.state.cases"
TP = KafkaTopicPartition(TOPIC, 0)


class Log:
    """One partition: offsets 0-1 committed, 2-3 a transaction still open until the
    ``commit_after``-th fetch, its marker at 4; high watermark 4 when the read begins."""

    def __init__(self, commit_after: int | None) -> None:
        self.commit_after = commit_after
        self.fetches = 0
        self.position = 0

    @property
    def committed(self) -> bool:
        return self.commit_after is not None and self.fetches >= self.commit_after

    def lso(self) -> int:
        return 5 if self.committed else 2


class ReadCommitted:
    def __init__(self, log: Log) -> None:
        self.log = log

    def assign(self, partitions: list[KafkaTopicPartition]) -> None:
        assert partitions == [TP]

    async def seek_to_beginning(self, *partitions: KafkaTopicPartition) -> None:
        self.log.position = 0

    async def end_offsets(self, partitions: list[KafkaTopicPartition]) -> dict[Any, int]:
        return {TP: self.log.lso()}  # what read_committed's end offsets are

    async def position(self, tp: KafkaTopicPartition) -> int:
        return self.log.position

    async def getmany(self, *partitions: KafkaTopicPartition, timeout_ms: int) -> dict[Any, Any]:
        await asyncio.sleep(0.01)  # a fetch waits for data, as aiokafka's does
        self.log.fetches += 1
        end = self.log.lso()
        offsets = range(self.log.position, 4 if self.log.committed else end)
        messages = [
            SimpleNamespace(
                topic=TOPIC,
                partition=0,
                offset=o,
                key=b"k",
                value=b"v%d" % o,
                headers=(),
                timestamp=0,
            )
            for o in offsets
        ]
        self.log.position = end  # past the records (and the marker, once written)
        return {TP: messages} if messages else {}


class ReadUncommitted:
    async def end_offsets(self, partitions: list[KafkaTopicPartition]) -> dict[Any, int]:
        return {TP: 4}  # the high watermark: the open transaction's records are below it


def reader(log: Log, monkeypatch: pytest.MonkeyPatch) -> KafkaReader:
    async def partitions(consumer: Any, topic: str) -> list[KafkaTopicPartition]:
        return [TP]

    monkeypatch.setattr(_kafka, "_partitions", partitions)
    found = KafkaReader(SimpleNamespace(), timeout_s=0.5)  # type: ignore[arg-type]
    found._state = "open"
    found._consumer = ReadCommitted(log)  # type: ignore[assignment]
    found._marks = ReadUncommitted()  # type: ignore[assignment]
    return found


async def test_a_read_waits_for_the_transaction_open_when_it_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log(commit_after=3)
    records = await reader(log, monkeypatch).read_all(TOPIC)
    # The last stable offset (2) would have ended the read without the open transaction.
    assert [r.offset for r in records] == [0, 1, 2, 3]


async def test_a_transaction_that_never_ends_makes_the_read_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bound's own message, naming the topic and the bound (not the generic translation
    # of a TimeoutError, which said nothing of what was read or for how long).
    with pytest.raises(
        Unavailable, match=r"^tiaki\.state\.cases: not read to its end within 0\.5 s$"
    ):
        await reader(Log(commit_after=None), monkeypatch).read_all(TOPIC)


async def test_close_stops_both_consumers_even_if_the_first_one_fails() -> None:
    """A reader holds two consumers; one whose stop fails must not leave the other open."""
    from aiokafka.errors import KafkaConnectionError

    stopped: list[str] = []

    class Consumer:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails = name, fails

        async def stop(self) -> None:
            stopped.append(self.name)
            if self.fails:
                raise KafkaConnectionError("injected")

    reader = KafkaReader.__new__(KafkaReader)
    reader._state = "open"
    reader._consumer = Consumer("read-committed", fails=True)  # type: ignore[assignment]
    reader._marks = Consumer("marks", fails=False)  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await reader.close()
    assert stopped == ["read-committed", "marks"]
