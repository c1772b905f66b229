"""A revocation in the agency's key folder is in force in the running adapter within the 5
seconds the broker takes too (docs/adapters.md, "Rotate keys"): nothing new is sealed to a
revoked broker key, nothing signed under one is opened, the agency's own revoked signing key
signs nothing, and a rolled-back document brings no revoked key back, after a restart either.

Revocations arrive as the operator's revised public document copied into the agency's folder
(its revocation list untouched), or, for the agency's own keys, ``tiaki keys revoke`` there."""

from __future__ import annotations

import datetime as dt
import random
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapters import AdapterClient, InMemoryConnection, Received, RetryPolicy
from adapters._keys import KeyFolder
from broker.envelope import (
    BROKER,
    Algorithm,
    KeyRing,
    KeyState,
    KeyStore,
    Kind,
    Opener,
    Purpose,
    init_dev_keys,
)
from broker.platform import ingress
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import SCHEMAS, FakeClock, example
from tests.unit.adapters.test_key_reload import AGENCY, NOW, _broker, _broker_ring

#: What a refresh waits for: the folder is read again 5 seconds after the last read.
REFRESH = dt.timedelta(seconds=5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW + dt.timedelta(minutes=1))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    init_dev_keys(KeyStore(folder), {AGENCY, "police"}, now=NOW, random=random.Random(3).randbytes)
    return folder


def _client(cluster: InMemoryCluster, clock: FakeClock, keys: Path, state: Path) -> AdapterClient:
    folder = KeyFolder(keys, AGENCY)
    return AdapterClient(
        AGENCY,
        InMemoryConnection(cluster),
        folder.load(),
        SCHEMAS,
        state,
        clock=clock,
        retry=RetryPolicy(max_attempts=1),
        send_in_background=False,
        key_folder=folder,
    )


def _operator_revokes(keys: Path, scratch: Path, purpose: Purpose, now: dt.datetime) -> list[str]:
    """The operator revokes the broker's keys of ``purpose`` in the broker's own folder
    (``scratch``, a copy of ``keys``), and the revised ``broker.json`` alone is copied into
    the agency's folder. Returns the revoked key ids."""
    shutil.copytree(keys, scratch)
    store = KeyStore(scratch)
    ring = store.load(private_for=None)
    revoked = [k.key_id for k in ring.keys(BROKER) if k.purpose is purpose]
    for key_id in revoked:
        ring.revoke(key_id, now, "synthetic: compromised")
    _hand_over(store, ring, keys)
    return revoked


def _hand_over(store: KeyStore, ring: KeyRing, keys: Path) -> None:
    store.save(ring, [BROKER])
    shutil.copyfile(store.public_path(BROKER), keys / "public" / "broker.json")


def _publish_doc() -> dict[str, object]:
    return example("TaskEvent", source_agency=AGENCY)


async def _ingress(cluster: InMemoryCluster) -> list[bytes]:
    async with cluster.reader() as reader:
        return [r.value for r in await reader.read_all(ingress(AGENCY))]


