"""Countersigning at rotation time: the broker's new key signs each chain's newest trusted
checkpoint again, so that revoking the old key later leaves every chain signed as far as it
was (without it, the same revocation leaves them unsigned); only trusted checkpoints are
endorsed, a second run writes nothing, and ``tiaki audit countersign`` fails in one line on
bad arguments and an unreachable Kafka, and prints one line of counts."""

from __future__ import annotations

import dataclasses
import random
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker._cli import main
from broker.audit import (
    CHECKPOINT_HEADER,
    CHECKPOINT_TOPIC,
    AuditError,
    LogEntry,
    countersign,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    verify_log,
)
from broker.codec import SchemaSet, decode
from broker.envelope import Algorithm, KeyInfo, KeyRing, Purpose
from broker.platform import AUDIT, CHECKPOINTS
from broker.platform._tls import make_tls_material
from broker.runtime._audit import AuditContext
from broker.runtime._chaining import AuditChainer
from broker.transport import Outgoing, Record

from .conftest import ROOT, SUBJECT_KEY, T0, SyntheticLog, build_log, make_ring
from .test_verify import revoke_and_resign

T = TypeVar("T")
ROTATED = T0 + timedelta(hours=2)
NOW = ROTATED + timedelta(minutes=5)
REVOKED = NOW + timedelta(days=30)


def signing_key(ring: KeyRing, at: datetime) -> KeyInfo:
    return ring.current("broker", Purpose.SIGNING, Algorithm.ED25519, at)


def rotate(ring: KeyRing, at: datetime = ROTATED, seed: int = 7) -> KeyInfo:
    """``tiaki keys rotate broker --purpose signing`` at ``at``; return the key it retired."""
    old = signing_key(ring, at)
    ring.rotate("broker", at, random.Random(seed).randbytes, purposes=[Purpose.SIGNING])
    return old


def as_read(outputs: Sequence[Outgoing], after: Sequence[LogEntry]) -> list[LogEntry]:
    """``outputs`` as a reader gets them back from ``tiaki.checkpoints``, after ``after``
    (one partition; a transaction's commit marker takes an offset)."""
    offset = max((e.offset for e in after), default=-1) + 2
    entries = []
    for n, out in enumerate(outputs):
        assert out.value is not None
        entry = LogEntry(out.topic, 0, offset + n, out.key, out.value, out.headers, 0)
        entries.append(entry)
    return entries


def signed_per_chain(
    log: SyntheticLog, checkpoints: list[LogEntry], ring: KeyRing
) -> dict[str, int]:
    return {c.chain: c.signed for c in verify_log(log.audit, checkpoints, ring).chains}


# -- what it writes, and what that does to a later revocation -------------------------------


def test_after_countersigning_a_revocation_leaves_every_record_signed(
    schemas: SchemaSet,
) -> None:
    """The scenario it exists for. Without countersigning, revoking the old key leaves every
    record of both chains unsigned (neither chain gets a new record); with it, none."""
    # Without: rotate, then revoke the old key.
    ring = make_ring()
    log = build_log(ring, schemas)
    assert verify_log(log.audit, log.checkpoints, ring).unsigned == 0
    old = rotate(ring)
    ring.revoke(old.key_id, REVOKED, "suspected compromise")
    without = verify_log(log.audit, log.checkpoints, ring)
    assert without.unsigned == 60
    assert {c.chain: c.signed for c in without.chains} == {"tiaki-broker-0": 0, "tiaki-broker-1": 0}

    # With: rotate, countersign, then revoke the old key (same keys, same log).
    ring = make_ring()
    log = build_log(ring, schemas)
    old = rotate(ring)
    outputs, report = countersign(log.checkpoints, ring, "broker", NOW)
    assert report.countersigned == ("tiaki-broker-0", "tiaki-broker-1")
    assert report.endorsed == (old.key_id,)
    assert report.key_id == signing_key(ring, NOW).key_id != old.key_id
    assert report.summary() == (
        f"chains countersigned with {report.key_id}: 2, already covered by it: 0, "
        "with no trusted checkpoint: 0, with conflicting checkpoints: 0; "
        "checkpoint records refused: 0"
    )
    checkpoints = log.checkpoints + as_read(outputs, log.checkpoints)
    ring.revoke(old.key_id, REVOKED, "suspected compromise")
    after = verify_log(log.audit, checkpoints, ring)
    assert after.unsigned == 0
    assert {c.chain: c.signed for c in after.chains} == {
        "tiaki-broker-0": 32,
        "tiaki-broker-1": 28,
    }
    assert after.distrusted == tuple(c.position for c in log.checkpoints)
    assert after.checkpoints == 2  # the countersignatures, and nothing else, are trusted


