"""Verifying the audit log and its checkpoints (pure: entries and keys in, a report or an error).

The verifier trusts nothing it reads: it recomputes every link from the record's bytes, checks
that each chain runs 0, 1, 2, ... with each record naming the link before it, that within an
audit partition a chain's records appear in chain order, that every checkpoint is signed by
the broker's key, and that each checkpoint's size, Merkle root and head match the log. Given
checkpoints a witness saved earlier, it also checks that the log still extends each of them,
with an RFC 9162 consistency proof from the witness's tree to the newest signed one.

What each tampering looks like to it, and the position it names:

=========================  ===============================================================
tampering                  detected as (position)
=========================  ===============================================================
a byte changed             the record no longer matches its link (``partition P offset O``)
malformed chain headers    ``malformed chain headers`` (``partition P offset O``)
a record deleted           a seq is missing (``chain C seq S``, with the next record's place)
a record inserted          not chained, a duplicate seq, or a prev that does not follow
a record moved or swapped  out of chain order within its partition (the earlier place)
the tail truncated         a checkpoint covers more records than remain (``chain C seq S``)
a signature replaced       the checkpoint does not verify (``tiaki.checkpoints partition..``)
=========================  ===============================================================

Checks run in that order and the first failure raises :class:`LogTampered`: a verifier's job
is to say *that* and *where*, and a later failure may only be a consequence of the first.
Records after a chain's last checkpoint are chained but not yet signed; the report counts them.

Chained but unsigned is normal only for a short while: a running writer signs its records
within :data:`CHECKPOINT_CAP`. Anyone who can write ``tiaki.audit`` can read a chain's last
link from its headers and append records that chain correctly, and on a chain nobody writes
any more (a retired worker's) nothing ever conflicts with them. Kafka stamps each audit record
with the time it appended it (``message.timestamp.type=LogAppendTime``), so
:meth:`VerifyReport.overdue` names the chains with unsigned records that are older than a
writer leaves them (``tiaki audit verify --strict`` fails on them). It cannot tell a worker
that stopped with records unsigned from someone else's records; a person accounts for them.

A checkpoint (or a witness's) whose signature verifies under a key that has since been revoked
is not tampering but *distrusted*: revoking the key withdrew trust from everything it signed.
The verifier skips it (it vouches for nothing, so a chain counts as signed only up to its newest
trusted checkpoint) and lists its position in :attr:`VerifyReport.distrusted`. Any other
checkpoint failure (bad signature, wrong signer or key, key not valid when it signed) is
:class:`LogTampered`; see :func:`~broker.audit.verify_checkpoint` for the order of the checks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.audit._chain import (
    CHAIN_HEADER,
    GENESIS,
    LINK_HEADER,
    MAX_FIELD_BYTES,
    PREV_HEADER,
    SCHEMA_HEADER,
    SEQ_HEADER,
    link_hash,
    parse_seq,
)
from broker.audit._checkpoint import CHECKPOINT_HEADER, Checkpoint, verify_checkpoint
from broker.audit._errors import BadCheckpoint, InconsistentTrees, LogTampered, RevokedKey
from broker.audit._log import LogEntry
from broker.audit._merkle import (
    HASH_BYTES,
    Frontier,
    consistency_proof,
    leaf_hash,
    verify_consistency,
)
from broker.envelope import KeyRing


@dataclass(frozen=True, slots=True)
class Link:
    """A chained record's chain fields, checked against its bytes."""

    chain: str
    seq: int
    prev: bytes
    link: bytes
    entry: LogEntry


#: The longest a running writer leaves a chained record without a checkpoint: a broker
#: worker signs at least every ``tiaki broker run --checkpoint-seconds``, which is at most 60
#: (``MAX_CHECKPOINT_SECONDS`` in ``broker.runtime``, which this pure package does not
#: import; a test keeps the two equal), and an act signs its records in their own transaction.
CHECKPOINT_CAP = timedelta(seconds=60)
#: Allowance on top of :data:`CHECKPOINT_CAP` before an unsigned record is overdue: for the
#: difference between Kafka's clocks and the verifier's, and a transaction held up by a slow
#: commit or a rebalance.
OVERDUE_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class ChainSummary:
    chain: str
    size: int
    head: bytes
    #: Records covered by the newest verified checkpoint (the rest are chained, unsigned).
    signed: int
    #: When each record after the newest verified checkpoint was appended (its Kafka
    #: timestamp, ms since the epoch), in chain order.
    unsigned_appended_ms: tuple[int, ...] = ()


