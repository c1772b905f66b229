"""An operator's act (``tiaki review``, ``tiaki quarantine``) commits only what Kafka took."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from broker._errors import TiakiError
from broker.runtime._operator import OperatorAct
from broker.transport import Outgoing
from tests.unit.audit.conftest import make_ring

NOW = datetime(2026, 3, 1, tzinfo=UTC)


class FakeProducer:
    """A transactional producer whose deliveries fail with ``refusal`` (None: succeed), and
    whose ``transaction()`` commits or aborts as aiokafka's does."""

    def __init__(self, refusal: BaseException | None) -> None:
        self.refusal = refusal
        self.calls: list[str] = []
        self._sender = SimpleNamespace(sender_task=None)
        self._txn_manager = None

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[object]:
        self.calls.append("send")
        loop = asyncio.get_running_loop()
        delivery = loop.create_future()
        refusal = self.refusal
        # Kafka answers later, as the sender task would report it.
        if refusal is None:
            loop.call_soon(delivery.set_result, None)
        else:
            loop.call_soon(delivery.set_exception, refusal)
        return delivery

    def transaction(self) -> Any:
        producer = self

        class Transaction:
            async def __aenter__(self) -> None:
                producer.calls.append("begin")

            async def __aexit__(self, exc_type: object, *_: object) -> None:
                producer.calls.append("abort" if exc_type is not None else "commit")

        return Transaction()


def act_with(producer: FakeProducer) -> OperatorAct:
    profile: Any = SimpleNamespace(aiokafka_kwargs=lambda: {"bootstrap_servers": "localhost:1"})
    act = OperatorAct(profile, make_ring(), queue="review")
    act._producer._closed = True  # never started; replaced by the fake
    act._producer = producer  # type: ignore[assignment]
    return act


async def test_a_refused_record_fails_the_act_instead_of_committing_the_rest() -> None:
    producer = FakeProducer(kafka_errors.MessageSizeTooLargeError())
    with pytest.raises(TiakiError, match="MessageSizeTooLarge"):
        await act_with(producer).commit([Outgoing("tiaki.egress.msd", b"k", b"v")], NOW)
    assert producer.calls[-1] == "abort"
    assert "commit" not in producer.calls


async def test_an_act_whose_records_are_delivered_commits() -> None:
    producer = FakeProducer(None)
    await act_with(producer).commit([Outgoing("tiaki.egress.msd", b"k", b"v")], NOW)
    assert producer.calls[-1] == "commit"
