"""Following ``tiaki.policy``: signed policy bundles swapped in between two events.

Every worker reads the compacted topic from the beginning and then follows it. Each bundle is
unpacked into a fresh folder and offered to the worker's :class:`~broker.policy.PolicyStore`,
which verifies and compiles it before swapping; a bundle that is invalid, unsigned or signed by
officers the broker does not trust is refused, the old policy keeps running, and a metric and
a log line say so. So is a bundle that fails in any other way (a file name that clashes with
a folder, text that cannot be written, a file the readers choke on): whatever goes wrong while
taking in one bundle refuses that bundle and never stops the watcher. Because the decider reads
the store's engine once per event, no event is ever decided half under one version and half
under another. Each policy set taken into force (another hash than the one before) and each
one refused is also on the audit log, action ``policy_change``, in the worker's next
transaction.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from broker.platform._profiles import Profile
from broker.platform._topics import POLICY
from broker.policy import Engine, PolicyStore
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._release import unbundle

log = structlog.get_logger("tiaki.policy")


class PolicyNote(Protocol):
    """Records a policy change for the audit log (:meth:`Pipeline.note_policy`)."""

    def __call__(
        self,
        now: datetime,
        *,
        replaced: str | None,
        rejected: str | None = None,
        started: bool = False,
    ) -> None: ...


class PolicyWatcher:
    """Applies policy bundles to ``store`` as they arrive."""

    def __init__(
        self,
        store: PolicyStore,
        metrics: BrokerMetrics,
        workdir: Path | None = None,
        *,
        note: PolicyNote | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        #: Told of every policy set taken into force (another hash than the one before) and
        #: every one refused, for the audit log (:meth:`Pipeline.note_policy`); while
        #: :meth:`follow` catches up with the topic at start, only of where it ended.
        self._note = note
        #: Why the last bundle offered was refused (None: it was taken in, or none yet).
        self.last_rejection: str | None = None
        #: Where each bundle is unpacked for the store to read, and removed once it has
        #: (the store compiles everything at load): the system's temporary folder by default.
        self._workdir = workdir
        #: Set once :meth:`follow` has read the topic to its end and taken in its newest
        #: release: the worker decides nothing before (it would be under the set it started
        #: with, which the topic may have replaced).
        self.ready = asyncio.Event()

    def apply(self, bundle: bytes, *, audit: bool = True, quiet: bool = False) -> bool:
        """Offer one bundle; True if it is now the policy in force. ``audit``: tell the note
        of a change or a refusal (not while catching up with the topic at start). ``quiet``:
        a refusal is not counted or logged (an older release tried at start, :meth:`catch_up`)."""
        note = self._note if audit else None
        before = self._store.engine
        engine: Engine | None = before
        error: Exception | None
        try:
            with tempfile.TemporaryDirectory(prefix="tiaki-policy-", dir=self._workdir) as tmp:
                engine = self._store.load(unbundle(bundle, Path(tmp) / "bundle"))
                error = self._store.last_error
        except Exception as exc:  # not even a bundle, no engine to fall back on, or unforeseen
            error = exc
        if error is not None or engine is None:
            reason = type(error).__name__ if error is not None else "no_engine"
            if quiet:
                return False
            self._metrics.policy_rejected.labels(reason).inc()
            log.warning(
                "policy rejected, previous policy kept",
                reason=reason,
                policy_hash=before.policy_hash if before is not None else None,
            )
            self.last_rejection = reason
            if note is not None:
                note(datetime.now(UTC), replaced=None, rejected=reason)
            return False
        self.last_rejection = None
        replaced = before.policy_hash if before is not None else None
        if note is not None and replaced != engine.policy_hash:
            note(datetime.now(UTC), replaced=replaced)
        if before is not None and before.policy_hash != engine.policy_hash:
            self._metrics.policy_version.labels(before.policy_hash).set(0)
        self._metrics.policy_version.labels(engine.policy_hash).set(1)
        log.info("policy loaded", new_policy_hash=engine.policy_hash)
        return True

    def catch_up(self, bundles: list[bytes]) -> None:
        """Take in the newest release of those read from the topic at start (oldest first),
        or, if this worker refuses it, the newest it takes.

        Nothing older is ever in force, not even for a moment: the store swaps its engine on
        every load and the decider reads it per event, so replaying a compacted topic's
        lingering releases one by one would decide events under each in turn, unaudited. The
        newest's refusal is counted and logged; an older one's is not (a release superseded
        long ago may carry fewer approvals than the running set requires, and would raise an
        alert on every restart)."""
        rejection = None
        for index, bundle in enumerate(reversed(bundles)):
            taken = self.apply(bundle, audit=False, quiet=index > 0)
            if index == 0:
                rejection = self.last_rejection
            if taken:
                break
        self.last_rejection = rejection  # the newest's, for :meth:`caught_up` to audit

    def caught_up(self, started_with: str | None) -> None:
        """The topic read to its end at start (the worker having started with
        ``started_with``): audit where that left this worker, once. The history on the
        topic was audited when it happened (a compacted topic keeps older releases for a
        while, so replaying them one by one would record changes back and forth that this
        worker never made), so: the set it runs now, in force from now (``worker_started``)
        or taken in over the one it started with, and a refusal if the newest release on the
        topic is one it refuses."""
        if self._note is None:
            return
        engine = self._store.engine
        now = datetime.now(UTC)
        if engine is not None and engine.policy_hash != started_with:
            self._note(now, replaced=started_with)
        else:
            self._note(now, replaced=None, started=True)
        if self.last_rejection is not None:  # only a bundle offered sets it
            self._note(now, replaced=None, rejected=self.last_rejection)

    async def follow(self, profile: Profile, stop: asyncio.Event) -> None:
        """Read ``tiaki.policy`` from the beginning until ``stop``; once read to the end,
        take in its newest release (:meth:`catch_up`), audit where that left this worker
        (:meth:`caught_up`) and set :attr:`ready`; then apply each bundle as it comes. A Kafka error ends it (raised,
        after a log line): the broker must not run on without following its policy topic."""
        consumer = AIOKafkaConsumer(
            **profile.aiokafka_kwargs(),
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        partition = TopicPartition(POLICY, 0)
        try:
            await consumer.start()
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            started_with = self._store.engine.policy_hash if self._store.engine else None
            end = (await consumer.end_offsets([partition]))[partition]
            history: list[bytes] | None = []  # None once caught up
            while not stop.is_set():
                if history is not None and await consumer.position(partition) >= end:
                    self.catch_up(history)
                    history = None
                    self.caught_up(started_with)
                    self.ready.set()
                batches = await consumer.getmany(partition, timeout_ms=500)
                for record in batches.get(partition, []):
                    if history is not None:
                        history.append(record.value)
                    else:
                        self.apply(record.value)
        except KafkaError as exc:
            # The policy in force keeps deciding until the broker stops; it stops because this
            # task ended early (broker.runtime._background), and its supervisor restarts it.
            log.error(
                "policy topic unreadable; keeping the policy in force",
                error_type=type(exc).__name__,
            )
            raise
        finally:
            await asyncio.shield(consumer.stop())
