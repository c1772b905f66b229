"""The broker's chainer over a transport (the in-memory one): each transaction's audit records
are chained with the head committed beside them, a failed or unclear commit neither forks nor
breaks the chain, a restarted writer continues it, and the result verifies."""

from __future__ import annotations

from datetime import timedelta

from broker.audit import LogEntry, verify_log
from broker.audit._kafka import entry_of
from broker.codec import SchemaSet
from broker.envelope import KeyRing
from broker.platform import AUDIT, CHECKPOINTS, STATE_CHAINS, egress
from broker.runtime._chaining import AuditChainer
from broker.transport import InMemoryCluster, InMemoryTransport, Outgoing, TransportError

from .conftest import T0, audit_value

CHAIN = "tiaki-broker-0"


def cluster() -> InMemoryCluster:
    c = InMemoryCluster.provisioned(["police", "corrections"])
    c.create_topic(CHECKPOINTS, 1)
    c.create_topic(STATE_CHAINS, 1)
    return c


def batch(schemas: SchemaSet, start: int, size: int) -> list[Outgoing]:
    out: list[Outgoing] = []
    for n in range(start, start + size):
        value, schema = audit_value(schemas, n, T0)
        out.append(Outgoing(AUDIT, b"SYN-CASE-%d" % (n % 4), value, (("tiaki-schema", schema),)))
        out.append(Outgoing(egress("corrections"), b"SYN-CASE", b"sealed"))
    return out


async def log_of(c: InMemoryCluster) -> tuple[list[LogEntry], list[LogEntry]]:
    async with c.reader() as reader:
        audit = [entry_of(r) for r in await reader.read_all(AUDIT)]
        checkpoints = [entry_of(r) for r in await reader.read_all(CHECKPOINTS)]
    return audit, checkpoints


async def commit(
    transport: InMemoryTransport, chainer: AuditChainer, outputs: list[Outgoing], at: int
) -> bool:
    if chainer.stale:
        await chainer.resync()
    sealed = chainer.seal(outputs, T0 + timedelta(seconds=at))
    try:
        await transport.commit(sealed, [])
    except TransportError:
        chainer.aborted()
        return False
    chainer.committed()
    return True


async def test_chain_survives_aborts_unclear_commits_and_restarts(
    ring: KeyRing, schemas: SchemaSet
) -> None:
    c = cluster()
    async with c.worker(topics=[]) as transport:
        chainer = AuditChainer(CHAIN, ring, reader=c.reader, every_records=4)
        assert chainer.stale  # it reads its head before the first link
        assert await commit(transport, chainer, batch(schemas, 0, 3), 1)
        c.fail_next_commit()
        assert not await commit(transport, chainer, batch(schemas, 3, 3), 2)  # aborted
        assert await commit(transport, chainer, batch(schemas, 3, 3), 3)  # the same, again
        # A commit that succeeded but whose reply was lost: the worker treats it as failed.
        sealed = chainer.seal(batch(schemas, 6, 2), T0 + timedelta(seconds=4))
        await transport.commit(sealed, [])
        chainer.aborted()
        assert chainer.stale
        assert await commit(transport, chainer, batch(schemas, 8, 2), 5)
        assert chainer.head.size == 10  # 3 + 3 + 2 (the unclear one, kept) + 2

    # A restarted worker with the same transactional id continues the same chain.
    async with c.worker(topics=[]) as transport:
        restarted = AuditChainer(CHAIN, ring, reader=c.reader, every_records=4)
        assert await commit(transport, restarted, batch(schemas, 10, 5), 30)
        assert restarted.head.size == 15

    audit, checkpoints = await log_of(c)
    report = verify_log(audit, checkpoints, ring)
    assert [(s.chain, s.size) for s in report.chains] == [(CHAIN, 15)]
    assert report.unsigned == 0  # the last batch crossed the count cadence
    assert report.checkpoints >= 3


async def test_a_checkpoint_is_due_by_age_without_new_records(
    ring: KeyRing, schemas: SchemaSet
) -> None:
    c = cluster()
    async with c.worker(topics=[]) as transport:
        chainer = AuditChainer(CHAIN, ring, reader=c.reader, every_records=1000)
        assert await commit(
            transport, chainer, batch(schemas, 0, 2), 0
        )  # a new chain signs at once
        assert await commit(transport, chainer, batch(schemas, 2, 2), 1)
        assert not chainer.due(T0 + timedelta(seconds=2))
        assert chainer.due(T0 + timedelta(seconds=11))
        assert await commit(transport, chainer, [], 11)  # checkpoint and head only
        assert not chainer.due(T0 + timedelta(seconds=60))
    audit, checkpoints = await log_of(c)
    assert verify_log(audit, checkpoints, ring).unsigned == 0


async def test_the_age_cadence_is_the_one_the_chainer_is_given(
    ring: KeyRing, schemas: SchemaSet
) -> None:
    """``tiaki broker run --checkpoint-seconds 2``: unsigned records wait 2 s, not 10."""
    c = cluster()
    async with c.worker(topics=[]) as transport:
        chainer = AuditChainer(CHAIN, ring, reader=c.reader, every=timedelta(seconds=2))
        assert await commit(transport, chainer, batch(schemas, 0, 2), 0)  # signed at once
        assert await commit(transport, chainer, batch(schemas, 2, 2), 1)
        assert not chainer.due(T0 + timedelta(milliseconds=1999))
        assert chainer.due(T0 + timedelta(seconds=2))


def test_only_audit_records_are_chained(ring: KeyRing, schemas: SchemaSet) -> None:
    chainer = AuditChainer(CHAIN, ring, every_records=1000)
    sealed = chainer.seal(batch(schemas, 0, 2), T0)
    # a new chain's first transaction is signed at once; then every 1000 records or 10 s
    assert [o.topic for o in sealed] == [AUDIT, egress("corrections")] * 2 + [
        CHECKPOINTS,
        STATE_CHAINS,
    ]
    assert all(dict(o.headers).get("tiaki-seq") is None for o in sealed if o.topic != AUDIT)
    assert [dict(o.headers)["tiaki-seq"] for o in sealed if o.topic == AUDIT] == [b"0", b"1"]
