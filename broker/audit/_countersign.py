"""Countersigning checkpoints with the broker's new signing key before the old one is revoked
(pure: checkpoint records and keys in, checkpoint records to write and a report out).

Why: revoking a key distrusts every checkpoint it signed (:mod:`broker.audit._checkpoint`),
and a chain that gets no new records afterwards (a retired worker's, an act queue nobody has
used since) would then stay unsigned for ever: nothing else will ever sign it again. So at
rotation time, while the old key is still trusted, the broker's operator countersigns: for each
chain, the newest checkpoint that verifies under a key not revoked (the largest size) is signed
again with the broker's *current* key, over exactly the same chain, size, root and head. A later
revocation of the old key then leaves every chain covered as far as it was before.

What this endorses, and what it does not:

- only what a trusted key already vouched for: a checkpoint is used only once
  :func:`~broker.audit.verify_checkpoint` accepts it. It never reads a chain's stored head
  (``tiaki.state.chains``) or an audit record: those are claims nobody signed;
- a chain whose checkpoints are all under revoked keys cannot be rescued (nothing trusted
  vouches for it any more): it is counted, never signed;
- a malformed or tampered checkpoint record (one :func:`verify_checkpoint` refuses for a
  reason other than revocation, or one whose header names another chain) is skipped and its
  position listed; ``tiaki audit verify`` will name it as tampering;
- a chain with two trusted checkpoints of one size that disagree (root or head) is left alone
  and counted: one of them is a forged or forked history, and the countersigner, which sees no
  audit record, cannot tell which. (The verifier, which does, fails the log on the wrong one.)

The signature time is ``now``: :func:`verify_checkpoint` requires the key to have been valid
when it signed, and the current key did not exist when the old checkpoint was made. Running it
again writes nothing: every chain is then covered by a checkpoint of the current key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from broker.audit._checkpoint import (
    CHECKPOINT_HEADER,
    Checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from broker.audit._errors import AuditError, BadCheckpoint, RevokedKey
from broker.audit._log import CHECKPOINT_TOPIC, LogEntry
from broker.envelope import Algorithm, EnvelopeError, KeyRing, Purpose

if TYPE_CHECKING:
    from broker.transport import Outgoing


@dataclass(frozen=True)
class CountersignReport:
    """What :func:`countersign` found, chain by chain (each tuple sorted).

    ``countersigned``: chains signed again with ``key_id``, ``endorsed``: the keys whose
    checkpoints those were; ``covered``: chains a checkpoint of ``key_id`` already covers as
    far as any trusted one; ``untrusted``: chains whose verifying checkpoints are all under
    revoked keys (not rescued); ``conflicting``: chains with two trusted checkpoints of one
    size that disagree (not signed); ``refused``: positions of checkpoint records that are
    malformed or tampered with (skipped)."""

    key_id: str
    countersigned: tuple[str, ...] = ()
    endorsed: tuple[str, ...] = ()
    covered: tuple[str, ...] = ()
    untrusted: tuple[str, ...] = ()
    conflicting: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line of counts, as the command prints it and the audit record keeps it."""
        return (
            f"chains countersigned with {self.key_id}: {len(self.countersigned)}, "
            f"already covered by it: {len(self.covered)}, "
            f"with no trusted checkpoint: {len(self.untrusted)}, "
            f"with conflicting checkpoints: {len(self.conflicting)}; "
            f"checkpoint records refused: {len(self.refused)}"
        )


def checkpoint_record(chain: str, data: bytes) -> Outgoing:
    """A checkpoint of ``chain`` as the broker writes it on ``tiaki.checkpoints``: keyed by
    its chain and marked with :data:`~broker.audit.CHECKPOINT_HEADER` (as the worker's
    :class:`~broker.runtime._chaining.AuditChainer` writes its own)."""
    # Imported here: the transport package starts with aiokafka and the platform (half a
    # second), and importing the audit core must not (nothing else in it touches Kafka).
    from broker.transport import Outgoing

    name = chain.encode()
    return Outgoing(CHECKPOINT_TOPIC, name, data, ((CHECKPOINT_HEADER, name),))


def countersign(
    checkpoints: Sequence[LogEntry], ring: KeyRing, signer: str, now: datetime
) -> tuple[list[Outgoing], CountersignReport]:
    """The checkpoints to write so that ``signer``'s current signing key covers every chain as
    far as a trusted checkpoint does (see the module docs), and what was found.

    Raises :class:`~broker.audit.AuditError` if ``signer`` has no current Ed25519 signing key
    at ``now``, or its private half is not held in ``ring``.
    """
    try:
        current = ring.current(signer, Purpose.SIGNING, Algorithm.ED25519, now)
    except EnvelopeError as exc:
        raise AuditError(f"cannot countersign: {exc}") from None
    if not ring.has_private(current.key_id):
        raise AuditError(
            f"cannot countersign: the private key of {current.key_id} is not held here"
        )

    trusted: dict[str, list[Checkpoint]] = defaultdict(list)
    revoked: set[str] = set()
    refused: list[str] = []
    for entry in sorted(checkpoints, key=lambda e: (e.partition, e.offset)):
        try:
            checkpoint = verify_checkpoint(entry.value, ring, signer=signer)
        except RevokedKey:
            # Its signature verified (that is checked first), so the chain it names is the one
            # the revoked key signed for.
            revoked.add(parse_checkpoint(entry.value)[0].chain)
            continue
        except BadCheckpoint:
            refused.append(entry.position)
            continue
        marked = entry.header(CHECKPOINT_HEADER)
        if marked is not None and marked != checkpoint.chain.encode():
            refused.append(entry.position)  # as the verifier: the header names another chain
            continue
        trusted[checkpoint.chain].append(checkpoint)

    outputs: list[Outgoing] = []
    signed: list[str] = []
    endorsed: set[str] = set()
    covered: list[str] = []
    conflicting: list[str] = []
    for chain in sorted(trusted):
        found = trusted[chain]
        if _disagree(found):
            conflicting.append(chain)
            continue
        newest = max(found, key=lambda c: c.size)
        ours = [c.size for c in found if c.key_id == current.key_id]
        if ours and max(ours) >= newest.size:
            covered.append(chain)
            continue
        data = sign_checkpoint(
            ring,
            signer,
            chain=chain,
            size=newest.size,
            root=newest.root,
            head=newest.head,
            now=now,
        )
        outputs.append(checkpoint_record(chain, data))
        signed.append(chain)
        endorsed.add(newest.key_id)
    report = CountersignReport(
        key_id=current.key_id,
        countersigned=tuple(signed),
        endorsed=tuple(sorted(endorsed)),
        covered=tuple(covered),
        untrusted=tuple(sorted(revoked - trusted.keys())),
        conflicting=tuple(conflicting),
        refused=tuple(refused),
    )
    return outputs, report


def _disagree(found: Sequence[Checkpoint]) -> bool:
    """Whether two of one chain's trusted checkpoints of the same size differ in root or
    head: one chain has one history, so two different trees of one size cannot both be it."""
    seen: dict[int, tuple[bytes, bytes]] = {}
    for checkpoint in found:
        tree = (checkpoint.root, checkpoint.head)
        if seen.setdefault(checkpoint.size, tree) != tree:
            return True
    return False
