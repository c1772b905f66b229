"""``audit verify`` over a copied log: a clean log verifies, and each of the six kinds of
tampering is detected, naming the position where it happened."""

from __future__ import annotations

import base64
import dataclasses
import functools
import random
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import (
    CHAIN_HEADER,
    CHECKPOINT_HEADER,
    CHECKPOINT_TOPIC,
    LINK_HEADER,
    PREV_HEADER,
    SEQ_HEADER,
    Frontier,
    LogEntry,
    LogTampered,
    dump_lines,
    leaf_hash,
    load_lines,
    read_link,
    sign_checkpoint,
    verify_log,
)
from broker.audit._chain import SCHEMA_HEADER
from broker.codec import SchemaSet, load_schemas
from broker.envelope import KeyRing, Purpose

from .conftest import ROOT, T0, SyntheticLog, build_log, make_ring


@pytest.fixture
def log(ring: KeyRing, schemas: SchemaSet) -> SyntheticLog:
    return build_log(ring, schemas)


def in_order(entries: list[LogEntry]) -> list[LogEntry]:
    return sorted(entries, key=lambda e: (e.partition, e.offset))


def test_a_clean_log_verifies(log: SyntheticLog, ring: KeyRing) -> None:
    report = verify_log(log.audit, log.checkpoints, ring)
    assert report.records == 60
    assert {c.chain: c.size for c in report.chains} == {"tiaki-broker-0": 32, "tiaki-broker-1": 28}
    assert report.unsigned == 0
    assert report.checkpoints >= 4


def test_the_export_round_trips_and_still_verifies(log: SyntheticLog, ring: KeyRing) -> None:
    lines = list(dump_lines(log.audit + log.checkpoints, exported_at="2026-03-02T10:00:00Z"))
    entries = load_lines(lines)
    assert entries == log.audit + log.checkpoints
    audit = [e for e in entries if e.topic == "tiaki.audit"]
    verify_log(audit, [e for e in entries if e.topic != "tiaki.audit"], ring)