@dataclass(frozen=True)
class VerifyReport:
    """What a verified log holds. ``checkpoints`` and ``witnesses`` count the trusted ones;
    ``distrusted`` names (by position, ``witness N`` for a witness's) every checkpoint whose
    signature verifies under a key since revoked: each vouches for nothing."""

    records: int
    checkpoints: int
    witnesses: int
    chains: tuple[ChainSummary, ...]
    distrusted: tuple[str, ...] = ()

    @property
    def unsigned(self) -> int:
        return sum(c.size - c.signed for c in self.chains)

    def overdue(
        self, at: datetime, *, allowance: timedelta = CHECKPOINT_CAP + OVERDUE_SLACK
    ) -> dict[str, int]:
        """Per chain, how many of its unsigned records are overdue for a checkpoint at ``at``
        (when the log was read): appended more than ``allowance`` before it, or stamped more
        than :data:`OVERDUE_SLACK` after it, which an append time cannot be (the writer chose
        that timestamp: a topic made before ``LogAppendTime``, or set back to ``CreateTime``).

        Only chains a trusted checkpoint covers are counted: a chain with none is named as
        such already, every record of it unvouched. A record may be overdue because its
        worker stopped before signing it and has not run since, or because someone else
        appended it; the log cannot say which.
        """
        at_ms = int(at.timestamp() * 1000)
        oldest = at_ms - int(allowance.total_seconds() * 1000)
        latest = at_ms + int(OVERDUE_SLACK.total_seconds() * 1000)
        counts = {
            c.chain: sum(1 for t in c.unsigned_appended_ms if not oldest <= t <= latest)
            for c in self.chains
            if c.signed
        }
        return {chain: n for chain, n in counts.items() if n}


def read_link(entry: LogEntry) -> Link:
    """The chain fields of ``entry``, after checking that its bytes hash to its link."""
    chain, seq, prev, link = (
        entry.header(h) for h in (CHAIN_HEADER, SEQ_HEADER, PREV_HEADER, LINK_HEADER)
    )
    if chain is None or seq is None or prev is None or link is None:
        raise LogTampered(entry.position, "record is not chained")
    schema = entry.header(SCHEMA_HEADER) or b""
    # The seq must be written as the writer writes it (so one record cannot carry two
    # spellings of its place in the chain), and each field must fit the link's encoding.
    number = parse_seq(seq)
    try:
        name = chain.decode()
        prev_hash, link_bytes = bytes.fromhex(prev.decode()), bytes.fromhex(link.decode())
    except ValueError:  # also UnicodeDecodeError
        raise LogTampered(entry.position, "malformed chain headers") from None
    if (
        number is None
        or len(chain) > MAX_FIELD_BYTES
        or len(schema) > MAX_FIELD_BYTES
        or len(prev_hash) != HASH_BYTES
        or len(link_bytes) != HASH_BYTES
    ):
        raise LogTampered(entry.position, "malformed chain headers")
    if link_hash(name, number, prev_hash, schema, entry.value) != link_bytes:
        raise LogTampered(entry.position, "record does not match its link (altered)")
    return Link(name, number, prev_hash, link_bytes, entry)


def _chains(audit: Sequence[LogEntry]) -> dict[str, list[Link]]:
    """Every chain's links in seq order, after the per-record and per-partition checks."""
    by_chain: dict[str, dict[int, Link]] = defaultdict(dict)
    last: dict[tuple[int, str], Link] = {}
    for entry in sorted(audit, key=lambda e: (e.partition, e.offset)):
        link = read_link(entry)
        if link.seq in by_chain[link.chain]:
            raise LogTampered(entry.position, f"chain {link.chain} seq {link.seq} repeated")
        before = last.get((entry.partition, link.chain))
        if before is not None and link.seq < before.seq:
            raise LogTampered(
                before.entry.position,
                f"chain {link.chain} seq {before.seq} precedes seq {link.seq} at offset "
                f"{entry.offset} (records reordered)",
            )
        last[(entry.partition, link.chain)] = link
        by_chain[link.chain][link.seq] = link
    chains: dict[str, list[Link]] = {}
    for name in sorted(by_chain):
        ordered = [by_chain[name][s] for s in sorted(by_chain[name])]
        prev = GENESIS
        for expected, link in enumerate(ordered):
            if link.seq != expected:
                raise LogTampered(
                    f"chain {name} seq {expected}",
                    f"missing (the next record of the chain is at {link.entry.position})",
                )
            if link.prev != prev:
                raise LogTampered(
                    link.entry.position,
                    f"chain {name} seq {link.seq} does not follow seq "
                    f"{link.seq - 1} (a record was replaced or inserted)",
                )
            prev = link.link
        chains[name] = ordered
    return chains


