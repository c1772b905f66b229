"""What the broker's operator commands share (``tiaki review``, ``tiaki quarantine``).

They run with the broker's principal and keys: they open records sealed to the broker, and
each act a person takes is written in one Kafka transaction of its own, its audit record
chained and signed in that same transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from broker._errors import TiakiError
from broker._settings import Settings
from broker.codec import load_schemas
from broker.envelope import KeyRing, KeyStore, Opener, Sealer
from broker.platform._profiles import Profile, load_profile, profile_path
from broker.platform._topics import BROKER, BROKER_GROUP_PREFIX
from broker.registry import load_registry
from broker.runtime._audit import AuditContext
from broker.runtime._chaining import AuditChainer
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from broker.transport import KafkaReader, Outgoing, Record


class BrokerTools:
    """The broker's schemas, keys and Kafka profile, from the environment's settings."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        registry = load_registry(self.settings.registry)
        self.schemas = load_schemas(self.settings.schemas_dir)
        principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
        self.ring = KeyStore(self.settings.keys_dir).load(principals, private_for=[BROKER])
        self.profile = load_profile(profile_path(self.settings.profiles_dir, BROKER))

    def opener(self) -> Opener:
        return Opener(BROKER, self.ring)

    def sealer(self) -> Sealer:
        return Sealer(BROKER, self.ring)

    def read(self, topic: str) -> list[Record]:
        """Every record on ``topic`` (read-committed)."""

        async def read() -> list[Record]:
            async with KafkaReader(self.profile) as reader:
                return await reader.read_all(topic)

        return asyncio.run(read())

    def audit_context(self) -> AuditContext:
        return operator_audit_context(self.settings)

    def commit(self, outputs: list[Outgoing], now: datetime, *, purpose: str) -> None:
        """Write ``outputs`` in one transaction (see :func:`commit_act`)."""
        asyncio.run(commit_act(self.profile, outputs, self.ring, now, purpose=purpose))


def operator_audit_context(settings: Settings) -> AuditContext:
    """The audit context of a person's act: the deployment's subject key, no policy."""
    return AuditContext(subject_key=shared_secret(secret_paths(settings)[0]), policy_hash=None)


async def commit_act(
    profile: Profile, outputs: list[Outgoing], ring: KeyRing, now: datetime, *, purpose: str
) -> None:
    """Write one person's act in one transaction, under transactional id
    ``tiaki-broker-<purpose>-<random>``."""
    transactional_id = f"{BROKER_GROUP_PREFIX}-{purpose}-{uuid.uuid4().hex[:8]}"
    # Each run is its own audit chain, named by its (fresh) transactional id: one writer, one
    # transaction, signed at once (every_records=1), so nothing is left unsigned.
    outputs = AuditChainer(transactional_id, ring, every_records=1).seal(outputs, now)
    producer = AIOKafkaProducer(**profile.aiokafka_kwargs(), transactional_id=transactional_id)
    try:
        await producer.start()
        async with producer.transaction():
            for out in outputs:
                await producer.send(out.topic, out.value, key=out.key, headers=list(out.headers))
    except KafkaError as exc:
        raise TiakiError(f"could not write the {purpose} to Kafka: {type(exc).__name__}") from None
    finally:
        await asyncio.shield(producer.stop())