def test_one_changed_byte_is_detected_at_its_record(log: SyntheticLog, ring: KeyRing) -> None:
    victim = in_order(log.audit)[17]
    value = bytearray(victim.value)
    value[len(value) // 2] ^= 0x01
    tampered = [dataclasses.replace(e, value=bytes(value)) if e is victim else e for e in log.audit]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    assert caught.value.position == victim.position
    assert "altered" in caught.value.reason


def test_a_byte_changed_with_a_recomputed_link_is_still_detected(
    log: SyntheticLog, ring: KeyRing
) -> None:
    """An attacker who also recomputes the record's own link breaks the next one's prev."""
    from broker.audit import link_hash

    victim = in_order(log.audit)[5]
    link = read_link(victim)
    value = victim.value[:-1] + bytes([victim.value[-1] ^ 1])
    new_link = link_hash(
        link.chain, link.seq, link.prev, victim.header("tiaki-schema") or b"", value
    )
    headers = tuple(
        (k, new_link.hex().encode()) if k == LINK_HEADER else (k, v) for k, v in victim.headers
    )
    forged = dataclasses.replace(victim, value=value, headers=headers)
    tampered = [forged if e is victim else e for e in log.audit]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    successor = next(
        e
        for e in log.audit
        if read_link(e).chain == link.chain and read_link(e).seq == link.seq + 1
    )
    assert caught.value.position == successor.position


def test_a_deleted_record_is_detected(log: SyntheticLog, ring: KeyRing) -> None:
    victim = in_order(log.audit)[30]
    link = read_link(victim)
    tampered = [e for e in log.audit if e is not victim]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    assert caught.value.position == f"chain {link.chain} seq {link.seq}"
    assert "missing" in caught.value.reason


def test_an_inserted_unchained_record_is_detected(log: SyntheticLog, ring: KeyRing) -> None:
    template = in_order(log.audit)[10]
    inserted = LogEntry(
        "tiaki.audit", template.partition, template.offset + 100_000, None, b"forged", (), 0
    )
    with pytest.raises(LogTampered) as caught:
        verify_log([*log.audit, inserted], log.checkpoints, ring)
    assert caught.value.position == inserted.position
    assert "not chained" in caught.value.reason


def test_an_inserted_copy_of_a_record_is_detected(log: SyntheticLog, ring: KeyRing) -> None:
    ordered = in_order(log.audit)
    copy = dataclasses.replace(
        ordered[10], offset=ordered[-1].offset + 1, partition=ordered[-1].partition
    )
    with pytest.raises(LogTampered) as caught:
        verify_log([*log.audit, copy], log.checkpoints, ring)
    assert caught.value.position == copy.position
    assert "repeated" in caught.value.reason


def test_an_inserted_record_with_forged_chain_headers_is_detected(
    log: SyntheticLog, ring: KeyRing
) -> None:
    """A forger who builds a valid-looking link at the next seq still cannot follow the
    chain's real predecessor and the signed checkpoints."""
    from broker.audit import link_hash

    ordered = in_order(log.audit)
    template = ordered[3]
    link = read_link(template)
    forged_link = link_hash(link.chain, link.seq, bytes(32), b"", b"forged")
    headers = (
        (CHAIN_HEADER, link.chain.encode()),
        (SEQ_HEADER, str(link.seq).encode()),
        ("tiaki-prev", bytes(32).hex().encode()),
        (LINK_HEADER, forged_link.hex().encode()),
    )
    forged = dataclasses.replace(template, value=b"forged", headers=headers)
    tampered = [forged if e is template else e for e in log.audit]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    assert caught.value.position == template.position


def test_two_swapped_records_are_detected(log: SyntheticLog, ring: KeyRing) -> None:
    ordered = in_order(log.audit)
    # two records of one chain on one partition, the second later in the chain
    first = ordered[12]
    second = next(
        e
        for e in ordered[13:]
        if e.partition == first.partition and read_link(e).chain == read_link(first).chain
    )
    swapped = {
        id(first): dataclasses.replace(second, offset=first.offset),
        id(second): dataclasses.replace(first, offset=second.offset),
    }
    tampered = [swapped.get(id(e), e) for e in log.audit]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    assert caught.value.position == first.position
    assert "reordered" in caught.value.reason


def test_a_truncated_tail_is_detected(log: SyntheticLog, ring: KeyRing) -> None:
    chain = "tiaki-broker-1"
    mine = sorted(
        (e for e in log.audit if read_link(e).chain == chain), key=lambda e: read_link(e).seq
    )
    cut = {id(e) for e in mine[-4:]}
    tampered = [e for e in log.audit if id(e) not in cut]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    assert caught.value.position == f"chain {chain} seq {len(mine) - 4}"
    assert "truncated" in caught.value.reason


def test_a_truncated_tail_with_its_checkpoint_is_caught_by_a_witness(
    log: SyntheticLog, ring: KeyRing
) -> None:
    """Cut the records *and* the checkpoint that covered them: the log alone looks whole, but
    an agency that saved the checkpoint proves the log was rewritten."""
    chain = "tiaki-broker-1"
    mine = sorted(
        (e for e in log.audit if read_link(e).chain == chain), key=lambda e: read_link(e).seq
    )
    last_checkpoint = [
        c for c in log.checkpoints if c.header("tiaki-checkpoint") == chain.encode()
    ][-1]
    cut = {id(e) for e in mine[-4:]}
    audit = [e for e in log.audit if id(e) not in cut]
    checkpoints = [c for c in log.checkpoints if c is not last_checkpoint]
    with pytest.raises(LogTampered):  # the shorter log alone might pass; the witness does not
        verify_log(audit, checkpoints, ring, witnesses=[last_checkpoint.value])
    # and without the cut, the witness's checkpoint is consistent with the log
    report = verify_log(
        log.audit, log.checkpoints, ring, witnesses=[c.value for c in log.checkpoints]
    )
    assert report.witnesses == len(log.checkpoints)


def test_a_replaced_checkpoint_signature_is_detected(log: SyntheticLog, ring: KeyRing) -> None:
    victim = log.checkpoints[1]
    forged = dataclasses.replace(victim, value=victim.value[:-64] + bytes(64))
    tampered = [forged if c is victim else c for c in log.checkpoints]
    with pytest.raises(LogTampered) as caught:
        verify_log(log.audit, tampered, ring)
    assert caught.value.position == f"tiaki.checkpoints partition 0 offset {victim.offset}"
    assert "signature" in caught.value.reason


def test_a_checkpoint_signed_by_another_key_is_detected(log: SyntheticLog) -> None:
    with pytest.raises(LogTampered) as caught:
        verify_log(log.audit, log.checkpoints, make_ring_other())
    assert caught.value.position.startswith("tiaki.checkpoints")


def make_ring_other() -> KeyRing:
    import random
    from datetime import timedelta

    from broker.envelope import Algorithm

    from .conftest import T0

    other = KeyRing()
    other.generate("broker", Algorithm.ED25519, T0 - timedelta(days=1), random.Random(99).randbytes)
    return other


def test_a_rewritten_history_with_fresh_checkpoints_is_caught_by_a_witness(
    ring: KeyRing, schemas: SchemaSet
) -> None:
    """Even someone holding the broker's key, who rewrites records and re-signs everything,
    is caught by an agency that saved an earlier checkpoint."""
    honest = build_log(ring, schemas, records=40)
    rewritten = build_log(ring, schemas, records=40, batch=5)  # different interleaving
    saved = [honest.checkpoints[0].value]
    verify_log(rewritten.audit, rewritten.checkpoints, ring)  # consistent with itself
    with pytest.raises(LogTampered) as caught:
        verify_log(rewritten.audit, rewritten.checkpoints, ring, witnesses=saved)
    assert caught.value.position == "witness 1"


def test_malformed_export_is_an_error() -> None:
    from broker.audit import AuditError

    with pytest.raises(AuditError):
        load_lines(["{}"])
    with pytest.raises(AuditError, match="line 2"):
        load_lines(['{"format": "tiaki-audit-export/1"}', '{"topic": 1}'])
    assert base64  # imported for readers composing their own fixtures


def with_header(entry: LogEntry, name: str, value: bytes) -> LogEntry:
    headers = tuple((k, value if k == name else v) for k, v in entry.headers)
    if name not in dict(entry.headers):
        headers += ((name, value),)
    return dataclasses.replace(entry, headers=headers)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (CHAIN_HEADER, b"x" * 70_000),  # longer than the link's u16 length prefix
        (CHAIN_HEADER, b"\xff\xfe"),  # not UTF-8
        (SEQ_HEADER, str(2**64).encode()),  # beyond the link's u64
        (SEQ_HEADER, b"-1"),
        (SEQ_HEADER, b"00"),  # not as the writer writes it
        (SEQ_HEADER, b"9" * 5000),  # more digits than int() accepts
        (PREV_HEADER, b"ab"),
        (SCHEMA_HEADER, b"s" * 70_000),
    ],
)
def test_malformed_chain_headers_are_named_not_a_crash(
    log: SyntheticLog, ring: KeyRing, name: str, value: bytes
) -> None:
    victim = in_order(log.audit)[3]
    tampered = [with_header(e, name, value) if e is victim else e for e in log.audit]
    with pytest.raises(LogTampered) as caught:
        verify_log(tampered, log.checkpoints, ring)
    assert caught.value.position == victim.position
    assert caught.value.reason == "malformed chain headers"


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from([CHAIN_HEADER, SEQ_HEADER, PREV_HEADER, LINK_HEADER, SCHEMA_HEADER]),
    value=st.one_of(
        st.binary(max_size=80),
        st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
        st.text(max_size=40).map(str.encode),
    ),
)
def test_any_chain_header_is_only_ever_read_or_tampered(name: str, value: bytes) -> None:
    entry = fuzz_entry()
    try:
        read_link(with_header(entry, name, value))
    except LogTampered as exc:  # anything else escaping fails the test
        position = exc.position
    else:
        position = entry.position
    assert position == entry.position