def test_a_countersignature_is_the_old_checkpoint_signed_again_now(schemas: SchemaSet) -> None:
    ring = make_ring()
    log = build_log(ring, schemas, records=30, chains=1)
    rotate(ring)
    newest = max(
        (verify_checkpoint(c.value, ring, signer="broker") for c in log.checkpoints),
        key=lambda c: c.size,
    )
    (output,), _ = countersign(log.checkpoints, ring, "broker", NOW)
    assert output.value is not None
    fresh = verify_checkpoint(output.value, ring, signer="broker")
    same = ("chain", "signer", "size", "root", "head")
    assert [getattr(fresh, f) for f in same] == [getattr(newest, f) for f in same]
    assert (fresh.key_id, fresh.signed_at) == (signing_key(ring, NOW).key_id, NOW)


def test_it_writes_checkpoints_keyed_and_marked_as_the_worker_writes_them() -> None:
    """Same topic, key and header as the worker's own (``AuditChainer.seal``)."""
    ring = make_ring()
    chainer = AuditChainer("tiaki-broker-0", ring, every_records=1)
    record = Outgoing(AUDIT, b"k", b"v", (("tiaki-schema", b"00"),))
    (theirs,) = [o for o in chainer.seal([record], T0) if o.topic == CHECKPOINTS]
    assert theirs.value is not None
    entry = LogEntry(CHECKPOINT_TOPIC, 0, 0, theirs.key, theirs.value, theirs.headers, 0)
    rotate(ring)
    (ours,), _ = countersign([entry], ring, "broker", NOW)
    assert (ours.topic, ours.key, ours.headers) == (theirs.topic, theirs.key, theirs.headers)
    assert ours.headers == ((CHECKPOINT_HEADER, b"tiaki-broker-0"),)


# -- idempotence ------------------------------------------------------------------------------


def test_a_second_run_writes_nothing(schemas: SchemaSet) -> None:
    ring = make_ring()
    log = build_log(ring, schemas)
    rotate(ring)
    outputs, _ = countersign(log.checkpoints, ring, "broker", NOW)
    checkpoints = log.checkpoints + as_read(outputs, log.checkpoints)
    again, report = countersign(checkpoints, ring, "broker", NOW + timedelta(minutes=1))
    assert again == []
    assert report.covered == ("tiaki-broker-0", "tiaki-broker-1")
    assert report.countersigned == ()


def test_without_a_rotation_there_is_nothing_to_do(ring: KeyRing, schemas: SchemaSet) -> None:
    """The current key signed every checkpoint: each chain is covered already."""
    log = build_log(ring, schemas)
    outputs, report = countersign(log.checkpoints, ring, "broker", NOW)
    assert outputs == []
    assert report.covered == ("tiaki-broker-0", "tiaki-broker-1")


def test_a_smaller_checkpoint_of_the_new_key_does_not_cover_a_larger_one_of_the_old(
    schemas: SchemaSet,
) -> None:
    """A worker that has not yet read the rotation goes on signing with the old key for a
    moment; a countersigning run in that moment covered less than the old key now does. The
    next run countersigns the old key's newest size, not the first run's."""
    ring = make_ring()
    log = build_log(ring, schemas)
    rotate(ring)
    first = as_read([_resigned(ring, log, "tiaki-broker-0", 5)], log.checkpoints)
    outputs, report = countersign(log.checkpoints + first, ring, "broker", NOW)
    assert report.countersigned == ("tiaki-broker-0", "tiaki-broker-1")
    assert {_chain_of(o): _size_of(o) for o in outputs} == {
        "tiaki-broker-0": 32,
        "tiaki-broker-1": 28,
    }


