"""The port between the pipeline and the policy engine.

The pipeline asks a :class:`Decider` about each admitted event and receives one
:class:`Verdict` per candidate recipient. The policy engine (``broker.policy``) provides the
real decider; tests and the offline simulator may pass their own. Keeping the port this small
means the pipeline knows nothing of rules, and the engine nothing of Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from broker.runtime._intake import Accepted


class Outcome(StrEnum):
    SHARE = "share"
    REVIEW = "review"
    DENY = "deny"


@dataclass(frozen=True)
class Verdict:
    """The decision about one (event, recipient) pair, with its explanation.

    ``body`` is the event minimised for the recipient (only permitted fields, transformed), and
    is present for ``share`` and ``review``; a ``deny`` carries none. The policy decider's
    bodies are JSON-ready (dates, times and UUIDs as text); the pipeline writes any other
    decider's dates, times and UUIDs the same way.
    """

    recipient: str
    outcome: Outcome
    rule_ids: tuple[str, ...]
    reason_codes: tuple[str, ...]
    route: str | None = None
    legal_basis: str | None = None
    purpose: str | None = None
    obligations: tuple[str, ...] = ()
    field_actions: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    policy_hash: str | None = None


class Decider(Protocol):
    """Decides, for an admitted event, what each candidate recipient may receive."""

    @property
    def policy_hash(self) -> str | None: ...

    def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]: ...
