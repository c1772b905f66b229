"""A worker's own acts are audited: each policy set it takes into force or refuses, each key
change it takes in or refuses (DESIGN.md: every policy change and key operation becomes an
audit record). They go out with the worker's next transaction, again after an abort, and once."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from broker.audit._checkpoint import parse_checkpoint
from broker.codec import decode
from broker.envelope import Algorithm, KeyRing, KeyState, KeyStore, Purpose
from broker.envelope._store import init_dev_keys
from broker.platform import CHECKPOINTS, STATE_CHAINS
from broker.policy import PolicyStore, load_roster
from broker.runtime._chaining import AuditChainer
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._policy_watch import PolicyWatcher
from broker.runtime._release import bundle
from broker.runtime._service import RefusalsOnce, refresh_keys
from broker.runtime._worker import Worker
from broker.transport import InMemoryCluster, Outgoing, TransportError
from tests.unit.runtime.test_intake import NOW, REGISTRY, SCHEMAS, make_ring
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider
from tests.unit.runtime.test_policy_watch import _bundle, release  # noqa: F401 (a fixture)
from tests.unit.runtime.test_service_keys import PRINCIPALS, T0
from tests.unit.runtime.test_worker import setup
from tests.unit.runtime.test_worker_transient import quick_worker

AUDIT = SCHEMAS.latest("AuditRecord")


def audited(outputs: list[Outgoing]) -> list[dict[str, Any]]:
    return [decode(o.value, AUDIT) for o in outputs if o.topic == "tiaki.audit"]


def test_a_policy_change_goes_out_with_the_next_transaction_once_and_again_after_an_abort() -> None:
    pipeline = Harness(ScriptedDecider()).pipeline
    assert pipeline.escalations(NOW) == []
    pipeline.note_policy(NOW, replaced=None, started=True)
    (started,) = audited(pipeline.escalations(NOW))
    assert (started["outcome"], started["reason_codes"]) == ("in_force", ["worker_started"])
    pipeline.committed()
    pipeline.note_policy(NOW, replaced="ab" * 32)
    (record,) = audited(first := pipeline.escalations(NOW))
    assert (record["action"], record["outcome"], record["reason_codes"]) == (
        "policy_change",
        "adopted",
        ["policy_adopted"],
    )
    # The audit record names the policy now in force, and the one it replaced.
    assert record["policy_hash"] == ScriptedDecider.policy_hash
    assert record["detail"] == f"replaces policy {'ab' * 32}"
    assert first[0].key == b"policy"
    mark = pipeline.mark()
    # A batch closed while that one commits does not carry the note again ...
    pipeline.note_policy(NOW, replaced=None, rejected="PolicyError")
    (second,) = audited(pipeline.escalations(NOW))
    assert (second["outcome"], second["reason_codes"]) == (
        "reject",
        ["policy_rejected", "PolicyError"],
    )
    assert pipeline.escalations(NOW) == []
    pipeline.committed(mark)  # ... the first commits; the second's transaction aborts:
    pipeline.aborted()
    assert [r["reason_codes"] for r in audited(pipeline.escalations(NOW))] == [
        ["policy_rejected", "PolicyError"]
    ]
    pipeline.committed()
    pipeline.aborted()
    assert pipeline.escalations(NOW) == []  # committed: never again


def test_key_changes_and_refused_ones_are_audited_without_the_revocation_reason() -> None:
    pipeline = Harness(ScriptedDecider()).pipeline
    ring = KeyRing()
    ring.generate("police", Algorithm.X25519, NOW, random.Random(7).randbytes)
    (key,) = ring.keys("police")
    revoked = ring.revoke(key.key_id, NOW, reason="laptop left on a bus by SYN officer")
    pipeline.note_keys(NOW, [revoked], [key])
    records = audited(outputs := pipeline.escalations(NOW))
    assert [
        (r["action"], r["source_agency"], r["outcome"], r["reason_codes"]) for r in records
    ] == [
        ("key_operation", "police", "revoked", ["key_revoked"]),
        ("key_operation", "police", "reject", ["key_change_refused"]),
    ]
    assert records[0]["detail"] == f"key {key.key_id} (encryption, x25519) of police: revoked"
    assert all(o.key == b"police" for o in outputs)
    assert "bus" not in json.dumps(records, default=str)


def test_every_key_in_force_at_a_start_is_audited_with_its_state() -> None:
    # A key revoked while no worker ran shows as the difference between two starts' records.
    pipeline = Harness(ScriptedDecider()).pipeline
    ring = KeyRing()
    ring.generate("police", Algorithm.X25519, NOW, random.Random(7).randbytes)
    ring.generate("police", Algorithm.ED25519, NOW, random.Random(8).randbytes)
    signing = ring.current("police", Purpose.SIGNING, Algorithm.ED25519, NOW)
    ring.revoke(signing.key_id, NOW, reason="SYN maintenance-window revocation")
    pipeline.note_keys(NOW, ring.keys(None), started=True)
    records = audited(pipeline.escalations(NOW))
    assert sorted((r["outcome"], r["reason_codes"], r["detail"]) for r in records) == sorted(
        (
            k.state.value,
            ["worker_started", f"key_{k.state.value}"],
            f"key {k.key_id} ({k.purpose.value}, {k.algorithm.value}) of police: {k.state.value}",
        )
        for k in ring.keys(None)
    )
    assert {r["outcome"] for r in records} == {"active", "revoked"}
    assert "maintenance" not in json.dumps(records, default=str)


async def test_an_idle_worker_commits_a_note_in_a_transaction_of_its_own() -> None:
    cluster, harness, worker, _ = setup()
    async with worker:
        assert await worker.step() == 0
        harness.pipeline.note_policy(NOW, replaced=None)
        cluster.fail_next_commit()  # the first try aborts; the note goes again
        await worker.step()
        await worker.step()
        await worker.step()
    async with cluster.reader() as reader:
        records = [decode(r.value, AUDIT) for r in await reader.read_all("tiaki.audit")]
    assert [(r["action"], r["outcome"]) for r in records] == [("policy_change", "adopted")]


class PolicyNotes(list[tuple[str | None, str | None, bool]]):
    """A :class:`PolicyNote` that keeps (replaced, rejected, started) of each call."""

    def __call__(
        self,
        now: dt.datetime,
        *,
        replaced: str | None,
        rejected: str | None = None,
        started: bool = False,
    ) -> None:
        self.append((replaced, rejected, started))


def test_the_watcher_notes_a_new_policy_and_a_refused_one_not_the_same_one_again(
    release: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    folder, roster = release
    store = PolicyStore(load_roster(roster))
    notes = PolicyNotes()

    watcher = PolicyWatcher(store, BrokerMetrics(CollectorRegistry()), tmp_path, note=notes)
    good = json.loads(bundle(folder.parent))["files"]
    assert watcher.apply(_bundle(good))
    assert watcher.apply(_bundle(good))  # the same set again (a restart reads it again)
    unsigned = {k: v for k, v in good.items() if "/approvals/" not in k}
    assert not watcher.apply(_bundle(unsigned))
    assert notes == [(None, None, False), (None, type(store.last_error).__name__, False)]


def test_catching_up_at_start_audits_where_the_history_left_the_worker_once(
    release: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """A restart replays the compacted topic, whose older releases linger a while: it must
    not record changes back and forth the worker never made, only where it ended."""
    folder, roster = release
    notes = PolicyNotes()

    good = json.loads(bundle(folder.parent))["files"]
    unsigned = {k: v for k, v in good.items() if "/approvals/" not in k}
    # Started on the set the topic holds: in force from now, nothing else.
    store = PolicyStore(load_roster(roster))
    store.load(folder)
    watcher = PolicyWatcher(store, BrokerMetrics(CollectorRegistry()), tmp_path, note=notes)
    started_with = store.engine.policy_hash if store.engine else None
    watcher.catch_up([_bundle(data) for data in (good, unsigned, good)])
    assert notes == []
    watcher.caught_up(started_with)
    assert notes == [(None, None, True)]
    # Started with no set; the newest release on the topic is refused: taken in the one
    # before it, and the refusal of the newest.
    notes.clear()
    store = PolicyStore(load_roster(roster))
    watcher = PolicyWatcher(store, BrokerMetrics(CollectorRegistry()), tmp_path, note=notes)
    watcher.catch_up([_bundle(data) for data in (good, unsigned)])
    watcher.caught_up(None)
    assert watcher.last_rejection is not None
    assert notes == [(None, None, False), (None, watcher.last_rejection, False)]
    assert store.engine is not None
    # Afterwards each change is audited as it comes.
    notes.clear()
    watcher.apply(_bundle(unsigned))
    assert notes == [(None, type(store.last_error).__name__, False)]


def test_refresh_keys_tells_the_pipeline_what_changed_and_what_it_refused(
    tmp_path: Path,
) -> None:
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "corrections"], now=T0)
    now = T0 + dt.timedelta(minutes=1)
    ring = store.load(PRINCIPALS, private_for=["broker"])
    told: list[tuple[list[tuple[str, KeyState]], list[str]]] = []

    def note(at: dt.datetime, changed: Any, refused: Any) -> None:
        told.append(([(i.key_id, i.state) for i in changed], [i.key_id for i in refused]))

    once = RefusalsOnce(note)  # as follow_keys passes it
    assert refresh_keys(store, PRINCIPALS, ring, once) == {}
    assert told == []  # nothing changed: nothing to audit
    police = ring.current("police", Purpose.SIGNING, Algorithm.ED25519, now)
    admin = store.load()  # tiaki keys revoke
    admin.revoke(police.key_id, now, "compromised")
    store.save(admin, ["police"])
    refresh_keys(store, PRINCIPALS, ring, once)
    assert told == [([(police.key_id, KeyState.REVOKED)], [])]

    # A document that changes what a key id stands for is refused key by key, and audited.
    other = ring.current("corrections", Purpose.SIGNING, Algorithm.ED25519, now)
    doc = json.loads(store.public_path("corrections").read_text())
    police_doc = json.loads(store.public_path("police").read_text())
    (entry,) = [e for e in doc["keys"] if e["key_id"] == other.key_id]
    entry["public_key"] = next(
        e["public_key"] for e in police_doc["keys"] if e["key_id"] == police.key_id
    )
    store.public_path("corrections").write_text(json.dumps(doc))
    told.clear()
    refresh_keys(store, PRINCIPALS, ring, once)
    assert told == [([], [other.key_id])]
    # Refused again at every refresh while the document stays: audited once, not every 5 s.
    for _ in range(3):
        refresh_keys(store, PRINCIPALS, ring, once)
    assert told == [([], [other.key_id])]


def chained_cluster() -> InMemoryCluster:
    """A provisioned cluster with the topics a worker's audit chain writes."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    cluster.create_topic(CHECKPOINTS, 1)
    cluster.create_topic(STATE_CHAINS, 1)
    return cluster