def _resigned(ring: KeyRing, log: SyntheticLog, chain: str, size: int) -> Outgoing:
    """A checkpoint of ``chain``'s first ``size`` records signed by the current key now."""
    from broker.audit import Frontier, leaf_hash, read_link

    links = sorted(
        (read_link(e) for e in log.audit if read_link(e).chain == chain), key=lambda x: x.seq
    )[:size]
    frontier = Frontier()
    for link in links:
        frontier.append(leaf_hash(link.link))
    data = sign_checkpoint(
        ring,
        "broker",
        chain=chain,
        size=size,
        root=frontier.root(),
        head=links[-1].link,
        now=ROTATED + timedelta(minutes=1),
    )
    return Outgoing(CHECKPOINTS, chain.encode(), data, ((CHECKPOINT_HEADER, chain.encode()),))


# -- what it refuses to endorse ---------------------------------------------------------------


def test_a_chain_whose_checkpoints_are_all_under_a_revoked_key_is_not_rescued(
    schemas: SchemaSet,
) -> None:
    """The old key was revoked before anyone countersigned: chain 0 got a checkpoint under
    the new key since, chain 1 did not. At the next rotation chain 0 is countersigned and
    chain 1 is counted, never signed (nothing trusted vouches for it)."""
    ring = make_ring()
    log = build_log(ring, schemas)
    fresh = revoke_and_resign(ring, log, {"tiaki-broker-0": 20})  # rotates, revokes the old
    rotate(ring, at=ROTATED + timedelta(days=1))
    later = NOW + timedelta(days=1)
    outputs, report = countersign(log.checkpoints + fresh, ring, "broker", later)
    assert report.countersigned == ("tiaki-broker-0",)
    assert report.untrusted == ("tiaki-broker-1",)
    assert [(_chain_of(o), _size_of(o)) for o in outputs] == [("tiaki-broker-0", 20)]


def test_a_tampered_checkpoint_is_skipped_not_countersigned(schemas: SchemaSet) -> None:
    """A checkpoint of chain 0 claiming more records (its size changed, so its signature
    fails) is refused and named; chain 0 is countersigned at its newest *true* size."""
    ring = make_ring()
    log = build_log(ring, schemas)
    rotate(ring)
    newest = max(
        (c for c in log.checkpoints if _chain(c) == "tiaki-broker-0"), key=lambda c: _size(c)
    )
    checkpoint, body, signature = parse_checkpoint(newest.value)
    at = len(body) - 8 - 32 - 32 - 8  # the size field (see the checkpoint's layout)
    forged_body = body[:at] + (checkpoint.size + 10).to_bytes(8, "big") + body[at + 8 :]
    forged = dataclasses.replace(
        newest, offset=newest.offset + 1_000, value=forged_body + signature
    )
    outputs, report = countersign([*log.checkpoints, forged], ring, "broker", NOW)
    assert report.refused == (forged.position,)
    assert report.countersigned == ("tiaki-broker-0", "tiaki-broker-1")
    assert {_chain_of(o): _size_of(o) for o in outputs} == {
        "tiaki-broker-0": 32,
        "tiaki-broker-1": 28,
    }


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda v: v[:-1] + bytes([v[-1] ^ 1]), id="signature"),
        pytest.param(lambda v: v[:20], id="truncated"),
        pytest.param(lambda v: b"", id="empty"),
        pytest.param(lambda v: b"\x02" + v[1:], id="version"),
    ],
)
def test_any_malformed_checkpoint_record_is_refused_and_counted(
    schemas: SchemaSet, mangle: Callable[[bytes], bytes]
) -> None:
    ring = make_ring()
    log = build_log(ring, schemas, records=20, chains=1)
    rotate(ring)
    victim = log.checkpoints[-1]
    bad = dataclasses.replace(victim, value=mangle(victim.value))
    entries = [bad if c is victim else c for c in log.checkpoints]
    outputs, report = countersign(entries, ring, "broker", NOW)
    assert report.refused == (victim.position,)
    # The chain is still countersigned, at the size of its newest checkpoint that verifies.
    survivors = [verify_checkpoint(c.value, ring, signer="broker") for c in log.checkpoints[:-1]]
    assert [_size_of(o) for o in outputs] == [max(c.size for c in survivors)]


