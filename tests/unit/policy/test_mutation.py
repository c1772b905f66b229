"""Mutation test: the scenarios pin every rule down.

Removing any one permit, or turning any forbid into a permit, must make at least one scenario
fail; otherwise that rule is untested (or dead) and a privacy officer could change it unseen.
A forbid turned permit is tried first (the first route's legal basis), for every purpose, and
keeps every field the forbid withheld (all fields for a whole-decision forbid).
"""

from __future__ import annotations

import dataclasses

import pytest

from broker.policy import (
    Effect,
    Engine,
    PolicySet,
    Rule,
    compile_policy,
    load_scenarios,
    run_scenarios,
)

_ALL_CLASSES = (
    "operational",
    "identifier",
    "demographic",
    "contact",
    "location",
    "health",
    "child",
    "narrative",
    "risk",
    "legal",
    "maori_data",
    "privileged",
)


def _failures(policy: PolicySet, engine: Engine, rules: tuple[Rule, ...]) -> int:
    mutant = compile_policy(dataclasses.replace(policy, rules=rules))
    scenarios = load_scenarios(policy.tests_folder, engine)
    return len(run_scenarios(mutant, scenarios).failed)


def _as_permit(policy: PolicySet, rule: Rule) -> Rule:
    first_route = policy.vocabulary.routes[0].id
    basis = next(b.id for b in policy.vocabulary.legal_bases.values() if b.route == first_route)
    classes = rule.classes or tuple((name, "keep") for name in _ALL_CLASSES)
    return dataclasses.replace(
        rule,
        effect=Effect.PERMIT,
        legal_basis=basis,
        when=dataclasses.replace(rule.when, purposes=None),
        fields=tuple((path, "keep") for path, _ in rule.fields),
        classes=tuple((name, "keep") for name, _ in classes),
        reason=None,
    )


def _ids(effect: Effect) -> list[str]:
    from broker.policy import load_policy_set
    from tests.unit.policy.conftest import POLICIES

    return [r.id for r in load_policy_set(POLICIES).rules if r.effect is effect]


@pytest.mark.parametrize("rule_id", _ids(Effect.PERMIT))
def test_removing_a_permit_fails_a_scenario(
    policy: PolicySet, engine: Engine, rule_id: str
) -> None:
    rules = tuple(r for r in policy.rules if r.id != rule_id)
    assert _failures(policy, engine, rules) >= 1, f"no scenario notices {rule_id} missing"


@pytest.mark.parametrize("rule_id", _ids(Effect.FORBID))
def test_forbid_turned_permit_fails_a_scenario(
    policy: PolicySet, engine: Engine, rule_id: str
) -> None:
    rules = tuple(_as_permit(policy, r) if r.id == rule_id else r for r in policy.rules)
    assert _failures(policy, engine, rules) >= 1, f"no scenario notices {rule_id} permitting"


def test_there_is_something_to_mutate(policy: PolicySet) -> None:
    assert len(_ids(Effect.PERMIT)) >= 15
    assert len(_ids(Effect.FORBID)) >= 3