def _roots(links: Sequence[Link], sizes: set[int]) -> dict[int, bytes]:
    """The Merkle root of the first ``n`` links for each ``n`` in ``sizes`` (one pass)."""
    roots: dict[int, bytes] = {}
    frontier = Frontier()
    if 0 in sizes:
        roots[0] = frontier.root()
    for link in links:
        frontier.append(leaf_hash(link.link))
        if frontier.size in sizes:
            roots[frontier.size] = frontier.root()
    return roots


def _check_against(
    checkpoint: Checkpoint, links: Sequence[Link], root: bytes | None, where: str
) -> None:
    if checkpoint.size > len(links):
        raise LogTampered(
            f"chain {checkpoint.chain} seq {len(links)}",
            f"missing: the checkpoint at {where} covers {checkpoint.size} records, the log "
            f"holds {len(links)} (truncated)",
        )
    if checkpoint.size and links[checkpoint.size - 1].link != checkpoint.head:
        raise LogTampered(where, f"chain {checkpoint.chain}: head differs from the log's")
    if root != checkpoint.root:
        raise LogTampered(where, f"chain {checkpoint.chain}: Merkle root differs from the log's")


def verify_log(
    audit: Sequence[LogEntry],
    checkpoints: Sequence[LogEntry],
    ring: KeyRing,
    *,
    signer: str = "broker",
    witnesses: Sequence[bytes] = (),
) -> VerifyReport:
    """Verify the whole log; return what it holds, or raise :class:`LogTampered`."""
    chains = _chains(audit)
    signed: list[tuple[Checkpoint, str]] = []
    distrusted: list[str] = []
    for entry in sorted(checkpoints, key=lambda e: (e.partition, e.offset)):
        try:
            checkpoint = verify_checkpoint(entry.value, ring, signer=signer)
        except RevokedKey:
            distrusted.append(entry.position)
            continue
        except BadCheckpoint as exc:
            raise LogTampered(entry.position, str(exc)) from None
        marked = entry.header(CHECKPOINT_HEADER)
        if marked is not None and marked != checkpoint.chain.encode():
            raise LogTampered(entry.position, "checkpoint header names another chain")
        signed.append((checkpoint, entry.position))
    saved: list[tuple[Checkpoint, str]] = []
    for number, data in enumerate(witnesses, start=1):
        try:
            saved.append((verify_checkpoint(data, ring, signer=signer), f"witness {number}"))
        except RevokedKey:
            distrusted.append(f"witness {number}")
        except BadCheckpoint as exc:
            raise LogTampered(f"witness {number}", str(exc)) from None

    sizes: dict[str, set[int]] = defaultdict(set)
    for checkpoint, _ in signed + saved:
        sizes[checkpoint.chain].add(checkpoint.size)
    roots = {name: _roots(chains.get(name, []), wanted) for name, wanted in sizes.items()}
    newest: dict[str, Checkpoint] = {}
    for checkpoint, where in signed:
        links = chains.get(checkpoint.chain, [])
        _check_against(checkpoint, links, roots[checkpoint.chain].get(checkpoint.size), where)
        if checkpoint.size >= getattr(newest.get(checkpoint.chain), "size", -1):
            newest[checkpoint.chain] = checkpoint
    for checkpoint, where in saved:
        links = chains.get(checkpoint.chain, [])
        _check_against(checkpoint, links, roots[checkpoint.chain].get(checkpoint.size), where)
        # What the witness itself would check, given only its checkpoint and the newest one.
        latest = newest.get(checkpoint.chain)
        if latest is not None and latest.size >= checkpoint.size:
            proof = consistency_proof(
                [leaf_hash(x.link) for x in links[: latest.size]], checkpoint.size
            )
            try:
                verify_consistency(
                    checkpoint.size, latest.size, checkpoint.root, latest.root, proof
                )
            except InconsistentTrees as exc:
                raise LogTampered(where, str(exc)) from None

    summaries = []
    for name, links in chains.items():
        size = newest[name].size if name in newest else 0
        summaries.append(
            ChainSummary(
                chain=name,
                size=len(links),
                head=links[-1].link if links else GENESIS,
                signed=size,
                unsigned_appended_ms=tuple(x.entry.timestamp_ms for x in links[size:]),
            )
        )
    return VerifyReport(len(audit), len(signed), len(saved), tuple(summaries), tuple(distrusted))
