"""The sharing-policy language and its engine (issue 4).

Privacy officers write policies as YAML under ``policies/`` (see ``docs/policy.md``); the broker
compiles them once and asks the engine about every (event, candidate recipient)::

    policy = load_policy_set(Path("policies"))          # PolicyValidationError, positioned
    engine = compile_policy(policy)
    for recipient in engine.candidates(event_type, source):
        decision = engine.decide(DecisionInput.from_record(record, recipient, at=today,
                                                           participates=...))
        if decision.shares:
            minimised = apply_field_plan(record, decision, pseudonymiser)

Evaluation is pure and never raises: default deny, forbid wins, fields are an allow-list, a rule
that errors withholds the data and is named in ``Decision.errors``. :class:`PolicyStore` swaps in
a new signed set atomically and keeps the old engine when the new one fails.
"""

from broker.policy._canonical import canonical_bytes, policy_hash
from broker.policy._engine import (
    Engine,
    RuleTrace,
    apply_field_plan,
    compile_policy,
)
from broker.policy._errors import (
    ApprovalError,
    PolicyError,
    PolicySourceError,
    PolicyValidationError,
    ScenarioFailure,
)
from broker.policy._fields import FieldPlan, json_value
from broker.policy._load import load_policy_set
from broker.policy._model import (
    FIELD_ACTIONS,
    Decision,
    DecisionInput,
    Effect,
    Officer,
    Outcome,
    PolicySet,
    RequestFacts,
    RequestKind,
    Rule,
    Trigger,
    signal_finder,
    stated_grounds,
)
from broker.policy._pseudonym import Pseudonymiser
from broker.policy._scenarios import Scenario, ScenarioReport, load_scenarios, run_scenarios
from broker.policy._sign import (
    Approval,
    generate_officer_key,
    load_approvals,
    load_roster,
    sign_policy,
    verify_approvals,
)
from broker.policy._simulate import Change, SimEvent, diff, load_events, simulate
from broker.policy._store import PolicyStore

__all__ = [
    "FIELD_ACTIONS",
    "Approval",
    "ApprovalError",
    "Change",
    "Decision",
    "DecisionInput",
    "Effect",
    "Engine",
    "FieldPlan",
    "Officer",
    "Outcome",
    "PolicyError",
    "PolicySet",
    "PolicySourceError",
    "PolicyStore",
    "PolicyValidationError",
    "Pseudonymiser",
    "RequestFacts",
    "RequestKind",
    "Rule",
    "RuleTrace",
    "Scenario",
    "ScenarioFailure",
    "ScenarioReport",
    "SimEvent",
    "Trigger",
    "apply_field_plan",
    "canonical_bytes",
    "compile_policy",
    "diff",
    "generate_officer_key",
    "json_value",
    "load_approvals",
    "load_events",
    "load_policy_set",
    "load_roster",
    "load_scenarios",
    "policy_hash",
    "run_scenarios",
    "sign_policy",
    "signal_finder",
    "simulate",
    "stated_grounds",
    "verify_approvals",
]
