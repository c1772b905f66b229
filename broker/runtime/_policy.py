"""The real decider: the policy engine behind the pipeline's :class:`Decider` port.

For each admitted event it asks the engine which recipients are candidates, builds a
:class:`~broker.policy.DecisionInput` from the event's header, the clock and case membership,
and turns each :class:`~broker.policy.Decision` into a :class:`Verdict` with the minimised body.
The engine is read through a callable on every event, so a policy reload takes effect between
two events and never inside one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from broker.policy import DecisionInput, Engine, Pseudonymiser, apply_field_plan
from broker.policy import Outcome as PolicyOutcome
from broker.runtime._cases import CaseMembership
from broker.runtime._decide import Outcome, Verdict
from broker.runtime._intake import Accepted
from broker.runtime._requests import RequestBook

log = structlog.get_logger("tiaki.policy")

#: How the engine's five outcomes reach the pipeline's three. ``refer`` hands the matter to a
#: workflow outside per-event sharing (a breach, say): nothing is shared automatically.
_OUTCOMES = {
    PolicyOutcome.SHARE: Outcome.SHARE,
    PolicyOutcome.SHARE_MINIMISED: Outcome.SHARE,
    PolicyOutcome.REVIEW: Outcome.REVIEW,
    PolicyOutcome.DENY: Outcome.DENY,
    PolicyOutcome.REFER: Outcome.DENY,
}


class PolicyDecider:
    """Decides with the engine that ``engine`` returns at the time of each event."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        pseudonymiser: Pseudonymiser,
        cases: CaseMembership,
        requests: RequestBook | None = None,
    ) -> None:
        self._engine = engine
        self._pseudonymiser = pseudonymiser
        self._cases = cases
        #: An answer is addressed to whoever asked: the request book knows who that was.
        self._requests = requests

    def _risk(self, case_id: str) -> dict[str, str]:
        """The case's risk tier as an override, when a meeting has set one."""
        tier = self._cases.risk(case_id)
        return {} if tier == "unknown" else {"risk": tier}

    def _requester(self, accepted: Accepted) -> tuple[str, ...]:
        """For an answer to an information request, the agency that asked (FVA s20/s24: the
        answer goes back to the requester, filtered like any disclosure)."""
        if self._requests is None or accepted.event_type != "InformationResponse":
            return ()
        requester = self._requests.requester(str(accepted.event.get("request_id")))
        return (requester,) if requester is not None else ()

    @property
    def policy_hash(self) -> str | None:
        return self._engine().policy_hash

    def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
        engine = self._engine()
        event = accepted.event
        case_id = str(event["header"]["case_id"])
        verdicts = []
        #: Minimised bodies by (plan, recipient if the plan pseudonymises): recipients that a
        #: rule treats alike receive one body, projected once.
        bodies: dict[tuple[int, str | None], Mapping[str, Any]] = {}
        # The engine names event types in full (``nz.tiaki.TaskEvent``), as the header does.
        inputs = DecisionInput.for_recipients(
            event,
            engine.candidates(accepted.schema.name, accepted.source.id),
            at=now.date(),
            schema_version=accepted.schema.version,
            participates=lambda recipient: self._cases.participates(case_id, recipient),
            addressed=self._requester(accepted),
            **self._risk(case_id),
        )
        for decision_input in inputs:
            recipient = decision_input.recipient
            decision = engine.decide(decision_input)
            if decision.errors:
                # The engine has already failed closed (deny); a person must look at the rule.
                log.error(
                    "policy rule failed",
                    recipient=recipient,
                    event_type=accepted.event_type,
                    count=len(decision.errors),
                )
            outcome = _OUTCOMES[decision.outcome]
            body = None
            if outcome is not Outcome.DENY:
                plan = decision.plan
                key = (id(plan), recipient if plan is None or plan.recipient_specific else None)
                body = bodies.get(key)
                if body is None:
                    body = bodies[key] = apply_field_plan(event, decision, self._pseudonymiser)
            verdicts.append(
                Verdict(
                    recipient=recipient,
                    outcome=outcome,
                    rule_ids=decision.rule_ids,
                    reason_codes=decision.reason_codes
                    + (("referred",) if decision.outcome is PolicyOutcome.REFER else ()),
                    route=decision.route,
                    legal_basis=decision.legal_basis,
                    purpose=decision.purpose,
                    obligations=decision.obligations,
                    field_actions=decision.field_actions,
                    body=body,
                    policy_hash=decision.policy_hash,
                )
            )
        return verdicts
