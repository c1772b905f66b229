"""aiokafka's errors become the transport's own; none escapes raw."""

from __future__ import annotations

import pytest
from aiokafka import errors as kafka_errors

from broker.transport import (
    NotAuthorized,
    ProducerFenced,
    TransportClosed,
    TransportError,
    Unavailable,
)
from broker.transport._kafka import translate


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
