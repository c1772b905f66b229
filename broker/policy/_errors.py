"""The policy engine's exception family, rooted at :class:`~broker._errors.TiakiError`::

    TiakiError
    └── PolicyError                      anything wrong with a policy set or its use
        ├── PolicySourceError            one fault in a policy file, at file:line:column
        │   └── PolicyValidationError    every fault found in a set (``errors`` lists them all)
        ├── ApprovalError                a set is unsigned, under-approved or wrongly signed
        └── ScenarioFailure              ``tiaki policy test`` found failing scenarios

Evaluation itself never raises: a rule that errors is reported on the decision (fail closed),
so the broker never has to catch anything from :meth:`Engine.decide`.
"""

from __future__ import annotations

from pathlib import Path

from broker._errors import TiakiError
from broker._yaml import SourceError


class PolicyError(TiakiError):
    """A policy set is broken, unapproved, or failed its own tests."""


class PolicySourceError(SourceError, PolicyError):
    """One fault in a policy file, located as ``file:line:column``."""


class PolicyValidationError(PolicySourceError):
    """A policy set failed validation; ``errors`` holds every fault, the message the first."""

    def __init__(self, errors: list[PolicySourceError]) -> None:
        first = errors[0]
        self.errors = tuple(errors)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first.path, first.line, first.column, first.reason + more)


class ApprovalError(PolicyError):
    """The set lacks the approvals it needs, or a signature does not verify."""


class ScenarioFailure(PolicyError):
    """One or more policy scenarios did not get the decision they expect."""


def source_error(path: Path | str, line: int, column: int, reason: str) -> PolicySourceError:
    """A :class:`PolicySourceError` (a helper so call sites read as one line)."""
    return PolicySourceError(path, line, column, reason)
