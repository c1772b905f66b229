"""Reading the audit and checkpoint topics from Kafka (the I/O edge of the audit tools).

Reads are read-committed, so an aborted transaction's records (and the chain links in them)
are never seen, exactly as the chain writer assumed when it rolled its head back. Every read
is a one-shot command's: a cluster that does not answer fails it after
:data:`~broker.transport.CONNECT_TIMEOUT_S`, in one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from broker.audit._errors import LogTampered
from broker.audit._index import AuditIndex
from broker.audit._log import AUDIT_TOPIC, CHECKPOINT_TOPIC, LogEntry
from broker.audit._verify import VerifyReport, verify_log
from broker.envelope import KeyRing
from broker.platform import Profile
from broker.transport import CONNECT_TIMEOUT_S, KafkaReader, Record


def entry_of(record: Record) -> LogEntry:
    return LogEntry(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.headers,
        record.timestamp_ms,
    )


async def read_topic(profile: Profile, topic: str, *, timeout_s: float = 120.0) -> list[LogEntry]:
    """Every committed record of ``topic``, by partition then offset."""
    async with KafkaReader(
        profile, timeout_s=timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S
    ) as reader:
        return [entry_of(r) for r in await reader.read_all(topic)]


#: Records read (and indexed, in one transaction) at a time by :func:`index_live`.
INDEX_CHUNK = 20_000


async def index_live(
    profile: Profile, index: AuditIndex, *, workers: int = 1, timeout_s: float = 120.0
) -> int:
    """Index the audit topic from where the index stands; return the records added.

    Reads on from the index's own positions, a chunk at a time, so a run reads only what is
    new and holds one chunk in memory, however long the log (seven years of it).
    """
    added = 0
    async with KafkaReader(
        profile, timeout_s=timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S
    ) as reader:
        while True:
            records = await reader.read_from(AUDIT_TOPIC, index.positions(), limit=INDEX_CHUNK)
            count = index.add([entry_of(r) for r in records], workers=workers)
            if not count:  # at the end (or nothing new past transaction markers)
                return added
            added += count


async def read_log(
    profile: Profile, *, timeout_s: float = 120.0
) -> tuple[list[LogEntry], list[LogEntry]]:
    """(audit records, checkpoints) as the compliance principal reads them.

    Checkpoints first: two topics cannot be read at one instant, and a transaction may commit
    between the reads. Every checkpoint commits with (or after) the records it covers, so the
    audit read, which starts later, sees all of them; the other order would show a checkpoint
    ahead of its records, which looks exactly like a truncated log.
    """
    async with KafkaReader(
        profile, timeout_s=timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S
    ) as reader:
        checkpoints = [entry_of(r) for r in await reader.read_all(CHECKPOINT_TOPIC)]
        audit = [entry_of(r) for r in await reader.read_all(AUDIT_TOPIC)]
    return audit, checkpoints


async def verify_live(
    profile: Profile,
    ring: KeyRing,
    *,
    witnesses: Sequence[bytes] = (),
    attempts: int = 5,
    pause_s: float = 0.5,
    timeout_s: float = 120.0,
) -> tuple[list[LogEntry], list[LogEntry], VerifyReport]:
    """Read and verify the live log; re-read a few times before believing a failure.

    Why: Kafka makes a transaction visible partition by partition. Its commit markers are
    written to each partition it touched one after the other, so for a few milliseconds a
    read-committed reader can see a transaction's records on one audit partition and not yet
    on another (or its checkpoint before its records). A running broker's newest transaction
    can therefore look like a gap at the tail of its chain. Real tampering stays when read
    again; an in-flight commit does not, so a failure is reported only if it survives
    ``attempts`` reads ``pause_s`` apart. An exported log is settled and needs none of this.
    """
    for _ in range(max(1, attempts) - 1):
        audit, checkpoints = await read_log(profile, timeout_s=timeout_s)
        try:
            return audit, checkpoints, verify_log(audit, checkpoints, ring, witnesses=witnesses)
        except LogTampered:
            await asyncio.sleep(pause_s)
    audit, checkpoints = await read_log(profile, timeout_s=timeout_s)
    return audit, checkpoints, verify_log(audit, checkpoints, ring, witnesses=witnesses)
