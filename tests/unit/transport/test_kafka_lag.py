"""The consumer-lag gauge's reading on fake aiokafka consumers: a partition whose position is
being reset (aiokafka's ``position()`` then waits, as long as a pending transaction holds the
committed offset) is skipped, so the observer that reads the gauge never stalls on it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition as KafkaTopicPartition

from broker.transport import _kafka
from broker.transport._kafka import KafkaTransport

SETTLED = KafkaTopicPartition("tiaki.ingress.police", 0)
RESETTING = KafkaTopicPartition("tiaki.ingress.police", 1)


class Consumer:
    def highwater(self, tp: KafkaTopicPartition) -> int:
        return 10

    async def position(self, tp: KafkaTopicPartition) -> int:
        if tp == RESETTING:
            await asyncio.Event().wait()  # never valid while the test runs
        return 7


async def test_a_partition_without_a_position_is_skipped_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_kafka, "LAG_POSITION_WAIT_S", 0.05)
    transport = KafkaTransport(SimpleNamespace(), worker_id="w")  # type: ignore[arg-type]
    transport._state = "open"
    transport._consumer = Consumer()  # type: ignore[assignment]
    transport._assignment = frozenset({("tiaki.ingress.police", 0), ("tiaki.ingress.police", 1)})
    lag = await asyncio.wait_for(transport.lag(), 5)
    assert lag == {("tiaki.ingress.police", 0): 3}
