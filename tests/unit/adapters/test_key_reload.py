"""A key rotation does not dead-letter what arrives in its window, and what was dead-lettered
can be re-applied: the client reads its key folder again when a record does not open for a
key, and ``tiaki adapter replay-dead-letters`` hands every dead letter to the sinks again.

The broker's side and the adapter's side each read the key folder on their own (no key ring
is shared between them), as two processes would."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from adapters import AdapterClient, InMemoryConnection, Received, RetryPolicy
from adapters._client import KeyFolder
from broker._cli import main
from broker.envelope import (
    Algorithm,
    KeyRing,
    KeyStore,
    Kind,
    Opener,
    Purpose,
    Sealer,
    init_dev_keys,
)
from broker.platform import egress, ingress
from broker.platform._profiles import Profile, save_profile
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import SCHEMAS, FakeBroker, FakeClock, example

AGENCY = "oranga-tamariki"
#: Keys are made now: the command line's client reads the real clock, and a key made at the
#: other tests' fixed time would have expired by then.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    init_dev_keys(KeyStore(folder), {AGENCY, "police"}, now=NOW, random=random.Random(3).randbytes)
    return folder


def _rotate_on_disk(keys: Path, owner: str, now: dt.datetime, *purposes: Purpose) -> None:
    """``tiaki keys rotate OWNER`` in ``keys``: new keys active, the old ones retiring."""
    store = KeyStore(keys)
    with store.locked():
        ring = store.load(private_for=[owner])
        ring.rotate(owner, now, random.Random(7).randbytes, purposes=purposes)
        store.save(ring, [owner])


def _broker(cluster: InMemoryCluster, clock: FakeClock, keys: Path) -> FakeBroker:
    """The broker as it is after reading ``keys`` now (its own ring)."""
    return FakeBroker(cluster, clock, sealer=Sealer("broker", _broker_ring(keys)))


def _broker_ring(keys: Path) -> KeyRing:
    return KeyStore(keys).load(private_for=None)


def _client(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, state: Path, **options: object
) -> AdapterClient:
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
        **options,  # type: ignore[arg-type]
    )


async def test_an_event_sealed_to_the_agencys_new_key_is_handled_without_a_restart(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    clock.advance(minutes=1)
    seen: list[Received] = []
    client = _client(cluster, clock, keys, tmp_path / "state", key_folder=KeyFolder(keys, AGENCY))
    async with client:
        before = await _broker(cluster, clock, keys).deliver(AGENCY)
        await client.receive(seen.append)
        clock.advance(hours=1)
        _rotate_on_disk(keys, AGENCY, clock(), Purpose.ENCRYPTION)
        # The broker took the new public document in and seals to the new key.
        after = await _broker(cluster, clock, keys).deliver(AGENCY)
        await client.receive(seen.append)
        assert client.dead_letters.list() == []
    assert [e.event_id for e in seen] == [before, after]


async def test_an_event_signed_with_the_brokers_new_key_is_handled_without_a_restart(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    """The operator rotated the broker's signing key and gave the agency its new document."""
    clock.advance(minutes=1)
    seen: list[Received] = []
    client = _client(cluster, clock, keys, tmp_path / "state", key_folder=KeyFolder(keys, AGENCY))
    async with client:
        clock.advance(hours=1)
        _rotate_on_disk(keys, "broker", clock(), Purpose.SIGNING)
        event_id = await _broker(cluster, clock, keys).deliver(AGENCY)
        await client.receive(seen.append)
        assert client.dead_letters.list() == []
    assert [e.event_id for e in seen] == [event_id]


