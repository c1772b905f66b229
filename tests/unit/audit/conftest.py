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
    sign_head,
)
from broker.codec import SchemaSet, encode, load_schemas
from broker.envelope import Algorithm, KeyRing
from broker.runtime._audit import grounds_ref, subject_ref

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


#: The synthetic person the tests look for, and how they are given on the command line.
PERSON = "NHI:ZZZ0016"


def person_ref() -> str:
    # As the broker writes it: the scheme as the event carries it (the schema's enum symbol).
    return subject_ref(SUBJECT_KEY, "nhi", "ZZZ0016")


def event_id(n: int) -> str:
    """The id of synthetic event ``n``: a UUID, as an event header's is (``5eed...``: letters
    in it, so a test can write it in capitals)."""
    return str(uuid.UUID(int=0x5EED << 112 | n))


def audit_record(schemas: SchemaSet, n: int, now: datetime) -> dict[str, Any]:
    """Synthetic audit record ``n``: every third a share to Corrections, every fifth about
    :data:`PERSON`."""
    episode = schemas.latest("CaseAllocation")
    shared = n % 3 == 0
    return {
        "audit_id": uuid.UUID(int=n),
        "recorded_at": now,
        "action": "decision" if shared else "escalation",
        "event_id": event_id(n),
        "event_type": "CaseAllocation" if shared else "InformationRequest",
        "schema_fingerprint": episode.fingerprint_hex if shared else None,
        "case_ref": None,
        "actor": "broker",
        "source_agency": "police" if shared else "msd",
        "recipient": "corrections" if shared else "police",
        "outcome": "share" if shared else "escalated",
        "route": "fva_s20" if shared else None,
        "legal_basis": "fva_s20" if shared else None,
        "purpose": "fv_risk_needs_assessment" if shared else None,
        "consent": None,
        "person_told": None,
        "rule_ids": ["SYN-1"] if shared else [],
        "reason_codes": [] if shared else ["request_unanswered"],
        "obligations": [],
        "field_actions": {
            "header.case_id": "keep",
            "header.sharing.imminent_danger": "keep",
            "reason": "drop",
        }
        if shared
        else {},
        "subject_refs": [person_ref()] if n % 5 == 0 else [f"{n % 97:064x}"],
        "policy_hash": None,
        "detail": None,
        # A decision keeps keyed hashes of its discloser's stated grounds (AuditRecord v3).
        "justification_ref": grounds_ref(SUBJECT_KEY, "justification", f"SYN grounds {n}")
        if shared
        else None,
        "accountable_ref": grounds_ref(SUBJECT_KEY, "accountable", "SYN coordinator")
        if shared
        else None,
    }


def audit_value(schemas: SchemaSet, n: int, now: datetime) -> tuple[bytes, bytes]:
    """(Avro value, schema header) of synthetic audit record ``n``."""
    schema = schemas.latest("AuditRecord")
    record = audit_record(schemas, n, now)
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
                data = sign_head(ring, "broker", writer.head, now)
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
            data = sign_head(ring, "broker", head, now)
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
