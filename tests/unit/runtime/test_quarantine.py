"""The operator's view of the quarantine: where, when and why each record was refused, never
what it held."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from broker.envelope import Opener
from broker.platform import DLQ
from broker.runtime._quarantine import UNREADABLE, read_quarantine
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
