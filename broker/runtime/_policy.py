"""The real decider: the policy engine behind the pipeline's :class:`Decider` port.

For each admitted event it asks the engine which recipients are candidates, builds a
:class:`~broker.policy.DecisionInput` with :meth:`~broker.policy.DecisionInput.shared_values`
(the same function ``tiaki policy test`` uses) from the event, the clock, the request it answers
(the request book) and case membership (participation, lead agency, the meeting's risk tier),
and turns each :class:`~broker.policy.Decision` into a :class:`Verdict` with the minimised body.
The engine is read through a callable on every event, so a policy reload takes effect between
two events and never inside one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from broker.policy import (
    Decision,
    DecisionInput,
    Engine,
    Pseudonymiser,
    apply_field_plan,
    signal_finder,
)
from broker.policy import Outcome as PolicyOutcome
from broker.policy._model import RequestFacts
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


#: Distinct rulings kept before the memo is emptied (event shapes are few; this is a bound).
RULINGS_LIMIT = 4096

#: Per candidate: its id, the engine's decision, and the finished verdict if it is a denial.
_Rulings = tuple[tuple[str, Decision, Verdict | None], ...]


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
        self._memo: dict[tuple[Any, ...], _Rulings] = {}
        self._memo_engine: Engine | None = None

    def _request(self, accepted: Accepted) -> RequestFacts | None:
        """The request this event answers, if the request book knows it: an
        InformationResponse's ``request_id``, or any event whose header's ``correlation_id``
        names a request (a record supplied under an OTA s66 requirement, say). The answer
        goes back to the requester, filtered like any disclosure (FVA s20/s24), and carries
        the request's requester role and on whose behalf it was made.

        Only an answer from one of the request's holders, about the request's case, carries
        them: a request id is guessable, and an agency that was not asked, or an event on
        another case, must not be addressed to the requester (or borrow its s66 authority)
        by naming it. Such an event is decided with no request facts."""
        if self._requests is None:
            return None
        event = accepted.event
        header = event["header"]
        case_id = str(header["case_id"])
        ids = [event.get("request_id")] if accepted.event_type == "InformationResponse" else []
        ids.append(header.get("correlation_id"))
        for request_id in ids:
            if request_id is not None:
                facts = self._requests.facts(
                    str(request_id), case_id=case_id, sender=accepted.source.id
                )
                if facts is not None:
                    return facts
        return None

    @property
    def policy_hash(self) -> str | None:
        return self._engine().policy_hash

    def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
        engine = self._engine()
        event = accepted.event
        case_id = str(event["header"]["case_id"])
        # The engine names event types in full (``nz.tiaki.TaskEvent``), as the header does.
        candidates = engine.candidates(accepted.schema.name, accepted.source.id)
        finder = None if accepted.shape is None else signal_finder(accepted.shape)
        common, addressees = DecisionInput.shared_values(
            event,
            at=now.date(),
            schema_version=accepted.schema.version,
            request=self._request(accepted),
            case_risk=self._cases.risk(case_id),
            leads=self._cases.leads(case_id),
            signals=None if finder is None else finder(event),
        )
        members = self._cases.members(case_id)  # once, not a look-up per candidate
        participation = tuple(r in members for r in candidates)
        rulings = self._rulings(engine, candidates, common, addressees, participation)
        verdicts = []
        #: Minimised bodies by (plan, recipient if the plan pseudonymises): recipients that a
        #: rule treats alike receive one body, projected once.
        bodies: dict[tuple[int, str | None], Mapping[str, Any]] = {}
        for recipient, decision, denied in rulings:
            if decision.errors:
                # The engine has already failed closed (deny); a person must look at the rule.
                log.error(
                    "policy rule failed",
                    recipient=recipient,
                    event_type=accepted.event_type,
                    count=len(decision.errors),
                )
            if denied is not None:
                verdicts.append(denied)
                continue
            plan = decision.plan
            key = (id(plan), recipient if plan is None or plan.recipient_specific else None)
            body = bodies.get(key)
            if body is None:
                body = bodies[key] = apply_field_plan(event, decision, self._pseudonymiser)
            verdicts.append(_verdict(recipient, decision, body))
        return verdicts

    def _rulings(
        self,
        engine: Engine,
        candidates: Sequence[str],
        common: Mapping[str, Any],
        addressees: frozenset[str],
        participation: tuple[bool, ...],
    ) -> _Rulings:
        """The engine's decision about each candidate, with the finished verdict of each
        denial (which carries no body).

        Events a rule set treats alike are most events: the same type from the same source,
        with the same header statements, about cases the same agencies take part in. So the
        rulings are kept by everything the inputs are built from (the engine's own memo is
        per recipient, behind eight inputs built per event), for the engine that made them:
        a reloaded policy starts afresh. Rulings with an erring rule are never kept, so each
        event logs its alert."""
        if engine is not self._memo_engine:
            self._memo.clear()
            self._memo_engine = engine
        key = (
            tuple(common.values()),
            addressees,
            tuple(candidates),
            participation,
        )
        rulings = self._memo.get(key)
        if rulings is not None:
            return rulings
        out = []
        for recipient, participates in zip(candidates, participation, strict=True):
            inp = DecisionInput.for_one(
                common, recipient, participates, recipient in addressees, {}
            )
            decision = engine.decide(inp)
            denied = None
            if _OUTCOMES[decision.outcome] is Outcome.DENY:
                denied = _verdict(recipient, decision, None)
            out.append((recipient, decision, denied))
        rulings = tuple(out)
        if engine.memoise and not any(d.errors for _, d, _ in rulings):
            if len(self._memo) >= RULINGS_LIMIT:
                self._memo.clear()
            self._memo[key] = rulings
        return rulings


def _verdict(recipient: str, decision: Decision, body: Mapping[str, Any] | None) -> Verdict:
    return Verdict(
        recipient=recipient,
        outcome=_OUTCOMES[decision.outcome],
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
