"""aiokafka's errors become the transport's own; none escapes raw."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import errors as kafka_errors

from broker.transport import (
    NotAuthorized,
    ProducerFenced,
    TransportClosed,
    TransportError,
    Unavailable,
)
from broker.transport._kafka import _sender_failure, _translated, translate


@pytest.mark.parametrize(
    ("raw", "expected", "retriable"),
    [
        (kafka_errors.ProducerFenced(), ProducerFenced, False),
        (kafka_errors.InvalidProducerEpoch(), ProducerFenced, False),
        (kafka_errors.TopicAuthorizationFailedError({"t"}), NotAuthorized, False),
        (kafka_errors.GroupAuthorizationFailedError("g"), NotAuthorized, False),
        (kafka_errors.TransactionalIdAuthorizationFailed("x"), NotAuthorized, False),
        (kafka_errors.KafkaConnectionError(), Unavailable, True),
        (kafka_errors.RequestTimedOutError(), Unavailable, True),
        (TimeoutError(), Unavailable, True),
        (kafka_errors.ConsumerStoppedError(), TransportClosed, False),
        (kafka_errors.UnknownTopicOrPartitionError(), TransportError, True),
        (kafka_errors.OutOfOrderSequenceNumber(), TransportError, False),
    ],
)
def test_translate(raw: BaseException, expected: type[TransportError], retriable: bool) -> None:
    error = translate(raw)
    assert type(error) is expected
    assert error.retriable is retriable


async def test_a_dead_sender_names_why_the_producer_refuses_everything() -> None:
    """A fenced producer's sender task ends with ProducerFenced, and aiokafka then answers
    every transactional call with IllegalOperation; the recovery must see the fencing (and
    keep the producer), not an IllegalOperation (and replace it, fencing the newer worker)."""

    async def fenced() -> None:
        raise kafka_errors.ProducerFenced()

    async def alive() -> None:
        await asyncio.sleep(10)

    sender = SimpleNamespace(sender_task=None)  # aiokafka's Sender, as far as it is read
    producer = cast(Any, SimpleNamespace(_sender=sender))
    assert _sender_failure(producer) is None  # not started
    sender.sender_task = asyncio.ensure_future(fenced())
    await asyncio.sleep(0)
    failure = _sender_failure(producer)
    assert type(translate(failure or Exception())) is ProducerFenced
    running = sender.sender_task = asyncio.ensure_future(alive())
    assert _sender_failure(producer) is None
    running.cancel()


async def test_a_bounded_wait_that_runs_out_is_a_retriable_transport_error() -> None:
    """The waits the transport bounds itself (a committed-offset fetch held by another
    worker's pending transaction, say) end as Unavailable, never a bare TimeoutError."""
    with pytest.raises(Unavailable) as raised, _translated():
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    assert raised.value.retriable
