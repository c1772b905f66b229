"""A share the broker cannot deliver is held for a person, never lost, and never stops sharing.

A recipient whose encryption key is revoked, expired or refused, or a record larger than the
egress topic takes, used to make ``Pipeline.process`` raise: the worker died on that record
after every restart, and every agency's sharing stopped with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import structlog

from broker.codec import decode
from broker.envelope import EnvelopeConfig, EnvelopeError, Kind, Opener, Purpose, Sealer
from broker.platform._plan import RETENTION_DAYS, _topic_classes
from broker.runtime import MAX_RECORD_BYTES, Outcome, Pipeline, Verdict
from broker.runtime._pipeline import (
    MAX_EGRESS_BYTES,
    RECIPIENT_HEADER,
    REVIEW_ID_HEADER,
    REVIEW_KIND_HEADER,
    Processed,
    broker_opener,
    broker_sealer,
)
from broker.runtime._review import decide, read_queue
from tests.unit.runtime.test_intake import NOW, SCHEMAS
from tests.unit.runtime.test_pipeline import (
    Harness,
    ScriptedDecider,
    imminent_share,
    verdict,
)
from tests.unit.runtime.test_review import CONTEXT, as_records

AUDIT = SCHEMAS.latest("AuditRecord")


def revoke_encryption_keys(harness: Harness, agency: str) -> None:
    for key in harness.ring.keys(agency):
        if key.purpose is Purpose.ENCRYPTION:
            harness.ring.revoke(key.key_id, NOW - timedelta(minutes=1), "compromised")


def decision_of(processed: Processed) -> dict[str, Any]:
    (audit,) = [decode(o.value, AUDIT) for o in processed.outputs if o.topic == "tiaki.audit"]
    assert audit["action"] == "decision"
    return audit


def test_a_revoked_recipient_key_holds_that_share_and_the_others_still_go() -> None:
    harness = Harness(
        ScriptedDecider(
            [
                verdict("oranga-tamariki", Outcome.SHARE),
                verdict("corrections", Outcome.SHARE),
                verdict("msd", Outcome.SHARE),
            ]
        )
    )
    revoke_encryption_keys(harness, "corrections")
    with structlog.testing.capture_logs() as logs:
        processed = harness.pipeline.process(harness.record(), NOW)  # does not raise

    # The audit record comes before the deliveries it describes.
    assert [o.topic for o in processed.outputs] == [
        "tiaki.state.tallies",
        "tiaki.audit",
        "tiaki.egress.oranga-tamariki",
        "tiaki.review",
        "tiaki.egress.msd",
    ]
    for agency in ("oranga-tamariki", "msd"):
        (delivered,) = [o for o in processed.outputs if o.topic == f"tiaki.egress.{agency}"]
        shared = harness.open_for(agency, delivered.topic, delivered.value)
        assert shared["event_type"] == "FamilyHarmEpisodeReport"

    (held,) = [o for o in processed.outputs if o.topic == "tiaki.review"]
    headers = dict(held.headers)
    assert headers[RECIPIENT_HEADER] == b"corrections"
    assert REVIEW_KIND_HEADER not in headers  # held: nothing was delivered, approving releases
    assert held.key == b"SYN-CASE-0001"
    assert json.loads(harness.open_for("broker", "tiaki.review", held.value)["body_json"]) == {
        "header": {"case_id": "SYN-CASE-0001"}
    }

    audit = decision_of(processed)
    assert headers[REVIEW_ID_HEADER] == f"police/{audit['event_id']}/corrections".encode()
    assert [(d["recipient"], d["outcome"], d["reason_codes"]) for d in audit["decisions"]] == [
        ("oranga-tamariki", "share", ["test"]),
        ("corrections", "review", ["recipient_key_unusable", "test"]),
        ("msd", "share", ["test"]),
    ]
    # The metrics count what was done: the held share under its reason (the first).
    assert [(v.recipient, v.outcome, v.reason_codes[0]) for v in processed.verdicts] == [
        ("oranga-tamariki", Outcome.SHARE, "test"),
        ("corrections", Outcome.REVIEW, "recipient_key_unusable"),
        ("msd", Outcome.SHARE, "test"),
    ]
    assert processed.quarantine_reason is None
    # One warning naming the agency and the error type, nothing of the event.
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["error_type"] in {"KeyRevoked", "UnknownKey"}  # as the key ring says
    assert warning == {
        "event": "share held for review",
        "log_level": "warning",
        "agency": "corrections",
        "error_type": warning["error_type"],
    }


def test_a_held_share_reviewed_afterwards_is_one_review_item() -> None:
    """The copy for review after disclosure is not written as well: nothing was disclosed,
    and one (event, recipient) has one review item (the ids would collide)."""
    harness = Harness(
        ScriptedDecider([imminent_share("corrections"), verdict("msd", Outcome.SHARE)])
    )
    revoke_encryption_keys(harness, "corrections")
    processed = harness.pipeline.process(harness.record(), NOW)
    assert [o.topic for o in processed.outputs] == [
        "tiaki.state.tallies",
        "tiaki.audit",
        "tiaki.review",
        "tiaki.egress.msd",
    ]
    (held,) = [o for o in processed.outputs if o.topic == "tiaki.review"]
    assert REVIEW_KIND_HEADER not in dict(held.headers)
    entry = decision_of(processed)["decisions"][0]
    assert (entry["outcome"], entry["reason_codes"][0]) == ("review", "recipient_key_unusable")
    assert entry["obligations"] == ["review_within_24h", "tell_victim_when_safe"]


def test_releasing_a_held_share_seals_to_the_key_current_then() -> None:
    """While the key is still unusable, approving fails with one line and writes nothing;
    once the agency has a new key, approving delivers to it."""
    harness = Harness(ScriptedDecider([verdict("corrections", Outcome.SHARE)]))
    revoke_encryption_keys(harness, "corrections")
    processed = harness.pipeline.process(harness.record(), NOW)
    records = as_records([o for o in processed.outputs if o.topic == "tiaki.review"])

    def approve() -> list[Any]:
        (item,) = read_queue(records, Opener("broker", harness.ring), SCHEMAS, NOW).items.values()
        return decide(
            item,
            "approve",
            reviewer="Reviewer One (synthetic)",
            justification="key replaced (synthetic ticket)",
            now=NOW,
            sealer=harness.pipeline._sealer,
            schemas=SCHEMAS,
            context=CONTEXT,
        )

    with pytest.raises(EnvelopeError) as raised:
        approve()
    assert "\n" not in str(raised.value)
    assert "corrections" in str(raised.value)

    for algorithm in {k.algorithm for k in harness.ring.keys("corrections")}:
        harness.ring.generate("corrections", algorithm, NOW - timedelta(seconds=1), os.urandom)
    outputs = approve()
    (released,) = [o for o in outputs if o.topic == "tiaki.egress.corrections"]
    shared = harness.open_for("corrections", released.topic, released.value)
    assert shared["event_type"] == "FamilyHarmEpisodeReport"


# --- oversized ----------------------------------------------------------------------------


def big_share(recipient: str, size: int) -> Verdict:
    body = {"header": {"case_id": "SYN-CASE-0001"}, "narrative": "x" * size}
    return replace(verdict(recipient, Outcome.SHARE), body=body)


def limited(harness: Harness, *, sealer: Sealer | None = None, **limits: int) -> Pipeline:
    old = harness.pipeline
    return Pipeline(
        intake=old._intake,
        decider=old._decider,
        sealer=sealer if sealer is not None else old._sealer,
        schemas=SCHEMAS,
        subject_key=b"synthetic-test-audit-key-000000",
        **limits,
    )


def test_the_egress_limit_is_the_egress_topics_limit() -> None:
    limit = _topic_classes(RETENTION_DAYS)["egress"]["max.message.bytes"]
    assert int(limit) == MAX_EGRESS_BYTES


def test_an_egress_record_too_large_for_its_topic_is_held_not_produced() -> None:
    harness = Harness(
        ScriptedDecider([big_share("corrections", 4000), verdict("msd", Outcome.SHARE)])
    )
    pipeline = limited(harness, max_egress_bytes=4096, max_review_bytes=64 * 1024)
    processed = pipeline.process(harness.record(), NOW)
    assert [o.topic for o in processed.outputs] == [
        "tiaki.state.tallies",
        "tiaki.audit",
        "tiaki.review",
        "tiaki.egress.msd",
    ]
    (held,) = [o for o in processed.outputs if o.topic == "tiaki.review"]
    assert dict(held.headers)[RECIPIENT_HEADER] == b"corrections"
    entries = decision_of(processed)["decisions"]
    assert (entries[0]["outcome"], entries[0]["reason_codes"]) == (
        "review",
        ["output_oversized", "test"],
    )
    assert processed.verdicts[0].reason_codes[0] == "output_oversized"


def test_an_event_whose_held_copy_is_too_large_for_review_is_quarantined() -> None:
    """Egress and review take about 1 MiB: a minimised body above that (JSON can be larger
    than the Avro it came from) is neither produced nor held, and the event is quarantined
    as ``oversized`` instead of aborting every transaction."""
    harness = Harness(
        ScriptedDecider([big_share("corrections", 1_100_000), verdict("msd", Outcome.SHARE)])
    )
    # A sealer that takes payloads above the topics' limit: only the size check stops it.
    sealer = Sealer("broker", harness.ring, config=EnvelopeConfig(max_payload=4 * 1024 * 1024))
    for pipeline in (limited(harness, sealer=sealer), harness.pipeline):
        processed = pipeline.process(harness.record(), NOW)
        assert processed.quarantine_reason == "oversized"
        assert [o.topic for o in processed.outputs] == [
            "tiaki.state.tallies",
            "tiaki.dlq",
            "tiaki.audit",
            "tiaki.egress.police",  # the refusal notice to the sender
        ]
        assert not any(o.topic.startswith("tiaki.egress.msd") for o in processed.outputs)
        audit = decode(processed.outputs[2].value, AUDIT)
        assert (audit["action"], audit["reason_codes"]) == ("quarantine", ["oversized"])


def test_a_review_outcome_too_large_for_review_is_quarantined() -> None:
    harness = Harness(ScriptedDecider([replace(big_share("msd", 3000), outcome=Outcome.REVIEW)]))
    pipeline = limited(harness, max_review_bytes=2048)
    processed = pipeline.process(harness.record(), NOW)
    assert processed.quarantine_reason == "oversized"
    assert "tiaki.review" not in [o.topic for o in processed.outputs]


def test_the_largest_record_intake_refuses_is_quarantined_and_opens_again() -> None:
    """A record just under the ingress limit that intake refuses (here: garbage, so it cannot
    open) is kept whole on ``tiaki.dlq``: the broker's sealer takes it (the envelope's default
    limit, 4 KiB under 1 MiB, raised out of ``process`` and stopped the worker on it), and the
    quarantine tools open it again."""
    harness = Harness(ScriptedDecider([]))
    harness.pipeline._sealer = broker_sealer(harness.ring)
    garbage = os.urandom(MAX_RECORD_BYTES - 600)
    processed = harness.pipeline.process(harness.record(garbage), NOW)
    assert processed.quarantine_reason is not None
    (dlq,) = [o for o in processed.outputs if o.topic == "tiaki.dlq"]
    opened = broker_opener(harness.ring).open(
        dlq.value, topic="tiaki.dlq", now=NOW, kind=Kind.HOLD, source="broker"
    )
    kept = decode(opened.payload, SCHEMAS.by_fingerprint(opened.schema_fingerprint))
    assert kept["value"] == garbage
    assert len(dlq.value) < 2 * 1024 * 1024  # what tiaki.dlq takes
    with pytest.raises(EnvelopeError):  # the default sealer could not have kept it
        Sealer("broker", harness.ring).seal(
            opened.payload,
            kind=Kind.HOLD,
            topic="tiaki.dlq",
            recipient="broker",
            event_id="00000000-0000-4000-8000-000000000001",
            schema_fingerprint=opened.schema_fingerprint,
            now=NOW,
        )


def test_a_recipient_without_an_egress_topic_is_held_and_the_others_still_go() -> None:
    """Kafka has no ``tiaki.egress.corrections`` (provision never ran for it, or it was
    deleted): a transaction writing there could not commit, and every agency's sharing would
    wait behind it. The share is held for a person instead, with its reason."""
    harness = Harness(
        ScriptedDecider(
            [verdict("oranga-tamariki", Outcome.SHARE), verdict("corrections", Outcome.SHARE)]
        )
    )
    harness.pipeline.unreachable = frozenset({"corrections"})
    with structlog.testing.capture_logs() as logs:
        processed = harness.pipeline.process(harness.record(), NOW)

    assert [o.topic for o in processed.outputs] == [
        "tiaki.state.tallies",
        "tiaki.audit",
        "tiaki.egress.oranga-tamariki",
        "tiaki.review",
    ]
    (held,) = [o for o in processed.outputs if o.topic == "tiaki.review"]
    assert dict(held.headers)[RECIPIENT_HEADER] == b"corrections"
    assert REVIEW_KIND_HEADER not in dict(held.headers)  # held: approving releases it
    assert [
        (d["recipient"], d["outcome"], d["reason_codes"][0])
        for d in decision_of(processed)["decisions"]
    ] == [
        ("oranga-tamariki", "share", "test"),
        ("corrections", "review", "recipient_topic_missing"),
    ]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning == {
        "event": "share held for review",
        "log_level": "warning",
        "agency": "corrections",
        "error_type": "TopicMissing",
    }

    # Once the topic is there again, the next event's share goes.
    harness.pipeline.unreachable = frozenset()
    again = harness.pipeline.process(harness.record(), NOW)
    assert "tiaki.egress.corrections" in [o.topic for o in again.outputs]


def test_no_refusal_notice_is_written_to_a_sender_without_an_egress_topic() -> None:
    harness = Harness(ScriptedDecider())
    harness.pipeline.unreachable = frozenset({"police"})
    processed = harness.pipeline.process(harness.record(b"\x01garbage"), NOW)
    assert [o.topic for o in processed.outputs] == ["tiaki.dlq", "tiaki.audit"]
    assert processed.quarantine_reason == "malformed_envelope"