def test_a_checkpoint_whose_header_names_another_chain_is_refused(schemas: SchemaSet) -> None:
    ring = make_ring()
    log = build_log(ring, schemas, records=20, chains=1)
    rotate(ring)
    victim = log.checkpoints[-1]
    moved = dataclasses.replace(victim, headers=((CHECKPOINT_HEADER, b"tiaki-broker-9"),))
    _, report = countersign(
        [moved if c is victim else c for c in log.checkpoints], ring, "broker", NOW
    )
    assert report.refused == (victim.position,)


def test_another_principals_checkpoint_is_refused() -> None:
    ring = make_ring()
    rotate(ring)
    data = sign_checkpoint(
        ring, "police", chain="tiaki-broker-0", size=3, root=b"r" * 32, head=b"h" * 32, now=T0
    )
    entry = LogEntry(CHECKPOINT_TOPIC, 0, 4, b"tiaki-broker-0", data, (), 0)
    outputs, report = countersign([entry], ring, "broker", NOW)
    assert (outputs, report.refused) == ([], (entry.position,))


def test_two_trusted_checkpoints_that_disagree_are_not_endorsed(schemas: SchemaSet) -> None:
    """Chain 0 has two trusted checkpoints of one size with different roots: a forged or
    forked history. The countersigner sees no record to tell which, so signs neither."""
    ring = make_ring()
    log = build_log(ring, schemas)
    newest = max(
        (c for c in log.checkpoints if _chain(c) == "tiaki-broker-0"), key=lambda c: _size(c)
    )
    honest = parse_checkpoint(newest.value)[0]
    fork = sign_checkpoint(
        ring,
        "broker",
        chain=honest.chain,
        size=honest.size,
        root=bytes(32),
        head=honest.head,
        now=honest.signed_at,
    )
    forked = dataclasses.replace(newest, offset=newest.offset + 1_000, value=fork)
    rotate(ring)
    outputs, report = countersign([*log.checkpoints, forked], ring, "broker", NOW)
    assert report.conflicting == ("tiaki-broker-0",)
    assert report.countersigned == ("tiaki-broker-1",)
    assert [_chain_of(o) for o in outputs] == ["tiaki-broker-1"]


def test_without_a_usable_current_key_it_refuses(schemas: SchemaSet) -> None:
    ring = make_ring()
    log = build_log(ring, schemas)
    new = signing_key(ring, NOW)
    ring.revoke(new.key_id, NOW, "test")
    with pytest.raises(AuditError, match="cannot countersign"):
        countersign(log.checkpoints, ring, "broker", NOW)

    public_only = KeyRing()
    for info in make_ring().keys(None):
        public_only.add(info)
    with pytest.raises(AuditError, match=r"private key .* is not held here"):
        countersign(log.checkpoints, public_only, "broker", NOW)


# -- the property ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.integers(1, 40),
    chains=st.integers(1, 3),
    every=st.integers(1, 15),
    final=st.booleans(),
)
def test_countersigned_chains_stay_signed_as_far_as_they_were(
    records: int, chains: int, every: int, final: bool
) -> None:
    """For any log, countersigning then revoking the old key leaves each chain signed exactly
    as far as before the rotation, and a second run writes nothing."""
    ring = make_ring()
    log = build_log(
        ring, _SCHEMAS, records=records, chains=chains, every_records=every, final_checkpoint=final
    )
    before = signed_per_chain(log, log.checkpoints, ring)
    old = rotate(ring)
    outputs, report = countersign(log.checkpoints, ring, "broker", NOW)
    assert len(outputs) == len(report.countersigned) == sum(1 for n in before.values() if n)
    checkpoints = log.checkpoints + as_read(outputs, log.checkpoints)
    again, _ = countersign(checkpoints, ring, "broker", NOW + timedelta(seconds=1))
    assert again == []
    ring.revoke(old.key_id, REVOKED, "test")
    assert signed_per_chain(log, checkpoints, ring) == before