def chain_links(log: SyntheticLog) -> dict[str, list[bytes]]:
    """Every chain's links in seq order."""
    links: dict[str, dict[int, bytes]] = {}
    for entry in log.audit:
        link = read_link(entry)
        links.setdefault(link.chain, {})[link.seq] = link.link
    return {chain: [by_seq[s] for s in sorted(by_seq)] for chain, by_seq in links.items()}


def revoke_and_resign(ring: KeyRing, log: SyntheticLog, sizes: dict[str, int]) -> list[LogEntry]:
    """Revoke the broker's signing key an hour after the log began, and sign checkpoints of
    the first ``sizes[chain]`` records of each chain with the key that replaces it."""
    later = T0 + timedelta(hours=1)
    old = next(k for k in ring.keys("broker") if k.purpose is Purpose.SIGNING)
    ring.rotate("broker", later, random.Random(3).randbytes)
    ring.revoke(old.key_id, later, "suspected compromise")
    links = chain_links(log)
    fresh = []
    for offset, (chain, size) in enumerate(sorted(sizes.items()), start=1000):
        frontier = Frontier()
        for link in links[chain][:size]:
            frontier.append(leaf_hash(link))
        data = sign_checkpoint(
            ring,
            "broker",
            chain=chain,
            size=size,
            root=frontier.root(),
            head=links[chain][size - 1],
            now=later + timedelta(minutes=1),
        )
        header = ((CHECKPOINT_HEADER, chain.encode()),)
        fresh.append(LogEntry(CHECKPOINT_TOPIC, 0, offset, b"", data, header, 0))
    return fresh