def reply_lost_once(transport: Any) -> tuple[Any, list[bool]]:
    """A commit for ``transport`` whose first reply is lost after Kafka committed it, and
    the list that says whether it was."""
    commit, lost = transport.commit, []

    async def lost_reply(outputs: Any, consumed: Any) -> None:
        await commit(outputs, consumed)  # Kafka committed it ...
        if not lost:
            lost.append(True)
            raise TransportError("commit reply lost", retriable=True)  # ... unheard

    return lost_reply, lost


async def test_a_note_in_a_transaction_whose_reply_was_lost_is_not_written_twice() -> None:
    """A commit reported failed may have committed all the same (a lost reply). The state
    re-read puts back what the state topics hold, but a note is not state: the audit chain's
    re-read head, written by the same transaction, says whether it went out."""
    cluster = chained_cluster()
    harness = Harness(ScriptedDecider())
    transport = cluster.worker()
    worker = quick_worker(transport, harness, chain_reader=cluster.reader)
    lost_reply, lost = reply_lost_once(transport)

    async with worker:
        await worker.step()
        harness.pipeline.note_policy(NOW, replaced=None)
        transport.commit = lost_reply  # type: ignore[method-assign]
        for _ in range(4):
            await worker.step()
        cluster.fail_next_commit()  # a commit that really fails: the note goes again
        harness.pipeline.note_policy(NOW, replaced=None, rejected="ApprovalError")
        for _ in range(4):
            await worker.step()
    assert lost
    assert worker.statistics().aborted == 2
    async with cluster.reader() as reader:
        records = [decode(r.value, AUDIT) for r in await reader.read_all("tiaki.audit")]
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("policy_change", "adopted"),
        ("policy_change", "reject"),
    ]


