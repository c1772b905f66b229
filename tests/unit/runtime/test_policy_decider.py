"""The shipped policy, behind the pipeline's port: decisions and minimised bodies agree with the
engine asked directly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from broker.codec import from_json, load_schemas
from broker.policy import (
    DecisionInput,
    Pseudonymiser,
    apply_field_plan,
    compile_policy,
    load_policy_set,
)
from broker.registry import load_registry
from broker.runtime import Accepted, Outcome
from broker.runtime._cases import CaseMembership
from broker.runtime._policy import PolicyDecider

ROOT = Path(__file__).resolve().parents[3]
ENGINE = compile_policy(load_policy_set(ROOT / "policies"))
SCHEMAS = load_schemas(ROOT / "schemas")
REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SECRET = b"synthetic-pseudonym-secret-0000000000"


def accepted(event_type: str) -> Accepted | None:
    """The example of ``event_type`` as intake would admit it, if its source is registered."""
    schema = SCHEMAS.latest(event_type)
    doc = json.loads((ROOT / "schemas" / "examples" / f"{event_type}.json").read_text())
    event = from_json(schema, doc)
    source = REGISTRY.get(event["header"]["source_agency"])
    if source is None:
        return None
    return Accepted(source, schema, event, opened=None)  # type: ignore[arg-type]


def everyone_participates() -> CaseMembership:
    cases = CaseMembership()
    for agency in REGISTRY.ids:
        allocation = {
            "agency": {"agency_id": agency},
            "action": "joined",
            "participation_role": "participant",
        }
        cases.apply("CaseAllocation", {"header": {"case_id": "SYN-CASE-0001"}, **allocation}, NOW)
    return cases


def test_decider_matches_the_engine_for_every_example() -> None:
    decider = PolicyDecider(lambda: ENGINE, Pseudonymiser(SECRET), everyone_participates())
    shared = 0
    for schema in SCHEMAS.events():
        item = accepted(schema.short_name)
        if item is None:
            continue
        verdicts = decider.decide(item, NOW)
        assert [v.recipient for v in verdicts] == list(
            ENGINE.candidates(schema.name, item.source.id)
        )
        for verdict in verdicts:
            decision = ENGINE.decide(
                DecisionInput.from_record(
                    item.event,
                    verdict.recipient,
                    at=NOW.date(),
                    schema_version=schema.version,
                    participates=True,
                )
            )
            assert verdict.rule_ids == decision.rule_ids
            if verdict.outcome is Outcome.DENY:
                assert verdict.body is None
            else:
                assert verdict.body == apply_field_plan(item.event, decision, Pseudonymiser(SECRET))
                shared += verdict.outcome is Outcome.SHARE
    assert shared > 0, "the shipped policy shares some example with someone"
