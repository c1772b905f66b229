"""Merkle trees over a chain's links, as RFC 9162 (Certificate Transparency 2.0) defines them.

Why a tree beside the hash chain: the chain alone lets a verifier who holds the *whole* log
detect any change, but a witness agency keeps only signed checkpoints (tree size, root). With
RFC 9162's trees it can be given a short *consistency proof* that today's tree extends the one
it saw (nothing it saw was rewritten), and a compliance officer can give a court an *inclusion
proof* that one record is in a signed tree, without revealing any other record.

Hashing is RFC 9162's: a leaf is ``SHA-256(0x00 || data)``, an inner node
``SHA-256(0x01 || left || right)``, and a tree of ``n`` leaves splits at the largest power of
two below ``n``. Everything is a pure function of bytes; the only state is :class:`Frontier`,
the O(log n) "compact range" a writer keeps to extend a tree without its leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.audit._errors import InconsistentTrees

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n`` > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The tree head of already-hashed ``leaves``.

    Built level by level, carrying an odd last node up unchanged; that gives the same root as
    RFC 9162's recursive split and needs no recursion on a million leaves.
    """
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        above = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            above.append(level[-1])
        level = above
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaves`` (RFC 9162 PATH)."""
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    path: list[bytes] = []
    lo, hi, m = 0, len(leaves), index
    # Walk down from the root, collecting the sibling subtree at each split, then reverse.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(root_of(leaves[lo + k : hi]))
            hi = lo + k
        else:
            path.append(root_of(leaves[lo : lo + k]))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (hashed) is leaf ``index`` of the tree of ``size`` with ``root``
    (RFC 9162 section 2.1.3.2); raise :class:`InconsistentTrees` if not."""
    if not 0 <= index < size:
        raise InconsistentTrees("leaf index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise InconsistentTrees("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise InconsistentTrees("inclusion proof does not reach the root")


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of the tree of all
    ``leaves`` (RFC 9162 PROOF)."""
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise IndexError(old_size)
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, n, old_size, True
    while True:
        if m == hi - lo:
            if not complete:
                proof.append(root_of(leaves[lo:hi]))
            break
        k = _split(hi - lo)
        if m <= k:
            proof.append(root_of(leaves[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(root_of(leaves[lo : lo + k]))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``old_size``, ``old_root``) is a prefix of (``new_size``,
    ``new_root``) (RFC 9162 section 2.1.4.2); raise :class:`InconsistentTrees` if not."""
    if not 0 <= old_size <= new_size:
        raise InconsistentTrees("the old tree is larger than the new one")
    if old_size == 0:
        if proof:
            raise InconsistentTrees("a proof from the empty tree is empty")
        return
    if old_size == new_size:
        if proof or old_root != new_root:
            raise InconsistentTrees("trees of one size differ")
        return
    if not proof:
        raise InconsistentTrees("empty consistency proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InconsistentTrees("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise InconsistentTrees("the new tree does not extend the old one")


@dataclass
class Frontier:
    """The roots of the perfect subtrees a tree of ``size`` leaves decomposes into, left to
    right (largest first): enough to append leaves and compute the root without the leaves."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        """Add one hashed leaf."""
        self.hashes.append(leaf)
        self.size += 1
        # Each trailing 1 bit of the old size is a pair of equal perfect subtrees to merge.
        merges, n = 0, self.size
        while not n & 1:
            merges += 1
            n >>= 1
        for _ in range(merges):
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(node_hash(left, right))

    def root(self) -> bytes:
        """The tree head of every leaf appended so far."""
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self.hashes))

    def check(self) -> None:
        """A frontier read back from storage must have one hash per 1 bit of its size."""
        if self.size < 0 or bin(self.size).count("1") != len(self.hashes):
            raise InconsistentTrees("frontier does not match its size")
        if any(len(h) != HASH_BYTES for h in self.hashes):
            raise InconsistentTrees("frontier hash of the wrong length")