async def test_after_the_brokers_encryption_key_is_revoked_events_wait_in_the_outbox(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    async with _client(cluster, clock, keys, tmp_path / "state") as client:
        await client.publish("TaskEvent", _publish_doc())
        assert await client.send_pending() == 1  # sealed to the broker's key, data key cached
        _operator_revokes(keys, tmp_path / "broker-keys", Purpose.ENCRYPTION, clock())
        clock.advance(seconds=REFRESH.total_seconds())
        await client.publish("TaskEvent", _publish_doc())
        assert await client.send_pending() == 0
        assert client.statistics().pending == 1
    assert len(await _ingress(cluster)) == 1  # nothing sealed to the revoked key
    async with _client(cluster, clock, keys, tmp_path / "state") as client:  # restarted
        assert await client.send_pending() == 0
        assert client.statistics().pending == 1


async def test_the_brokers_new_key_is_taken_in_without_a_restart(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    """Rotated and the old key revoked: what waited goes to the new key, no restart."""
    scratch = tmp_path / "broker-keys"
    async with _client(cluster, clock, keys, tmp_path / "state") as client:
        assert await client.send_pending() == 0  # the first read of the folder
        _operator_revokes(keys, scratch, Purpose.ENCRYPTION, clock())
        clock.advance(seconds=REFRESH.total_seconds())
        event_id = await client.publish("TaskEvent", _publish_doc())
        assert await client.send_pending() == 0
        clock.advance(minutes=1)
        store = KeyStore(scratch)  # the operator makes the broker new encryption keys
        ring = store.load(private_for=None)
        for algorithm in (Algorithm.X25519, Algorithm.MLKEM768_X25519):
            ring.generate(BROKER, algorithm, clock(), random.Random(9).randbytes)
        _hand_over(store, ring, keys)
        clock.advance(seconds=REFRESH.total_seconds())
        assert await client.send_pending() == 1
    (record,) = await _ingress(cluster)
    broker = Opener(BROKER, KeyStore(scratch).load(private_for=None))
    opened = broker.open(record, topic=ingress(AGENCY), now=clock(), kind=Kind.INGRESS)
    assert opened.event_id == event_id


async def test_an_egress_record_signed_by_a_revoked_broker_key_is_refused(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    """Under the data key the adapter already opened records with, and under a new one."""
    broker = _broker(cluster, clock, keys)  # the broker's keys before the revocation
    shutil.copytree(keys, tmp_path / "keys-before")  # for a new data key under the same
    seen: list[Received] = []
    async with _client(cluster, clock, keys, tmp_path / "state") as client:
        first = await broker.deliver(AGENCY)
        await client.receive(seen.append)
        _operator_revokes(keys, tmp_path / "broker-keys", Purpose.SIGNING, clock())
        clock.advance(seconds=REFRESH.total_seconds())
        cached = await broker.deliver(AGENCY)  # the same data key, announced as before
        fresh = await _broker(cluster, clock, tmp_path / "keys-before").deliver(AGENCY)
        await client.receive(seen.append)
        letters = client.dead_letters.list()
    assert [e.event_id for e in seen] == [first]
    assert len(letters) == 2
    assert {letter.reason for letter in letters} == {"cannot open: key_revoked"}
    assert {cached, fresh}.isdisjoint(e.event_id for e in seen)


async def test_a_rolled_back_document_does_not_bring_a_revoked_key_back(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    original = (keys / "public" / "broker.json").read_bytes()
    broker = _broker(cluster, clock, keys)
    async with _client(cluster, clock, keys, tmp_path / "state") as client:
        await client.receive(lambda event: None)
        (revoked,) = _operator_revokes(keys, tmp_path / "broker-keys", Purpose.SIGNING, clock())
        clock.advance(seconds=REFRESH.total_seconds())
        await client.receive(lambda event: None)  # takes the revocation in
        (keys / "public" / "broker.json").write_bytes(original)  # a stale copy put back
        clock.advance(seconds=REFRESH.total_seconds())
        await broker.deliver(AGENCY)
        seen: list[Received] = []
        await client.receive(seen.append)
        assert seen == []
        (letter,) = client.dead_letters.list()
        assert letter.reason == "cannot open: key_revoked"
    # The adapter wrote it down: a restart on the stale document keeps it revoked.
    assert revoked in KeyStore(keys).revocations().by_id
    assert KeyFolder(keys, AGENCY).load().get(revoked).state is KeyState.REVOKED


async def test_the_agencys_own_revoked_signing_key_signs_nothing_and_is_not_replaced(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    """The agency rotated its signing key and revoked the old one before restarting its
    adapter: the running adapter neither signs with the revoked key nor switches to the new
    one (the broker may not have it yet); the restart does switch."""
    broker_ring = _broker_ring(keys)
    async with _client(cluster, clock, keys, tmp_path / "state") as client:
        await client.publish("TaskEvent", _publish_doc())
        assert await client.send_pending() == 1
        store = KeyStore(keys)
        with store.locked():  # tiaki keys rotate, then tiaki keys revoke
            ring = store.load(private_for=[AGENCY])
            (old,) = [k for k in ring.keys(AGENCY) if k.purpose is Purpose.SIGNING]
            ring.rotate(AGENCY, clock(), random.Random(7).randbytes, purposes=[Purpose.SIGNING])
            ring.revoke(old.key_id, clock(), "synthetic: leaked")
            store.save(ring, [AGENCY])
        clock.advance(seconds=REFRESH.total_seconds())
        await client.publish("TaskEvent", _publish_doc())
        assert await client.send_pending() == 0
        assert client.statistics().pending == 1
    assert len(await _ingress(cluster)) == 1
    clock.advance(minutes=1)
    async with _client(cluster, clock, keys, tmp_path / "state") as client:  # restarted
        assert await client.send_pending() == 1
    # Once the broker has the new document, the record opens: it was signed with the new
    # key, since the old one is revoked there too.
    broker_ring.update_from(KeyStore(keys).load(private_for=[]))
    assert broker_ring.get(old.key_id).state is KeyState.REVOKED
    second = (await _ingress(cluster))[1]
    opened = Opener(BROKER, broker_ring).open(
        second, topic=ingress(AGENCY), now=clock(), kind=Kind.INGRESS
    )
    assert opened.source == AGENCY


async def test_a_broken_broker_document_keeps_the_keys_in_force_and_is_logged_once(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    async with _client(cluster, clock, keys, tmp_path / "state") as client:
        assert await client.send_pending() == 0
        (keys / "public" / "broker.json").write_text("{not json")
        with capture_logs() as logs:
            for _ in range(3):
                clock.advance(seconds=REFRESH.total_seconds())
                await client.publish("TaskEvent", _publish_doc())
                assert await client.send_pending() == 1
    refused = [e for e in logs if e["event"].startswith("key document refused")]
    assert len(refused) == 1
    assert refused[0]["source"] == BROKER
    assert refused[0]["error_type"] == "KeyStoreError"
