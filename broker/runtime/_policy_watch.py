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
        self, now: datetime, *, replaced: str | None, rejected: str | None = None
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
        #: every one refused, for the audit log (:meth:`Pipeline.note_policy`).
        self._note = note
        #: Where each bundle is unpacked for the store to read, and removed once it has
        #: (the store compiles everything at load): the system's temporary folder by default.
        self._workdir = workdir

    def apply(self, bundle: bytes) -> bool:
        """Offer one bundle; True if it is now the policy in force."""
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
            self._metrics.policy_rejected.labels(reason).inc()
            log.warning(
                "policy rejected, previous policy kept",
                reason=reason,
                policy_hash=before.policy_hash if before is not None else None,
            )
            if self._note is not None:
                self._note(datetime.now(UTC), replaced=None, rejected=reason)
            return False
        replaced = before.policy_hash if before is not None else None
        if self._note is not None and replaced != engine.policy_hash:
            self._note(datetime.now(UTC), replaced=replaced)
        if before is not None and before.policy_hash != engine.policy_hash:
            self._metrics.policy_version.labels(before.policy_hash).set(0)
        self._metrics.policy_version.labels(engine.policy_hash).set(1)
        log.info("policy loaded", new_policy_hash=engine.policy_hash)
        return True

    async def follow(self, profile: Profile, stop: asyncio.Event) -> None:
        """Read ``tiaki.policy`` from the beginning until ``stop``; apply each bundle. A Kafka
        error ends it (raised, after a log line): the broker must not run on without
        following its policy topic."""
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
            while not stop.is_set():
                batches = await consumer.getmany(partition, timeout_ms=500)
                for record in batches.get(partition, []):
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
