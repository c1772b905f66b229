"""``tiaki audit countersign`` on real Kafka: a broker worker writes a chain and stops for good
(a retired worker); the broker's signing key is rotated (``tiaki keys rotate broker``). Revoking
the old key now would leave the retired chain unsigned for ever. After ``tiaki audit
countersign`` (as the broker's principal, with the broker's keys) the same revocation leaves
every chain signed as far as it was, ``tiaki audit verify --strict`` passes, a second run
writes nothing, and the act itself is an audit record (action ``key_operation``).

The session's modules share one Kafka, one log and one key folder, so this module puts back
what it changed: the revocation is undone at the end (a revoked broker key would make every
later module's broker records unreadable), while the rotation stays (the checkpoints the new
key signed are on the shared log, and later modules must know that key). Countersigning reads
``tiaki.checkpoints`` with the broker's credential, as provisioned.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker._cli import main
from broker.audit import LogEntry, VerifyReport, read_link, verify_log
from broker.audit._kafka import read_log, verify_live
from broker.envelope import Algorithm, KeyRing, KeyState, KeyStore, Purpose
from broker.platform import AUDIT
from tests.integration.broker_env import SCHEMAS, BrokerEnv
from tests.integration.conftest import Cluster
from tests.integration.test_audit import story

ACT_CHAIN = "tiaki-broker-act-checkpoints"
OPERATOR = "SYN operator (key custodian)"


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[BrokerEnv]:
    with BrokerEnv.running(cluster, start=False) as environment:
        yield environment


def signing_key_id(ring: KeyRing) -> str:
    now = datetime.now(UTC)
    return ring.current("broker", Purpose.SIGNING, Algorithm.ED25519, now).key_id


def live(env: BrokerEnv, ring: KeyRing) -> tuple[list[LogEntry], list[LogEntry], VerifyReport]:
    return asyncio.run(verify_live(env.cluster.profile("compliance"), ring))


def signed(report: VerifyReport) -> dict[str, int]:
    return {c.chain: c.signed for c in report.chains}


def wait_until_signed(env: BrokerEnv, chain: str, within: float = 40) -> VerifyReport:
    """The log once ``chain`` exists and a checkpoint covers all of it."""
    deadline = time.monotonic() + within
    while True:
        _, _, report = live(env, env.ring)
        mine = {c.chain: c for c in report.chains}.get(chain)
        if mine is not None and mine.size and mine.signed == mine.size:
            return report
        assert time.monotonic() < deadline, f"{chain} not signed within {within} s: {mine}"
        time.sleep(0.5)


def settled(env: BrokerEnv, checkpoints: int) -> tuple[list[LogEntry], list[LogEntry]]:
    """The log once it holds ``checkpoints`` checkpoints: Kafka makes a transaction visible
    partition by partition, so the one just committed may not be whole at the first look."""
    deadline = time.monotonic() + 15
    while True:
        audit, found = asyncio.run(read_log(env.cluster.profile("compliance")))
        if len(found) >= checkpoints and any(read_link(e).chain == ACT_CHAIN for e in audit):
            assert len(found) == checkpoints
            return audit, found
        assert time.monotonic() < deadline, f"{len(found)} checkpoints, not {checkpoints}"
        time.sleep(0.2)


def test_countersigning_keeps_a_retired_chain_signed_after_the_old_key_is_revoked(
    env: BrokerEnv,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.environment().items():
        if name.startswith("TIAKI_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("TIAKI_OPERATOR", OPERATOR)
    keys = env.home / "keys"
    principals = env.ring.principals

    # A worker writes its chain, is signed up to its last record, and stops for good.
    clock = time.monotonic()
    worker = f"retired-{uuid.uuid4().hex[:6]}"
    chain = f"tiaki-broker-{worker}"
    env.start(worker)
    asyncio.run(env.publish("police", story(f"SYN-CASE-{uuid.uuid4().hex[:8]}", "SYN-RETIRED")))
    wait_until_signed(env, chain)
    env.stop_all()
    retired_after = time.monotonic() - clock

    # The broker's signing key is rotated; the old one is still trusted.
    old = signing_key_id(env.ring)
    assert main(["keys", "rotate", "broker", "--purpose", "signing"]) == 0
    rotated = KeyStore(keys).load(principals, private_for=[])
    new = signing_key_id(rotated)
    assert new != old
    audit, checkpoints, before = live(env, rotated)
    assert signed(before)[chain] == {c.chain: c.size for c in before.chains}[chain] > 0

    # Without countersigning, revoking the old key leaves the retired chain unsigned.
    rotated.revoke(old, datetime.now(UTC), "test: what if it were revoked now")
    unsigned = verify_log(audit, checkpoints, rotated)
    assert signed(unsigned)[chain] == 0
    assert unsigned.unsigned > before.unsigned

    capsys.readouterr()
    vouched = sum(1 for n in signed(before).values() if n)  # chains a checkpoint covers
    started = time.monotonic()
    assert main(["audit", "countersign"]) == 0
    took = time.monotonic() - started
    first = capsys.readouterr()
    assert first.out == (
        f"chains countersigned with {new}: {vouched}, already covered by it: 0, "
        "with no trusted checkpoint: 0, with conflicting checkpoints: 0; "
        "checkpoint records refused: 0\n"
    )
    assert first.err == ""
    # The countersignatures, and the act's own checkpoint (its chain is new: signed at
    # once, under the new key), once Kafka shows the whole transaction.
    written = settled(env, len(checkpoints) + vouched + 1)

    assert main(["audit", "countersign"]) == 0  # again: nothing to do, nothing written
    assert capsys.readouterr().out == (  # every chain, and the act's own, now covered
        f"chains countersigned with {new}: 0, already covered by it: {vouched + 1}, "
        "with no trusted checkpoint: 0, with conflicting checkpoints: 0; "
        "checkpoint records refused: 0\n"
    )
    assert asyncio.run(read_log(env.cluster.profile("compliance"))) == written
    with capsys.disabled():
        print(
            f"\nworker run and retired in {retired_after:.1f} s; countersign took "
            f"{took:.2f} s ({vouched} chains)"
        )

    # The act is an audit record of its own, on its own chain, naming who acted.
    (act,) = [e for e in written[0] if read_link(e).chain == ACT_CHAIN]
    record = SCHEMAS.decode(act.value, bytes.fromhex((act.header("tiaki-schema") or b"").decode()))
    assert (record["action"], record["actor"], record["outcome"]) == (
        "key_operation",
        OPERATOR,
        "countersigned",
    )
    assert record["reason_codes"] == ["checkpoints_countersigned"]
    assert new in record["detail"]
    assert old in record["detail"]
    assert act.topic == AUDIT

    # Now revoke the old key for real (tiaki keys revoke), and verify as compliance would.
    saved = tmp_path / "keys-before-revocation"
    shutil.copytree(keys, saved)
    try:
        assert main(["keys", "revoke", old, "--reason", "test: retired", "--force"]) == 0
        capsys.readouterr()
        assert main(["audit", "verify", "--strict"]) == 0
        out = capsys.readouterr().out
        size = signed(before)[chain]
        assert f"  {chain}: {size} records, {size} signed, " in out
        assert ("not yet signed" in out) == bool(before.unsigned)  # none, run on its own
        assert "signed by a revoked key and vouch for nothing" in out
        revoked = KeyStore(keys).load(principals, private_for=[])
        _, _, after = live(env, revoked)
        assert after.distrusted  # the old key's checkpoints vouch for nothing now...
        assert {c: n for c, n in signed(after).items() if c != ACT_CHAIN} == signed(before)
        assert signed(after)[chain] == signed(before)[chain] > 0  # ...and nothing is lost
        assert after.unsigned == before.unsigned
        act_chain = {c.chain: c for c in after.chains}[ACT_CHAIN]
        assert act_chain.signed == act_chain.size == 1  # one act, signed by the new key
    finally:
        # Later modules share this key folder (and its revocation list): put it back as it
        # was before the revocation, the old key retiring.
        shutil.rmtree(keys)
        shutil.copytree(saved, keys)
    restored = KeyStore(keys).load(principals, private_for=[])
    assert restored.get(old).state is KeyState.RETIRING