async def test_a_reload_does_not_change_the_key_the_client_signs_with(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    """The agency rotated both keys and the broker sealed to the new one: the client opens
    it, but keeps signing with the key it started with until it is restarted, so the broker
    (here one that has not taken in the new signing key) still accepts what it sends."""
    clock.advance(minutes=1)
    broker_before = _broker_ring(keys)
    client = _client(cluster, clock, keys, tmp_path / "state", key_folder=KeyFolder(keys, AGENCY))
    async with client:
        clock.advance(hours=1)
        _rotate_on_disk(keys, AGENCY, clock(), Purpose.ENCRYPTION, Purpose.SIGNING)
        await _broker(cluster, clock, keys).deliver(AGENCY)
        seen: list[Received] = []
        await client.receive(seen.append)
        assert len(seen) == 1
        event_id = await client.publish("TaskEvent", example("TaskEvent", source_agency=AGENCY))
        assert await client.send_pending() == 1
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress(AGENCY))
    opened = Opener("broker", broker_before).open(
        record.value, topic=record.topic, now=clock(), kind=Kind.INGRESS
    )
    assert opened.event_id == event_id


async def test_a_key_still_unknown_after_reading_the_folder_is_dead_lettered_then_replayed(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    """The broker sealed to a key the agency's folder does not have yet (the new document
    not copied in): dead-lettered as before. Once it is there, replaying applies it."""
    clock.advance(minutes=1)
    elsewhere = tmp_path / "keys-elsewhere"  # where the agency rotated, not yet copied over
    shutil.copytree(keys, elsewhere)
    client = _client(cluster, clock, keys, tmp_path / "state", key_folder=KeyFolder(keys, AGENCY))
    async with client:
        clock.advance(hours=1)
        _rotate_on_disk(elsewhere, AGENCY, clock(), Purpose.ENCRYPTION)
        event_id = await _broker(cluster, clock, elsewhere).deliver(AGENCY)
        await client.receive(lambda event: None)
        (letter,) = client.dead_letters.list()
        assert letter.reason == "cannot open: unknown_key"
        _copy_key_set(elsewhere, keys, AGENCY)
        applied: list[str] = []
        assert await client.replay_dead_letters(lambda e: applied.append(e.event_id)) == [
            (letter.event_id, None)
        ]
        assert applied == [event_id]
        assert client.dead_letters.list() == []


def _copy_key_set(source: Path, target: Path, owner: str) -> None:
    (target / "public" / f"{owner}.json").write_bytes(
        (source / "public" / f"{owner}.json").read_bytes()
    )
    for key in (source / "private" / owner).iterdir():
        (target / "private" / owner / key.name).write_bytes(key.read_bytes())
        (target / "private" / owner / key.name).chmod(0o600)


async def test_without_a_key_folder_a_record_sealed_to_an_unknown_key_is_dead_lettered(
    cluster: InMemoryCluster, clock: FakeClock, keys: Path, tmp_path: Path
) -> None:
    clock.advance(minutes=1)
    client = _client(cluster, clock, keys, tmp_path / "state")
    async with client:
        clock.advance(hours=1)
        _rotate_on_disk(keys, AGENCY, clock(), Purpose.ENCRYPTION)
        await _broker(cluster, clock, keys).deliver(AGENCY)
        await client.receive(lambda event: None)
        (letter,) = client.dead_letters.list()
    assert letter.reason == "cannot open: unknown_key"


# -- tiaki adapter replay-dead-letters ----------------------------------------------------


CONFIG = """\
agency: oranga-tamariki
sinks:
  - kind: folder
    path: "{home}/received"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Path) -> Iterator[Path]:
    """A TIAKI_HOME with the agency's keys, profile and configuration (``adapter.yaml``)."""
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    save_profile(
        tmp_path / "profiles" / f"{AGENCY}.json",
        Profile(
            bootstrap_servers="127.0.0.1:9",
            sasl_plain_username=AGENCY,
            sasl_plain_password="synthetic-password",
            ssl_cafile="ca.pem",
        ),
    )
    (tmp_path / "adapter.yaml").write_text(CONFIG)
    # Logs to stderr, as the command's own logging would: its output is on stdout alone.
    monkeypatch.setattr("adapters._cli.configure_logging", lambda: None)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        yield tmp_path
    finally:
        structlog.reset_defaults()


async def _dead_letters(cluster: InMemoryCluster, clock: FakeClock, home: Path) -> list[str]:
    """Two events the handler failed on and a record that does not open, in the adapter's
    dead-letter folder; their ids as listed (the good ones first)."""
    broker = _broker(cluster, clock, home / "keys")
    good = [await broker.deliver(AGENCY), await broker.deliver(AGENCY, "RiskAssessment")]
    async with cluster.publisher() as publisher:
        await publisher.publish(egress(AGENCY), b"SYN", b"\x01 not an envelope")

    def failing(event: Received) -> None:
        raise RuntimeError("synthetic: the case system is down")

    state = home / "adapters" / AGENCY
    async with _client(cluster, clock, home / "keys", state) as client:
        await client.receive(failing)
        letters = client.dead_letters.list()
    assert len(letters) == 3
    by_event = {letter.event_id.rpartition("/")[2]: letter.event_id for letter in letters}
    broken = next(letter.event_id for letter in letters if letter.event_type == "unknown")
    return [by_event[event_id] for event_id in good] + [broken]


def test_replay_dead_letters_applies_each_through_the_sinks_and_reports_the_rest(
    cluster: InMemoryCluster,
    clock: FakeClock,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock.advance(minutes=1)
    task, risk, broken = asyncio.run(_dead_letters(cluster, clock, home))
    assert main(["adapter", "replay-dead-letters", "--config", str(home / "adapter.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sorted(out[:-1]) == sorted(
        [
            f"{task}  applied",
            f"{risk}  applied",
            f"{broken}  still failing: cannot open: malformed_envelope",
        ]
    )
    folder = home / "adapters" / AGENCY / "dead-letters"
    assert out[-1] == f"2 applied, 1 still failing, of 3 dead letter(s) in {folder}"
    received = sorted(p.name for p in (home / "received").iterdir())
    assert received == sorted(f"{key.replace('/', '_')}.json" for key in (task, risk))
    # Run again: what was applied is gone, what still fails is still there.
    assert main(["adapter", "replay-dead-letters", "--config", str(home / "adapter.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{broken}  still failing: cannot open: malformed_envelope"


def test_replay_dead_letters_exits_0_when_all_apply(
    cluster: InMemoryCluster,
    clock: FakeClock,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock.advance(minutes=1)

    async def dead_letter() -> str:
        event_id = await _broker(cluster, clock, home / "keys").deliver(AGENCY)

        def failing(event: Received) -> None:
            raise RuntimeError("synthetic")

        async with _client(cluster, clock, home / "keys", home / "adapters" / AGENCY) as client:
            await client.receive(failing)
        return event_id

    event_id = asyncio.run(dead_letter())
    assert main(["adapter", "replay-dead-letters", "--config", str(home / "adapter.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"/{event_id}  applied")
    assert out[1].startswith("1 applied, 0 still failing, of 1 dead letter(s)")


def test_replay_dead_letters_bad_arguments_are_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["adapter", "replay-dead-letters"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Missing option '--config'" in err
    missing = home / "nowhere.yaml"
    assert main(["adapter", "replay-dead-letters", "--config", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tiaki: error: {missing}")
    (home / "other.yaml").write_text("agency: nobody-registered\n")
    assert main(["adapter", "replay-dead-letters", "--config", str(home / "other.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not in the registry" in err


def test_the_key_folder_loads_only_the_agencys_private_keys(keys: Path) -> None:
    ring = KeyFolder(keys, AGENCY).load()
    mine = ring.current(AGENCY, Purpose.SIGNING, Algorithm.ED25519, NOW)
    assert ring.has_private(mine.key_id)
    broker = ring.current("broker", Purpose.SIGNING, Algorithm.ED25519, NOW)
    assert not ring.has_private(broker.key_id)
    assert "police" not in ring.owners() or not any(
        ring.has_private(k.key_id) for k in ring.keys("police")
    )
