"""What a decision's context may say: the :class:`DecisionInput` attributes a scenario, an
events file (``{"record": ..., "context": ...}``) or ``tiaki policy explain --set`` sets, and
the values each takes.

A misspelt key or value must not pass silently: ``risk: hgh`` would match no rule that tests
risk and quietly change what a scenario or a simulation shows. Words come from the same
vocabularies the rules' ``when`` conditions are checked against; flags are true or false;
``at`` is a date.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any

from broker.policy._model import (
    CHILD_CONSULTED,
    CONSENT,
    PARTIES,
    PROVENANCE,
    REQUESTER_ROLES,
    RISK_LEVELS,
    DecisionInput,
    PolicySet,
    RequestKind,
)
from broker.policy._reader import suggest

#: Attributes a context may set: the event sets its type and schema version.
CONTEXT_KEYS = frozenset(f.name for f in dataclasses.fields(DecisionInput)) - {
    "event_type",
    "schema_version",
}
#: Attributes that are true or false.
FLAGS = (
    frozenset(f.name for f in dataclasses.fields(DecisionInput) if f.type in ("bool", bool))
    & CONTEXT_KEYS
)


def context_words(policy: PolicySet) -> dict[str, Collection[str]]:
    """The values each word-valued attribute takes under ``policy``."""
    return {
        "kind": [k.value for k in RequestKind],
        "purpose": [*policy.vocabulary.purposes, "unknown"],
        "legal_route": [r.id for r in policy.vocabulary.routes] + ["unknown"],
        "risk": RISK_LEVELS,
        "consent": CONSENT,
        "child_consulted": CHILD_CONSULTED,
        "provenance": PROVENANCE,
        "requester_role": REQUESTER_ROLES,
        "on_behalf_of": PARTIES,
    }


def value_problem(key: str, value: Any, policy: PolicySet) -> str | None:
    """What is wrong with ``value`` for the context attribute ``key`` (a known one), or None.

    Agencies (``source``, ``recipient``) and ``at`` are for the caller, which knows where they
    came from."""
    if key in FLAGS:
        return None if isinstance(value, bool) else f"'{key}' must be true or false, not {value!r}"
    choices = context_words(policy).get(key)
    if choices is not None and (not isinstance(value, str) or value not in choices):
        return (
            f"unknown {key.replace('_', ' ')} {value!r} for '{key}'{suggest(str(value), choices)}"
        )
    return None


def check_context(
    context: Mapping[str, Any], policy: PolicySet, *, keys: Collection[str] = CONTEXT_KEYS
) -> tuple[dict[str, Any], list[str]]:
    """``context`` with ``at`` as a date, and every problem with it (unknown keys, values
    outside the vocabulary, agencies not in the registry, a bad date)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in context.items():
        if key not in keys:
            problems.append(f"unknown context key {key!r}{suggest(str(key), keys)}")
        elif key == "at":
            try:
                out[key] = value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
            except (TypeError, ValueError):
                problems.append(f"'at' must be a date, YYYY-MM-DD, not {value!r}")
        elif key in ("source", "recipient"):
            if value not in policy.registry.ids:
                problems.append(
                    f"unknown agency {value!r} for '{key}'{suggest(str(value), policy.registry.ids)}"
                )
            out[key] = value
        else:
            problem = value_problem(key, value, policy)
            if problem is not None:
                problems.append(problem)
            out[key] = value
    return out, problems
