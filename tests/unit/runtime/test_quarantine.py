"""The operator's view of the quarantine: where, when and why each record was refused, never
what it held."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from broker.codec import decode
from broker.envelope import Opener
from broker.platform import DLQ
from broker.runtime._audit import AuditContext
from broker.runtime._quarantine import (
    RESOLUTION_HEADER,
    UNREADABLE,
    QuarantineEntry,
    QuarantineError,
    read_quarantine,
    resolve,
)
from broker.transport import Outgoing, Record
from tests.unit.runtime.test_intake import NOW, SCHEMAS
from tests.unit.runtime.test_pipeline import Harness, ScriptedDecider

CANARY = b"Canary Tuhoe-Smith ZZZ0016 canary.person@example.invalid"


def as_record(out: Outgoing, offset: int) -> Record:
    return Record(out.topic, 0, offset, out.key, out.value, out.headers, 0)


def quarantined(harness: Harness, values: list[bytes]) -> list[Record]:
    found = []
    for value in values:
        processed = harness.pipeline.process(harness.record(value), NOW)
        found += [o for o in processed.outputs if o.topic == DLQ]
    return [as_record(out, i) for i, out in enumerate(found)]


def test_each_refused_record_is_listed_with_its_reason_and_origin_and_no_content() -> None:
    harness = Harness(ScriptedDecider([]))
    good = harness.record().value
    flipped = bytearray(good)
    flipped[-3] ^= 0x10
    records = quarantined(harness, [b"\x01" + CANARY, bytes(flipped), good, good])
    entries = read_quarantine(records, Opener("broker", harness.ring), SCHEMAS, NOW)
    # The first good copy is admitted; its second copy is a replay.
    assert [e.reason for e in entries] == ["malformed_envelope", "tampered", "replayed"]
    assert all(e.source_topic == "tiaki.ingress.police" for e in entries)
    assert [e.source_offset for e in entries] == [2, 3, 5]  # offset 1 made `good`
    assert entries[0].kept_bytes == len(CANARY) + 1
    assert entries[0].received_at == NOW
    listing = json.dumps([e.to_json() for e in entries])
    assert "Canary" not in listing
    assert "ZZZ0016" not in listing
    assert "example.invalid" not in listing


def test_a_quarantine_record_that_does_not_open_is_listed_not_hidden() -> None:
    harness = Harness(ScriptedDecider([]))
    (record,) = quarantined(harness, [b"\x01garbage"])
    broken = Record(DLQ, 0, 9, None, record.value[:-5], record.headers, 0)
    (entry,) = read_quarantine([broken], Opener("broker", harness.ring), SCHEMAS, datetime.now(UTC))
    assert entry.reason == "malformed_envelope"  # from the record's reason header
    assert entry.source_topic is None
    assert entry.detail is not None
    assert "does not open" in entry.detail
    headerless = Record(DLQ, 0, 10, None, b"\x01junk", (), 0)
    (entry,) = read_quarantine([headerless], Opener("broker", harness.ring), SCHEMAS, NOW)
    assert entry.reason == UNREADABLE


OPERATOR = "Operator One (synthetic)"
CONTEXT = AuditContext(subject_key=b"synthetic-test-audit-key-000000", policy_hash=None)


def resolution(
    harness: Harness,
    entry: QuarantineEntry,
    outcome: str = "dismissed",
    *,
    operator: str = OPERATOR,
    justification: str = "test traffic from the SYN adapter",
) -> list[Outgoing]:
    return resolve(
        entry,
        outcome,
        operator=operator,
        justification=justification,
        now=NOW,
        sealer=harness.pipeline._sealer,
        schemas=SCHEMAS,
        context=CONTEXT,
    )


def entries_of(harness: Harness, records: list[Record]) -> list[QuarantineEntry]:
    return read_quarantine(records, Opener("broker", harness.ring), SCHEMAS, NOW)


def test_a_resolution_closes_its_record_once_and_names_the_operator_on_the_audit_log() -> None:
    harness = Harness(ScriptedDecider([]))
    records = quarantined(harness, [b"\x01" + CANARY, b"\x01garbage"])
    first, second = entries_of(harness, records)
    assert (first.state, second.state) == ("open", "open")

    dlq, audit_out = resolution(harness, first)
    assert (dlq.topic, dlq.key, dict(dlq.headers)) == (
        DLQ,
        b"0:0",
        {RESOLUTION_HEADER: b"0:0"},
    )
    audit = decode(audit_out.value, SCHEMAS.latest("AuditRecord"))
    assert (audit["action"], audit["actor"], audit["outcome"]) == (
        "quarantine",
        OPERATOR,
        "dismissed",
    )
    assert audit["reason_codes"] == ["malformed_envelope"]
    assert audit["source_agency"] == "police"  # only Police may write its ingress topic
    assert audit["detail"] == "dlq 0:0: test traffic from the SYN adapter"

    records.append(as_record(dlq, len(records)))
    first, second = entries_of(harness, records)  # the resolution is not an entry itself
    assert (first.state, first.resolved_by, first.resolved_at) == ("dismissed", OPERATOR, NOW)
    assert second.state == "open"
    with pytest.raises(QuarantineError, match="0:0 is already dismissed"):
        resolution(harness, first, "resent")
    listing = json.dumps([e.to_json() for e in (first, second)])
    assert "Canary" not in listing
    assert "ZZZ0016" not in listing


def test_a_resolution_needs_a_known_outcome_a_name_and_reasons() -> None:
    harness = Harness(ScriptedDecider([]))
    (entry,) = entries_of(harness, quarantined(harness, [b"\x01garbage"]))
    with pytest.raises(QuarantineError, match="--outcome must be one of resent, dismissed"):
        resolution(harness, entry, "deleted")
    with pytest.raises(QuarantineError, match="needs the operator's name"):
        resolution(harness, entry, operator="  ")
    with pytest.raises(QuarantineError, match="needs a justification"):
        resolution(harness, entry, justification="")
    with pytest.raises(QuarantineError, match="looks like it holds a personal identifier"):
        resolution(harness, entry, justification="resent after calling 021 555 0199")


def test_the_first_resolution_of_a_record_stands_and_a_broken_one_is_listed() -> None:
    harness = Harness(ScriptedDecider([]))
    records = quarantined(harness, [b"\x01garbage"])
    (entry,) = entries_of(harness, records)
    resent, _ = resolution(harness, entry, "resent")
    dismissed, _ = resolution(harness, entry, "dismissed")  # a second operator, at the same time
    broken = Outgoing(DLQ, resent.key, resent.value[:-4], resent.headers)
    records += [as_record(out, 1 + i) for i, out in enumerate([broken, resent, dismissed])]
    listed = {e.position: e for e in entries_of(harness, records)}
    assert {p: e.state for p, e in listed.items()} == {"0:0": "resent", "0:1": "open"}
    assert listed["0:1"].reason == UNREADABLE  # the broken resolution: listed, never hidden
