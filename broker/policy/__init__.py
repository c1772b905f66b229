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
from broker.policy._fields import FieldPlan
from broker.policy._load import load_policy_set
from broker.policy._model import (
    FIELD_ACTIONS,
    Decision,
    DecisionInput,
    Effect,
    Outcome,
    PolicySet,
    RequestKind,
    Rule,
    Trigger,
)
from broker.policy._pseudonym import Pseudonymiser

__all__ = [
    "FIELD_ACTIONS",
    "ApprovalError",
    "Decision",
    "DecisionInput",
    "Effect",
    "Engine",
    "FieldPlan",
    "Outcome",
    "PolicyError",
    "PolicySet",
    "PolicySourceError",
    "PolicyValidationError",
    "Pseudonymiser",
    "RequestKind",
    "Rule",
    "RuleTrace",
    "ScenarioFailure",
    "Trigger",
    "apply_field_plan",
    "canonical_bytes",
    "compile_policy",
    "load_policy_set",
    "policy_hash",
]