def test_checkpoints_under_a_revoked_key_are_distrusted_not_tampering(
    schemas: SchemaSet,
) -> None:
    """After the broker's key is revoked, its checkpoints vouch for nothing: the log still
    verifies, every record reads as unsigned, and each such checkpoint is named."""
    ring = make_ring()
    log = build_log(ring, schemas)
    revoke_and_resign(ring, log, {})
    report = verify_log(log.audit, log.checkpoints, ring)
    assert report.checkpoints == 0
    assert report.distrusted == tuple(c.position for c in in_order(log.checkpoints))
    assert report.unsigned == 60
    assert all(c.signed == 0 for c in report.chains)


def test_records_count_as_signed_again_once_the_new_key_covers_them(schemas: SchemaSet) -> None:
    ring = make_ring()
    log = build_log(ring, schemas)
    fresh = revoke_and_resign(ring, log, {"tiaki-broker-0": 32, "tiaki-broker-1": 10})
    report = verify_log(log.audit, log.checkpoints + fresh, ring)
    assert report.checkpoints == 2
    assert len(report.distrusted) == len(log.checkpoints)
    assert {c.chain: c.signed for c in report.chains} == {
        "tiaki-broker-0": 32,
        "tiaki-broker-1": 10,
    }
    assert report.unsigned == 18


def test_a_new_keys_checkpoint_still_catches_truncation_after_revocation(
    schemas: SchemaSet,
) -> None:
    ring = make_ring()
    log = build_log(ring, schemas)
    fresh = revoke_and_resign(ring, log, {"tiaki-broker-0": 32})
    last = max(
        (e for e in log.audit if read_link(e).chain == "tiaki-broker-0"),
        key=lambda e: read_link(e).seq,
    )
    cut = [e for e in log.audit if e is not last]
    with pytest.raises(LogTampered, match="truncated"):
        verify_log(cut, log.checkpoints + fresh, ring)


def test_a_witness_checkpoint_under_a_revoked_key_counts_for_nothing(schemas: SchemaSet) -> None:
    ring = make_ring()
    log = build_log(ring, schemas)
    saved = [c.value for c in log.checkpoints[:2]]
    fresh = revoke_and_resign(ring, log, {"tiaki-broker-0": 32, "tiaki-broker-1": 28})
    report = verify_log(log.audit, log.checkpoints + fresh, ring, witnesses=saved)
    assert report.witnesses == 0
    assert report.distrusted[-2:] == ("witness 1", "witness 2")
    assert report.unsigned == 0


def test_an_altered_checkpoint_under_a_revoked_key_is_still_tampering(
    schemas: SchemaSet,
) -> None:
    ring = make_ring()
    log = build_log(ring, schemas)
    revoke_and_resign(ring, log, {})
    victim = log.checkpoints[1]
    forged = dataclasses.replace(victim, value=victim.value[:-64] + bytes(64))
    with pytest.raises(LogTampered) as caught:
        verify_log(log.audit, [forged if c is victim else c for c in log.checkpoints], ring)
    assert caught.value.position == victim.position
    assert "signature" in caught.value.reason


@functools.cache
def fuzz_entry() -> LogEntry:
    """One chained record for the fuzz test (hypothesis runs it many times per fixture)."""
    return build_log(make_ring(), load_schemas(ROOT / "schemas"), records=3, chains=1).audit[0]
