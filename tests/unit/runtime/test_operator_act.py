"""An operator's act (``tiaki review``, ``tiaki quarantine``) commits only what Kafka took."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from broker._errors import TiakiError
from broker.audit import LogEntry, read_link
from broker.platform._topics import AUDIT, CHECKPOINTS, STATE_CHAINS
from broker.runtime._operator import OperatorAct
from broker.runtime._pipeline import SCHEMA_HEADER
from broker.transport import InMemoryCluster, Outgoing
from tests.unit.audit.conftest import make_ring

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # the test ring's keys are valid then


class FakeProducer:
    """A transactional producer whose deliveries fail with ``refusal`` (None: succeed), and
    whose ``transaction()`` commits or aborts as aiokafka's does."""

    def __init__(self, refusal: BaseException | None) -> None:
        self.refusal = refusal
        self.calls: list[str] = []
        self.sent: list[Outgoing] = []
        self._sender = SimpleNamespace(sender_task=None)
        self._txn_manager = None

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = ()
    ) -> asyncio.Future[object]:
        self.calls.append("send")
        self.sent.append(Outgoing(topic, key, value, tuple(headers)))
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


def act_with(
    producer: FakeProducer, cluster: InMemoryCluster | None = None, ring: Any = None
) -> OperatorAct:
    profile: Any = SimpleNamespace(aiokafka_kwargs=lambda: {"bootstrap_servers": "localhost:1"})
    if cluster is None:
        cluster = InMemoryCluster()
        cluster.create_topic(STATE_CHAINS)
    act = OperatorAct(profile, ring or make_ring(), queue="review", reader=cluster.reader)
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


async def test_acts_on_a_queue_continue_one_chain() -> None:
    """An act deleted from the log leaves a gap: each act extends the queue's one chain, from
    the head the act before it committed (each used to be a one-record chain of its own)."""
    cluster = InMemoryCluster()
    cluster.create_topic(STATE_CHAINS)
    ring = make_ring()
    links = []
    for _ in range(2):
        producer = FakeProducer(None)
        audit = Outgoing(AUDIT, b"k", b"an act's audit record", ((SCHEMA_HEADER, b"f"),))
        await act_with(producer, cluster, ring).commit([audit], NOW)
        assert producer.calls[-1] == "commit"
        (chained,) = [o for o in producer.sent if o.topic == AUDIT]
        entry = LogEntry(AUDIT, 0, len(links), chained.key, chained.value, chained.headers, 0)
        links.append(read_link(entry))
        async with cluster.publisher() as publisher:  # what Kafka committed
            for out in producer.sent:
                if out.topic == STATE_CHAINS:
                    await publisher.publish(out.topic, out.key, out.value)
    assert [link.chain for link in links] == ["tiaki-broker-act-review"] * 2
    assert [link.seq for link in links] == [0, 1]
    assert links[1].prev == links[0].link


async def test_an_act_that_would_write_a_missing_topic_is_refused_before_it_begins() -> None:
    """Releasing a held share to an agency whose egress topic was never provisioned would
    wait out the producer's metadata timeout and then fail: the act says why at once."""
    cluster = InMemoryCluster(auto_create=False)
    for topic in (STATE_CHAINS, AUDIT, "tiaki.review"):
        cluster.create_topic(topic)
    producer = FakeProducer(None)
    audit = Outgoing(AUDIT, b"k", b"an act's audit record", ((SCHEMA_HEADER, b"f"),))
    with pytest.raises(TiakiError) as refused:
        await act_with(producer, cluster).commit(
            [Outgoing("tiaki.egress.msd", b"k", b"v"), audit], NOW
        )
    # The topics the act's chain adds (its checkpoint) are looked for too.
    assert str(refused.value) == (
        "Kafka has no tiaki.checkpoints, tiaki.egress.msd: nothing of this act was written; "
        "run `tiaki provision`, then act again"
    )
    assert producer.calls == []

    cluster.create_topic(CHECKPOINTS)
    cluster.create_topic("tiaki.egress.msd")
    await act_with(producer, cluster).commit([Outgoing("tiaki.egress.msd", b"k", b"v"), audit], NOW)
    assert producer.calls[-1] == "commit"
