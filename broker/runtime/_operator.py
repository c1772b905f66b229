"""What the broker's operator commands share (``tiaki review``, ``tiaki quarantine``).

They run with the broker's principal and keys: they open records sealed to the broker, and
each act a person takes is written in one Kafka transaction of its own, its audit record
chained and signed in that same transaction.

One writer per queue
--------------------
Two people may act on the same item at once (two reviewers approving one held item, a
scheduled ``escalate`` while a reviewer declines). Each reads the queue, finds the item
held, and writes its act: without more, both releases would reach the recipient. So every
act on a queue is an :class:`OperatorAct` whose producer uses the queue's own transactional
id (``tiaki-broker-act-<queue>``), and Kafka's fencing serialises them:

1. starting the producer (InitProducerId) fences any other act on the queue: Kafka aborts its
   open transaction, or lets one that is already committing finish, before it answers;
2. only then is the queue read (read-committed), so the act is decided on every act
   committed before it (an item already released is refused: ``is released``);
3. an act that starts after that fences this one, whose commit then fails
   (:class:`ActInterrupted`): nothing of it is written, and the person looks again.

Either way, at most one of two acts on the same state commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, InvalidProducerEpoch, KafkaError, ProducerFenced

from broker._errors import TiakiError
from broker._logging import configure_logging
from broker._settings import Settings
from broker.codec import load_schemas
from broker.envelope import KeyRing, KeyStore, Opener, Sealer
from broker.platform._profiles import Profile, load_profile, profile_path
from broker.platform._topics import ACT_PREFIX, BROKER
from broker.registry import load_registry
from broker.runtime._audit import AuditContext
from broker.runtime._chaining import AuditChainer
from broker.runtime._pipeline import broker_opener, broker_sealer
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from broker.transport import (
    CONNECT_TIMEOUT_S,
    KafkaReader,
    Outgoing,
    Reader,
    Record,
    TransportError,
)
from broker.transport._kafka import no_answer

T = TypeVar("T")


class ActInterrupted(TiakiError):
    """Another act on the same queue started before this one was written; nothing of this
    one was written."""


class BrokerTools:
    """The broker's schemas, keys and Kafka profile, from the environment's settings, for the
    operator commands: they print their answers on stdout, so their log (warnings and worse,
    scrubbed JSON) goes to stderr."""

    def __init__(self) -> None:
        configure_logging(level=logging.WARNING)
        self.settings = Settings.from_env()
        registry = load_registry(self.settings.registry)
        self.schemas = load_schemas(self.settings.schemas_dir)
        principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
        self.ring = KeyStore(self.settings.keys_dir).load(principals, private_for=[BROKER])
        self.profile = load_profile(profile_path(self.settings.profiles_dir, BROKER))

    def opener(self) -> Opener:
        return broker_opener(self.ring)  # quarantined records may exceed 1 MiB

    def sealer(self) -> Sealer:
        return broker_sealer(self.ring)

    def read(self, topic: str) -> list[Record]:
        """Every record on ``topic`` (read-committed); an unanswered connection fails after
        :data:`~broker.transport.CONNECT_TIMEOUT_S`."""

        async def read() -> list[Record]:
            async with KafkaReader(self.profile, connect_timeout_s=CONNECT_TIMEOUT_S) as reader:
                return await reader.read_all(topic)

        return asyncio.run(read())

    def audit_context(self) -> AuditContext:
        return operator_audit_context(self.settings)

    def act(
        self,
        queue: str,
        topic: str,
        decide: Callable[[list[Record]], tuple[list[Outgoing], T]],
        now: datetime,
    ) -> T:
        """One act on ``queue``: ``decide`` gets every record on ``topic``, read once this
        act holds the queue, and returns the records to write (none: nothing is written)
        and what to tell the person; see the module docs."""

        async def act() -> T:
            asyncio.get_running_loop().set_exception_handler(_quiet_when_fenced)
            async with OperatorAct(self.profile, self.ring, queue=queue) as acting:
                outputs, result = decide(await acting.read(topic))
                if outputs:
                    await acting.commit(outputs, now)
                return result

        return asyncio.run(act())


def operator_audit_context(settings: Settings) -> AuditContext:
    """The audit context of a person's act: the deployment's subject key, no policy."""
    return AuditContext(subject_key=shared_secret(secret_paths(settings)[0]), policy_hash=None)


class OperatorAct:
    """One person's act on ``queue`` (``review``, ``quarantine``), as the module docs say:
    entering it fences every other act on the queue; then :meth:`read` the queue and
    :meth:`commit` what the act writes, in one transaction."""

    def __init__(
        self,
        profile: Profile,
        ring: KeyRing,
        *,
        queue: str,
        reader: Callable[[], Reader] | None = None,
    ) -> None:
        self.queue = queue
        self.transactional_id = f"{ACT_PREFIX}{queue}"
        self._profile = profile
        self._ring = ring
        #: Reads the queue's chain head (``tiaki.state.chains``); Kafka's, unless given.
        self._reader = reader if reader is not None else lambda: KafkaReader(profile)
        self._producer = AIOKafkaProducer(
            **profile.aiokafka_kwargs(), transactional_id=self.transactional_id
        )

    async def __aenter__(self) -> OperatorAct:
        try:
            # InitProducerId: fences any other act on the queue. Kafka answers it at once (it
            # aborts an open act's transaction, or lets a committing one finish, first), so
            # a cluster that has not answered within CONNECT_TIMEOUT_S is not answering.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._producer.start()
        except TimeoutError:
            await asyncio.shield(self._producer.stop())
            raise TiakiError(no_answer(self._profile, CONNECT_TIMEOUT_S)) from None
        except KafkaError as exc:
            await asyncio.shield(self._producer.stop())
            raise TiakiError(
                f"could not reach Kafka for the {self.queue}: {type(exc).__name__}"
            ) from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self._producer.stop())

    async def read(self, topic: str) -> list[Record]:
        """Every record on ``topic`` (read-committed), as of now."""
        async with KafkaReader(self._profile) as reader:
            return await reader.read_all(topic)

    async def commit(self, outputs: list[Outgoing], now: datetime) -> None:
        """Write ``outputs`` in one transaction, their audit records chained and signed in it.

        Every act on a queue continues one audit chain, named after the queue's transactional
        id (``tiaki-broker-act-<queue>``), each act's records signed at once
        (``every_records=1``): an act deleted from the log leaves a gap in it, which the
        verifier names. The chain's head is read from ``tiaki.state.chains`` here, after this
        act fenced every other one on the queue (entering it), and written back in the same
        transaction; an act that starts later fences this one, so two acts never extend one
        head twice. (Until 7 December 2026 each act was a one-record chain of its own, which
        could be deleted with its checkpoint and leave nothing to see; those chains still
        verify.)

        Every record's delivery is awaited before the commit: aiokafka fails a record Kafka
        refuses (``MESSAGE_TOO_LARGE``, say) only on its own future and commits the rest, so
        a refusal aborts the act instead (nothing of it is written). An act that would write
        a topic Kafka lacks is refused before it begins, naming the topic."""
        chainer = AuditChainer(
            self.transactional_id,
            self._ring,
            reader=self._reader,
            every_records=1,
        )
        try:
            await chainer.resync()
            outputs = chainer.seal(outputs, now)  # with the chain's head and checkpoint
            async with self._reader() as reader:
                missing = await reader.missing_topics({out.topic for out in outputs})
        except TransportError as exc:
            raise TiakiError(
                f"could not read the {self.queue} audit chain's head and the topics this act "
                f"writes: {type(exc).__name__}"
            ) from None
        if missing:
            # A produce to a missing topic would wait out the producer's metadata timeout
            # and then fail the act: say which topic, now (a release to an agency whose
            # egress topic was never provisioned, say).
            raise TiakiError(
                f"Kafka has no {', '.join(sorted(missing))}: nothing of this act was written; "
                "run `tiaki provision`, then act again"
            )
        producer = self._producer
        try:
            async with producer.transaction():
                deliveries: list[asyncio.Future[object]] = []
                for out in outputs:
                    delivery = await producer.send(
                        out.topic, out.value, key=out.key, headers=list(out.headers)
                    )
                    # Read below; if the transaction fails first, its error is the report,
                    # and the delivery needs none of its own (asyncio would print one).
                    delivery.add_done_callback(_retrieve)
                    deliveries.append(delivery)
                await _delivered(deliveries)  # raised inside: the transaction aborts
        except (KafkaError, IllegalOperation) as exc:
            if isinstance(exc, _FENCED) or isinstance(_fatal_error(producer), _FENCED):
                raise ActInterrupted(
                    f"another act on the {self.queue} started before this one was written, "
                    "and nothing of this one was written: look at the queue again and retry"
                ) from None
            raise TiakiError(
                f"could not write the {self.queue} act to Kafka: {type(exc).__name__}"
            ) from None


#: What a producer whose transactional id another producer took over is told.
_FENCED = (ProducerFenced, InvalidProducerEpoch)


def _fatal_error(producer: AIOKafkaProducer) -> BaseException | None:
    """Why ``producer``'s transactions failed for good, if they did.

    Fenced in the middle of a transaction, aiokafka's background sender ends with the fencing
    error and marks the transaction manager fatally failed with it, and the caller's next
    ``send`` is refused only as ``IllegalOperation`` (not in a transaction). Reading both
    also keeps asyncio from printing them, as never retrieved, to the person's terminal."""
    sender = producer._sender.sender_task
    failed = sender.exception() if sender is not None and sender.done() else None
    manager = producer._txn_manager
    if manager is not None and manager.is_fatal_error() and manager._transaction_waiter.done():
        failed = manager._transaction_waiter.exception() or failed
    return failed


async def _delivered(deliveries: list[asyncio.Future[object]]) -> None:
    """Wait until Kafka has answered for every record; raise the first refusal."""
    if deliveries:
        await asyncio.wait(deliveries)
    for delivery in deliveries:
        failed = delivery.exception() if not delivery.cancelled() else None
        if failed is not None:
            raise failed


def _retrieve(delivery: asyncio.Future[object]) -> None:
    if not delivery.cancelled():
        delivery.exception()


def _quiet_when_fenced(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The command's event loop reports everything but the fencing error that aiokafka leaves
    on its internal futures when another act takes the queue over: the person has been told
    in one line (:class:`ActInterrupted`), and a traceback would say nothing more."""
    if not isinstance(context.get("exception"), _FENCED):
        loop.default_exception_handler(context)
