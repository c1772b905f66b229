"""Swapping policy versions: a broken or unapproved set never replaces a working one.

The broker holds one :class:`PolicyStore`. :meth:`PolicyStore.load` validates, verifies and
compiles a candidate set *before* it touches the current engine, then swaps a single reference,
so every decision sees either the old engine or the new one, never a mixture.

==============  ==============================  ======================================
state           load() succeeds                 load() fails
==============  ==============================  ======================================
empty           current = new engine            raise (nothing to fall back on)
serving v1      current = v2                    keep v1; ``last_error`` says why
==============  ==============================  ======================================

A candidate needs the approvals of :meth:`PolicyStore.quorum` officers on the trusted roster:
what it asks for (``required_approvals``), but never fewer than the deployment's minimum
(:data:`MINIMUM_APPROVALS` unless configured) or the set in force, so a set cannot lower its
own bar.

*Fails* means any exception while reading, compiling or verifying the candidate, not only a
:class:`~broker.policy.PolicyError`: a set that trips an unforeseen error (a file the readers choke on) is
refused like an invalid one, so a running broker never loses its policy to a bad release.
"""

from __future__ import annotations

from pathlib import Path

from broker.policy._engine import Engine, compile_policy
from broker.policy._load import load_policy_set
from broker.policy._model import Officer
from broker.policy._sign import load_approvals, verify_approvals

#: The fewest officers' approvals any policy set needs, whatever it asks for itself.
MINIMUM_APPROVALS = 2


class PolicyStore:
    """The engine the broker decides with, replaced only by a valid, approved set."""

    def __init__(
        self,
        roster: tuple[Officer, ...],
        *,
        require_approvals: bool = True,
        minimum_approvals: int = MINIMUM_APPROVALS,
    ) -> None:
        self._roster = roster
        self._require = require_approvals
        self._minimum = minimum_approvals
        self._engine: Engine | None = None
        #: Why the last load was refused (``None`` after a successful one): usually a
        #: :class:`~broker.policy.PolicyError`, but any exception the candidate set raised.
        self.last_error: Exception | None = None
        #: Officers whose approvals admitted the current set.
        self.approved_by: tuple[str, ...] = ()

    def quorum(self, asked: int) -> int:
        """How many officers must approve a candidate that asks for ``asked``: never fewer
        than the deployment's minimum, nor than the set in force asks for. The candidate's
        own ``required_approvals`` can raise the bar, never lower it: otherwise one officer
        could sign a set that says one approval is enough."""
        running = self._engine.policy.required_approvals if self._engine is not None else 0
        return max(asked, self._minimum, running)

    @property
    def engine(self) -> Engine | None:
        """The engine in use, or ``None`` before the first successful load."""
        return self._engine

    def load(self, folder: Path) -> Engine:
        """Load ``folder``; return the new engine, or the old one if the new set fails.

        Raises the :class:`~broker.policy.PolicyError` (or whatever the candidate raised) only when there is
        no working engine to keep.
        """
        try:
            policy = load_policy_set(folder)
            engine = compile_policy(policy)
            approved: tuple[str, ...] = ()
            if self._require:
                approved = verify_approvals(
                    engine.policy_hash,
                    self.quorum(policy.required_approvals),
                    load_approvals(policy.approvals_folder),
                    self._roster,
                )
        except Exception as exc:  # any failure refuses the candidate (module docstring)
            self.last_error = exc
            if self._engine is None:
                raise
            return self._engine
        self._engine = engine
        self.approved_by = approved
        self.last_error = None
        return engine
