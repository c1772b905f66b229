"""Audit records carry who, what, to whom and why, and never a field value."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.audit import QueryError
from broker.audit._cli import person_ref
from broker.codec import Schema, decode, encode, from_json, load_schemas
from broker.runtime import Rejected
from broker.runtime._audit import (
    SCHEMES,
    AuditContext,
    decision_audit,
    decision_entry,
    grounds_ref,
    identifier_finder,
    quarantine_audit,
    quarantined_record,
    subject_ref,
    subject_refs,
)
from tests.unit.codec.test_properties import _records

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = load_schemas(ROOT / "schemas")
AUDIT = SCHEMAS.latest("AuditRecord")
QUARANTINED = SCHEMAS.latest("QuarantinedRecord")
EPISODE = SCHEMAS.latest("FamilyHarmEpisodeReport")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
CTX = AuditContext(subject_key=b"synthetic-test-audit-key-000000", policy_hash="ab" * 32)


def example() -> dict:  # type: ignore[type-arg]
    doc = json.loads((ROOT / "schemas" / "examples" / "FamilyHarmEpisodeReport.json").read_text())
    return from_json(EPISODE, doc)


CANARIES = ("CANARY-FAMILY-Q7", "CANARY-GIVEN-Z3", "CANARY-ID-93X")


def with_canaries(node: object) -> None:
    """Put canary values in every person's names and identifiers."""
    if isinstance(node, dict):
        if "identifiers" in node and "family_name" in node:
            node["family_name"], node["given_names"] = CANARIES[0], CANARIES[1]
            for identifier in node["identifiers"]:
                identifier["value"] = CANARIES[2]
        for child in node.values():
            with_canaries(child)
    elif isinstance(node, list):
        for child in node:
            with_canaries(child)


def test_decision_audit_encodes_and_holds_no_personal_value() -> None:
    event = example()
    with_canaries(event)
    record = decision_audit(
        CTX,
        event=event,
        event_type="FamilyHarmEpisodeReport",
        schema_fingerprint=EPISODE.fingerprint,
        source="police",
        decisions=[
            decision_entry(
                recipient="oranga-tamariki",
                outcome="share",
                route="fva_s20",
                legal_basis="FVA s20",
                purpose="fv_risk_needs_assessment",
                rule_ids=["R-1"],
                reason_codes=["fva_route"],
                obligations=["tell_victim_when_safe"],
                field_actions={"people[].person.family_name": "keep"},
            ),
            decision_entry(
                recipient="msd",
                outcome="deny",
                route=None,
                legal_basis=None,
                purpose=None,
                rule_ids=["default-deny"],
                reason_codes=["no_permit"],
                obligations=[],
                field_actions={},
            ),
        ],
        now=NOW,
    )
    written = encode(AUDIT, record)
    decoded = decode(written, AUDIT)
    assert [(d["recipient"], d["outcome"]) for d in decoded["decisions"]] == [
        ("oranga-tamariki", "share"),
        ("msd", "deny"),
    ]
    assert CANARIES[2] in str(event)  # the canaries are in the event
    for canary in CANARIES:
        assert canary.encode() not in written
    assert record["subject_refs"]
    assert [d["person_told"] for d in decoded["decisions"]] == ["when_safe", None]


def test_a_decision_keeps_keyed_hashes_of_the_stated_grounds_never_the_text() -> None:
    """FVA-07: a tamper-evident record of the justification and the decider, which are free
    text and may name people: keyed hashes only, which change with the text; a request's own
    grounds count where its header states none; nothing stated, nothing kept."""
    canary = "CANARY-GROUNDS-J4"

    def record_of(event: dict) -> dict:  # type: ignore[type-arg]
        return decision_audit(
            CTX,
            event=event,
            event_type="FamilyHarmEpisodeReport",
            schema_fingerprint=EPISODE.fingerprint,
            source="police",
            decisions=[],
            now=NOW,
        )

    event = example()
    event["header"]["sharing"] |= {"justification": canary, "accountable_role": "SYN sergeant"}
    record = record_of(event)
    written = encode(AUDIT, record)
    assert canary.encode() not in written
    assert b"SYN sergeant" not in written
    decoded = decode(written, AUDIT)
    assert decoded["justification_ref"] == grounds_ref(CTX.subject_key, "justification", canary)
    assert decoded["accountable_ref"] == grounds_ref(CTX.subject_key, "accountable", "SYN sergeant")
    assert (
        grounds_ref(CTX.subject_key, "justification", f" {canary} ") == record["justification_ref"]
    )
    assert (
        grounds_ref(CTX.subject_key, "justification", canary + ".") != record["justification_ref"]
    )
    # The two kinds are apart: the same words as a role are not the justification.
    assert grounds_ref(CTX.subject_key, "accountable", canary) != record["justification_ref"]

    event["header"]["sharing"] |= {"justification": "  ", "accountable_role": None}
    assert (record_of(event)["justification_ref"], record_of(event)["accountable_ref"]) == (
        None,
        None,
    )
    event |= {"justification": canary, "accountable_role": "SYN analyst"}
    # Only a request's own fields are its grounds (as the policy's grounds_stated reads them).
    assert (record_of(event)["justification_ref"], record_of(event)["accountable_ref"]) == (
        None,
        None,
    )
    event["header"]["event_type"] = "nz.tiaki.InformationRequest"  # as a request states them
    assert record_of(event)["justification_ref"] == decoded["justification_ref"]
    assert record_of(event)["accountable_ref"] == grounds_ref(
        CTX.subject_key, "accountable", "SYN analyst"
    )


