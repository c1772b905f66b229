"""Synthetic audit logs for the audit tests: chained the way the broker chains them, with
signed checkpoints, on simulated partitions and offsets (with gaps, as transaction markers
leave). Nothing here is a real person: identifiers are obviously synthetic."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.audit import (
    AUDIT_TOPIC,
    CHECKPOINT_HEADER,
    CHECKPOINT_TOPIC,
    ChainHead,
    ChainWriter,
    LogEntry,
    sign_checkpoint,
)
from broker.codec import SchemaSet, encode, load_schemas
from broker.envelope import Algorithm, KeyRing

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SUBJECT_KEY = b"k" * 32


def make_ring(now: datetime = T0) -> KeyRing:
    ring = KeyRing()
    rng = random.Random(11)
    for principal in ("broker", "police"):
        ring.generate(principal, Algorithm.ED25519, now - timedelta(days=1), rng.randbytes)
    return ring


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return load_schemas(ROOT / "schemas")


@pytest.fixture(scope="session")
def ring() -> KeyRing:
    return make_ring()


def audit_value(schemas: SchemaSet, n: int, now: datetime) -> tuple[bytes, bytes]:
    """(Avro value, schema header) of a synthetic single-recipient audit record."""
    schema = schemas.latest("AuditRecord")
    record: dict[str, Any] = {
        "audit_id": uuid.UUID(int=n),
        "recorded_at": now,
        "action": "escalation",
        "event_id": f"evt-{n}",
        "event_type": "InformationRequest",
        "schema_fingerprint": None,
        "case_ref": None,
        "actor": "broker",
        "source_agency": "msd",
        "recipient": "police",
        "outcome": "escalated",
        "route": None,
        "legal_basis": None,
        "purpose": None,
        "consent": None,
        "person_told": None,
        "rule_ids": [],
        "reason_codes": ["request_unanswered"],
        "obligations": [],
        "field_actions": {},
        "subject_refs": [f"{n % 97:064x}"],
        "policy_hash": None,
        "detail": None,
    }
    return encode(schema, record), schema.fingerprint_hex.encode()


@dataclass
class SyntheticLog:
    audit: list[LogEntry]
    checkpoints: list[LogEntry]


def build_log(
    ring: KeyRing,
    schemas: SchemaSet,
    *,
    records: int = 60,
    chains: int = 2,
    partitions: int = 3,
    batch: int = 7,
    every_records: int = 20,
    final_checkpoint: bool = True,
) -> SyntheticLog:
    """A log written by ``chains`` writers in batches (one transaction each)."""
    writers = [
        ChainWriter(ChainHead(f"tiaki-broker-{i}"), every_records=every_records)
        for i in range(chains)
    ]
    offsets = [0] * partitions
    cp_offset = 0
    audit: list[LogEntry] = []
    checkpoints: list[LogEntry] = []
    now = T0
    n = 0
    rng = random.Random(5)
    while n < records:
        for writer in writers:
            if n >= records:
                break
            now += timedelta(seconds=1)
            for _ in range(min(batch, records - n)):
                value, schema = audit_value(schemas, n, now)
                headers = (("tiaki-schema", schema), *writer.link(value, schema))
                p = rng.randrange(partitions)
                audit.append(LogEntry(AUDIT_TOPIC, p, offsets[p], b"case", value, headers, 0))
                offsets[p] += 1
                n += 1
            last = n >= records
            if writer.checkpoint_due(now) or (last and final_checkpoint):
                head = writer.head
                data = sign_checkpoint(
                    ring,
                    "broker",
                    chain=writer.chain,
                    size=head.size,
                    root=head.frontier.root(),
                    head=head.head,
                    now=now,
                )
                writer.mark_checkpointed(now)
                checkpoints.append(
                    LogEntry(
                        CHECKPOINT_TOPIC,
                        0,
                        cp_offset,
                        writer.chain.encode(),
                        data,
                        ((CHECKPOINT_HEADER, writer.chain.encode()),),
                        0,
                    )
                )
                cp_offset += 2
            writer.committed()
            offsets = [o + 1 for o in offsets]  # the commit marker takes an offset
    if final_checkpoint:  # every writer signs its tail, as on a graceful stop
        for writer in writers:
            head = writer.head
            if head.size == head.checkpointed:
                continue
            data = sign_checkpoint(
                ring,
                "broker",
                chain=writer.chain,
                size=head.size,
                root=head.frontier.root(),
                head=head.head,
                now=now,
            )
            checkpoints.append(
                LogEntry(
                    CHECKPOINT_TOPIC,
                    0,
                    cp_offset,
                    writer.chain.encode(),
                    data,
                    ((CHECKPOINT_HEADER, writer.chain.encode()),),
                    0,
                )
            )
            cp_offset += 2
    return SyntheticLog(audit, checkpoints)