async def test_a_batch_whose_commit_reply_was_lost_is_counted_once_it_shows_committed() -> None:
    """Its records are on the topics and the rewind goes past them, so they are never
    processed again: once the chain's re-read head shows the batch committed, its metrics
    count it, so quarantines and shares on the topics are in what the alerts read."""
    cluster = chained_cluster()
    harness = Harness(ScriptedDecider())
    transport = cluster.worker()
    worker = quick_worker(transport, harness, chain_reader=cluster.reader)
    lost_reply, lost = reply_lost_once(transport)

    transport.commit = lost_reply  # type: ignore[method-assign]
    async with cluster.publisher() as publisher:
        for i in range(3):
            await publisher.publish("tiaki.ingress.police", b"k", b"\x01garbage-%d" % i)
    async with worker:
        for _ in range(6):
            await worker.step()
    assert lost
    async with cluster.reader() as reader:
        assert len(await reader.read_all("tiaki.dlq")) == 3  # once, by the unheard commit
    value = worker._metrics.registry.get_sample_value
    assert value("tiaki_quarantined_total", {"reason": "malformed_envelope"}) == 3


async def test_a_stopping_worker_signs_the_records_no_checkpoint_covers_yet() -> None:
    """A worker stopped for good (SIGTERM) signs its chain's tail in its last transaction:
    otherwise that tail waits for a checkpoint that never comes, and `tiaki audit verify
    --strict` reports it as records appended after the last checkpoint (which is what a
    forged tail looks like)."""
    cluster = chained_cluster()
    harness = Harness(ScriptedDecider())
    transport = cluster.worker()
    chain = AuditChainer(
        transport.transactional_id,
        make_ring(),
        reader=cluster.reader,
        every=dt.timedelta(hours=1),  # never due by time during the test
    )
    worker = Worker(
        transport,
        harness.pipeline,
        BrokerMetrics(CollectorRegistry()),
        clock=lambda: NOW,
        poll_timeout_ms=10,
        chain=chain,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))

    async def audited_after(count: int, first: int) -> None:
        async with cluster.publisher() as publisher:
            for i in range(first, first + count):
                await publisher.publish("tiaki.ingress.police", b"k", b"\x01garbage-%d" % i)
        for _ in range(300):
            async with cluster.reader() as reader:
                if len(await reader.read_all("tiaki.audit")) == first + count:
                    return
            await asyncio.sleep(0.01)

    await audited_after(3, 0)  # the chain's first transaction signs at once
    await audited_after(2, 3)  # not due again for an hour
    async with cluster.reader() as reader:
        signed = [parse_checkpoint(r.value)[0].size for r in await reader.read_all(CHECKPOINTS)]
    assert signed == [3]
    stop.set()
    await running
    async with cluster.reader() as reader:
        checkpoints = [parse_checkpoint(r.value)[0] for r in await reader.read_all(CHECKPOINTS)]
    assert [c.size for c in checkpoints] == [3, 5]  # the tail, signed on the way out