def test_quarantine_records_encode() -> None:
    rejected = Rejected("tampered", "record failed authentication", "police", None, None)
    audit = quarantine_audit(CTX, rejected, NOW, uuid.UUID(int=1))
    assert decode(encode(AUDIT, audit), AUDIT)["reason_codes"] == ["tampered"]
    kept = quarantined_record(
        rejected,
        topic="tiaki.ingress.police",
        partition=2,
        offset=7,
        key=b"k",
        value=b"sealed",
        now=NOW,
    )
    assert decode(encode(QUARANTINED, kept), QUARANTINED)["value"] == b"sealed"


@given(st.text(min_size=1), st.text(min_size=1))
def test_subject_refs_are_keyed_and_stable(scheme: str, value: str) -> None:
    one = subject_ref(b"key-one-synthetic", scheme, value)
    assert one == subject_ref(b"key-one-synthetic", scheme, value)
    assert one != subject_ref(b"key-two-synthetic", scheme, value)
    assert len(one) == 64
    assert all(c in "0123456789abcdef" for c in one)


def test_the_schemes_are_the_schema_s() -> None:
    identifier = SCHEMAS.latest("PersonIdentifier").definition
    scheme = next(f for f in identifier["fields"] if f["name"] == "scheme")
    assert tuple(scheme["type"]["symbols"]) == SCHEMES


def _nhi_event(value: str) -> dict:  # type: ignore[type-arg]
    return {
        "people": [
            {
                "person": {
                    "identifiers": [
                        {"scheme": "nhi", "value": value, "issuer": None},
                        {"scheme": "agency_local", "value": "12345", "issuer": "police"},
                    ]
                }
            }
        ]
    }


def test_a_person_given_as_the_docs_show_is_found() -> None:
    # The broker hashes the scheme as the event carries it (``nhi``); compliance types
    # ``NHI:ZZZ0016`` (docs/compliance.md). Both name one person.
    refs = subject_refs(CTX.subject_key, _nhi_event("zzz0016"))
    for typed in ("NHI:ZZZ0016", "nhi:zzz0016", " Nhi : ZZZ0016 "):
        assert person_ref(CTX.subject_key, typed) in refs, typed
    local = person_ref(CTX.subject_key, "agency_local:Police:12345")
    assert local in refs
    assert person_ref(CTX.subject_key, "agency_local:msd:12345") not in refs


def test_agency_local_ids_of_different_issuers_are_different_people() -> None:
    key = CTX.subject_key
    police = subject_ref(key, "agency_local", "12345", "police")
    assert police != subject_ref(key, "agency_local", "12345", "msd")
    assert police == subject_ref(key, "AGENCY_LOCAL", " 12345 ", "Police")
    # The issuer counts for agency-local ids only.
    assert subject_ref(key, "nhi", "ZZZ0016", "police") == subject_ref(key, "nhi", "ZZZ0016")


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("NHX:ZZZ0016", "unknown identifier scheme 'nhx'"),
        ("ZZZ0016", "SCHEME:VALUE"),
        ("nhi:", "SCHEME:VALUE"),
        ("agency_local:12345", "agency_local:ISSUER:VALUE"),
    ],
)
def test_a_person_no_event_can_carry_is_refused(typed: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        person_ref(CTX.subject_key, typed)


def test_every_identifier_is_referenced_once() -> None:
    event = example()
    refs = subject_refs(CTX.subject_key, event)
    assert len(refs) == len(set(refs))
    assert all(len(r) == 64 for r in refs)


@pytest.mark.parametrize(
    "schema",
    [v for s in SCHEMAS.events() for v in SCHEMAS.versions(s.name)],
    ids=lambda s: s.label,
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_identifiers_found_from_the_schema_give_the_walk_s_subject_refs(
    schema: Schema, data: st.DataObject
) -> None:
    """The pipeline hashes the identifiers the schema's finder (identifier_finder) finds
    rather than walking the event: the same references, for any decoded event."""
    record = decode(encode(schema, data.draw(_records(schema))), schema)
    finder = identifier_finder(schema)
    assert finder is not None
    walked = subject_refs(CTX.subject_key, record)
    assert subject_refs(CTX.subject_key, record, finder(record)) == walked
