"""Shared pieces for the adapter SDK's unit tests: an in-memory cluster, keys, a fake clock,
and a stand-in for the broker that seals SharedEvents to an agency's egress topic."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterClient, InMemoryConnection, RetryPolicy
from broker.codec import SchemaSet, encode, load_schemas
from broker.envelope import Algorithm, KeyRing, Kind, Sealer
from broker.platform import egress, ingress
from broker.transport import InMemoryCluster

ROOT = Path(__file__).resolve().parents[3]
T0 = dt.datetime(2025, 6, 1, 9, 0, tzinfo=dt.UTC)
AGENCIES = ("police", "oranga-tamariki")
SCHEMAS = load_schemas(ROOT / "schemas")


@dataclass
class FakeClock:
    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def make_ring() -> KeyRing:
    ring = KeyRing()
    rand = random.Random(11).randbytes
    for principal in ("broker", *AGENCIES):
        for algorithm in Algorithm:
            ring.generate(principal, algorithm, T0, rand)
    return ring


RING = make_ring()


def example(event_type: str, **header: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (ROOT / "schemas" / "examples" / f"{event_type}.json").read_text()
    )
    doc["header"] |= {"event_id": str(uuid.uuid4())} | header
    return doc


@dataclass
class FakeBroker:
    """Seals SharedEvents to an agency as the broker would (for receive tests)."""

    cluster: InMemoryCluster
    clock: FakeClock
    schemas: SchemaSet = SCHEMAS
    sealer: Sealer = field(default_factory=lambda: Sealer("broker", RING))

    async def deliver(
        self,
        recipient: str,
        event_type: str = "TaskEvent",
        *,
        version: int | None = None,
        decided_at: dt.datetime | None = None,
        **extra: Any,
    ) -> str:
        """Deliver an example ``event_type`` as SharedEvent ``version`` (default the newest),
        decided at ``decided_at`` (default: when shared, as a share not held for review)."""
        doc = example(event_type, case_id=extra.pop("case_id", "SYN-CASE-U1"))
        event_id = str(extra.pop("event_id", doc["header"]["event_id"]))
        doc["header"]["event_id"] = event_id
        shared = {
            "event_id": event_id,
            "event_type": event_type,
            "source_agency": doc["header"]["source_agency"],
            "source_schema": f"nz.tiaki.{event_type}",
            "shared_at": self.clock(),
            "decided_at": decided_at or self.clock(),
            "route": "fva_s20",
            "legal_basis": "FVA s20",
            "purpose": "fv_plan_or_response",
            "obligations": [],
            "rule_ids": ["TEST-1"],
            "field_actions": {"task_id": "keep", "note": "drop"},
            "policy_hash": "0" * 64,
            "body_json": json.dumps(doc),
        }
        if version == 1:  # before decided_at
            del shared["decided_at"]
        key = doc["header"]["case_id"].encode()
        await self._send(recipient, key, "SharedEvent", shared, event_id, version)
        return event_id

    async def refuse(self, agency: str, reason: str, event_id: str | None, offset: int) -> None:
        """The refusal notice the broker sends ``agency`` when it quarantines its record."""
        notice = {
            "topic": ingress(agency),
            "partition": 0,
            "offset": offset,
            "reason": reason,
            "detail": "synthetic refusal",
            "event_id": event_id,
            "event_type": "TaskEvent" if event_id else None,
            "refused_at": self.clock(),
        }
        await self._send(agency, None, "RefusalNotice", notice, str(uuid.uuid4()))

    async def _send(
        self,
        recipient: str,
        key: bytes | None,
        name: str,
        doc: dict[str, Any],
        event_id: str,
        version: int | None = None,
    ) -> None:
        """``doc`` as schema ``name`` (``version``, default the newest), sealed to
        ``recipient`` on its egress topic."""
        schema = self.schemas.latest(name) if version is None else self.schemas.get(name, version)
        sealed = self.sealer.seal(
            encode(schema, doc),
            kind=Kind.EGRESS,
            topic=egress(recipient),
            recipient=recipient,
            event_id=event_id,
            schema_fingerprint=schema.fingerprint,
            now=self.clock(),
        )
        async with self.cluster.publisher() as publisher:
            await publisher.publish(egress(recipient), key, sealed)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster.provisioned(AGENCIES)


@pytest.fixture
def connection(cluster: InMemoryCluster) -> InMemoryConnection:
    return InMemoryConnection(cluster)


@pytest.fixture
def fake_broker(cluster: InMemoryCluster, clock: FakeClock) -> FakeBroker:
    return FakeBroker(cluster, clock)


def make_client(
    agency: str,
    connection: InMemoryConnection,
    clock: FakeClock,
    state_dir: Path,
    *,
    max_attempts: int = 3,
    background: bool = False,
) -> AdapterClient:
    return AdapterClient(
        agency,
        connection,
        RING,
        SCHEMAS,
        state_dir,
        clock=clock,
        retry=RetryPolicy(max_attempts=max_attempts),
        send_in_background=background,
    )


async def eventually(check: Any, within: float = 5.0) -> None:
    """Wait until ``check()`` is true (the adapter runs in the same loop); fail after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