def _chain(entry: LogEntry) -> str:
    return parse_checkpoint(entry.value)[0].chain


def _size(entry: LogEntry) -> int:
    return parse_checkpoint(entry.value)[0].size


def _chain_of(out: Outgoing) -> str:
    return parse_checkpoint(out.value or b"")[0].chain


def _size_of(out: Outgoing) -> int:
    return parse_checkpoint(out.value or b"")[0].size


def _load_schemas() -> SchemaSet:
    from broker.codec import load_schemas

    return load_schemas(ROOT / "schemas")


_SCHEMAS = _load_schemas()


# -- the command: one-line errors -------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Development keys for the shipped registry (the command loads every agency's)."""
    home = tmp_path_factory.mktemp("countersign-keys")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TIAKI_HOME", str(home))
        env.setenv("TIAKI_REGISTRY", str(ROOT / "policies" / "agencies.yaml"))
        assert main(["keys", "init"]) == 0
    return home / "keys"


@pytest.fixture
def broker_home(tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A broker operator's ``TIAKI_HOME``: its keys, and a profile for a Kafka that is not
    there (a loopback port nothing listens on)."""
    import json
    import shutil

    shutil.copytree(keys, tmp_path / "keys")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    profiles = tmp_path / "profiles"
    profiles.mkdir(mode=0o700)
    (profiles / "ca.pem").write_bytes(make_tls_material(NOW).ca_cert_pem)
    profile = {
        "bootstrap_servers": f"127.0.0.1:{port}",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "broker",
        "sasl_plain_password": "synthetic-password",
        "ssl_cafile": "ca.pem",
    }
    (profiles / "broker.json").write_text(json.dumps(profile))
    (profiles / "broker.json").chmod(0o600)
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_REGISTRY", str(ROOT / "policies" / "agencies.yaml"))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(ROOT / "schemas"))
    monkeypatch.delenv("TIAKI_OPERATOR", raising=False)
    return tmp_path


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 1) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    assert captured.err.count("\n") == 1, captured.err
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["audit", "countersign"], 2, "tiaki: Missing option '--operator'"),
        (["audit", "countersign", "--operator", "  "], 1, "tiaki: error: --operator: give"),
        (["audit", "countersign", "--operator", "A", "extra"], 2, "tiaki: Got unexpected extra"),
        (["audit", "countersign", "--operatr", "A"], 2, "tiaki: No such option: --operatr"),
    ],
)
def test_bad_arguments_are_one_line(
    broker_home: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    says: str,
) -> None:
    assert one_line(argv, capsys, code).startswith(says)


def test_an_unreachable_kafka_is_one_line(
    broker_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_line(["audit", "countersign", "--operator", "SYN operator"], capsys)
    assert err.startswith("tiaki: error: could not reach Kafka for the checkpoints: "), err
    assert "synthetic-password" not in err


class KafkaLessTools:
    """The broker's tools without Kafka: the act is handed ``records`` as if it had read
    them once it held its queue, and what it would commit is kept in ``written``."""

    def __init__(self, ring: KeyRing, schemas: SchemaSet, records: list[Record]) -> None:
        self.ring = ring
        self.schemas = schemas
        self.records = records
        self.written: list[Outgoing] = []

    def audit_context(self) -> AuditContext:
        return AuditContext(subject_key=SUBJECT_KEY, policy_hash=None)

    def act(
        self,
        queue: str,
        topic: str,
        decide: Callable[[list[Record]], tuple[list[Outgoing], T]],
        now: datetime,
    ) -> T:
        assert (queue, topic) == ("checkpoints", CHECKPOINTS)
        self.written, result = decide(self.records)
        return result


def test_the_command_prints_its_counts_warns_and_audits_its_act(
    broker_home: Path,
    schemas: SchemaSet,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the command makes of what it reads: one line of counts on stdout; on stderr the
    refused record and the chains it could not countersign (a name a revoked key chose is
    shown quoted); and it writes the countersignature with its ``key_operation`` audit
    record, naming the operator and the keys."""
    import broker.audit._cli as cli

    ring = make_ring()
    log = build_log(ring, schemas)
    odd = sign_checkpoint(
        ring, "broker", chain="odd\x1b[2J", size=1, root=b"r" * 32, head=b"h" * 32, now=T0
    )
    fresh = revoke_and_resign(ring, log, {"tiaki-broker-0": 20})  # K1 revoked, K2 signs
    middle = signing_key(ring, NOW)
    rotate(ring, at=NOW)  # K3
    entries = [
        *log.checkpoints,
        *fresh,
        LogEntry(CHECKPOINT_TOPIC, 0, 2_000, b"odd", odd, (), 0),
        LogEntry(CHECKPOINT_TOPIC, 0, 2_002, b"x", b"garbage", (), 0),
    ]
    records = [
        Record(e.topic, e.partition, e.offset, e.key, e.value, e.headers, 0) for e in entries
    ]
    tools = KafkaLessTools(ring, schemas, records)
    monkeypatch.setattr(cli, "BrokerTools", lambda: tools)
    monkeypatch.setattr(cli, "_now", lambda: NOW + timedelta(minutes=1))

    assert main(["audit", "countersign", "--operator", "SYN custodian"]) == 0
    out, err = capsys.readouterr()
    new = signing_key(ring, NOW + timedelta(minutes=1)).key_id
    assert out == (
        f"chains countersigned with {new}: 1, already covered by it: 0, "
        "with no trusted checkpoint: 2, with conflicting checkpoints: 0; "
        "checkpoint records refused: 1\n"
    )
    assert err.splitlines() == [
        "tiaki: warning: 1 checkpoint records do not verify and were not countersigned "
        "(tiaki.checkpoints partition 0 offset 2002): run `tiaki audit verify`",
        "tiaki: warning: 2 chains have no trusted checkpoint (every one is under a revoked "
        "key), not countersigned: 'odd\\x1b[2J', tiaki-broker-1",
    ]
    checkpoint, audit = tools.written
    assert (_chain_of(checkpoint), _size_of(checkpoint)) == ("tiaki-broker-0", 20)
    assert audit.topic == AUDIT
    schema = schemas.latest("AuditRecord")
    record = decode(audit.value or b"", schema)
    assert (record["action"], record["actor"], record["outcome"], record["reason_codes"]) == (
        "key_operation",
        "SYN custodian",
        "countersigned",
        ["checkpoints_countersigned"],
    )
    assert record["detail"] == (
        f"chains countersigned with {new}: 1, already covered by it: 0, "
        "with no trusted checkpoint: 2, with conflicting checkpoints: 0; "
        f"checkpoint records refused: 1; the checkpoints endorsed were signed by {middle.key_id}"
    )


def test_a_run_with_nothing_to_sign_writes_not_even_an_audit_record(
    broker_home: Path,
    schemas: SchemaSet,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import broker.audit._cli as cli

    ring = make_ring()
    log = build_log(ring, schemas)
    records = [
        Record(e.topic, e.partition, e.offset, e.key, e.value, e.headers, 0)
        for e in log.checkpoints
    ]
    tools = KafkaLessTools(ring, schemas, records)
    monkeypatch.setattr(cli, "BrokerTools", lambda: tools)
    monkeypatch.setattr(cli, "_now", lambda: NOW)
    assert main(["audit", "countersign", "--operator", "SYN custodian"]) == 0
    assert capsys.readouterr().err == ""
    assert tools.written == []
