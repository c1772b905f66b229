"""RFC 9162 Merkle trees: roots, inclusion and consistency proofs, and the writer's frontier."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.audit import (
    EMPTY_ROOT,
    Frontier,
    InconsistentTrees,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162's recursive definition, as written, to check the fast one against."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def tree(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_known_answer_rfc6962_empty_and_one_leaf() -> None:
    assert root_of([]) == hashlib.sha256(b"").digest()
    assert root_of([leaf_hash(b"")]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


@given(st.integers(min_value=0, max_value=300))
def test_root_matches_the_recursive_definition(n: int) -> None:
    assert root_of(tree(n)) == mth(tree(n))


@given(st.integers(min_value=0, max_value=300))
def test_frontier_root_matches_root_of_every_prefix(n: int) -> None:
    leaves, frontier = tree(n), Frontier()
    for i, leaf in enumerate(leaves):
        frontier.append(leaf)
        assert frontier.size == i + 1
        frontier.check()
    assert frontier.root() == root_of(leaves)


@given(
    st.integers(min_value=1, max_value=200).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n - 1))
    )
)
def test_inclusion_proofs_verify(case: tuple[int, int]) -> None:
    n, index = case
    leaves = tree(n)
    proof = inclusion_proof(leaves, index)
    verify_inclusion(leaves[index], index, n, proof, root_of(leaves))


@given(
    st.integers(min_value=2, max_value=120).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(min_value=0, max_value=n - 1),
            st.integers(min_value=0, max_value=n - 1),
        )
    )
)
def test_inclusion_proof_of_another_leaf_or_position_fails(case: tuple[int, int, int]) -> None:
    n, index, other = case
    leaves = tree(n)
    proof = inclusion_proof(leaves, index)
    if other != index:
        with pytest.raises(InconsistentTrees):
            verify_inclusion(leaves[other], index, n, proof, root_of(leaves))
        with pytest.raises(InconsistentTrees):
            verify_inclusion(leaves[index], other, n, proof, root_of(leaves))
    if proof:
        bad = [bytes(32), *proof[1:]]
        with pytest.raises(InconsistentTrees):
            verify_inclusion(leaves[index], index, n, bad, root_of(leaves))


@given(
    st.integers(min_value=1, max_value=200).flatmap(
        lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
    )
)
def test_consistency_proofs_verify(case: tuple[int, int]) -> None:
    m, n = case
    leaves = tree(n)
    proof = consistency_proof(leaves, m)
    verify_consistency(m, n, root_of(leaves[:m]), root_of(leaves), proof)


@given(
    st.integers(min_value=2, max_value=150).flatmap(
        lambda n: st.tuples(
            st.integers(min_value=1, max_value=n - 1),
            st.just(n),
            st.integers(min_value=0, max_value=n - 1),
        )
    )
)
def test_a_rewritten_old_leaf_breaks_consistency(case: tuple[int, int, int]) -> None:
    """A log whose first ``m`` leaves were rewritten (leaf ``at`` changed) cannot prove it
    extends the old tree: the witness detects the rewrite."""
    m, n, at = case
    old = tree(n)
    new = list(old)
    new[at] = leaf_hash(b"rewritten")
    proof = consistency_proof(new, m)
    if at < m:
        with pytest.raises(InconsistentTrees):
            verify_consistency(m, n, root_of(old[:m]), root_of(new), proof)
    else:  # changes after the old tree are just new records
        verify_consistency(m, n, root_of(old[:m]), root_of(new), proof)


def test_consistency_rejects_bad_sizes_and_empty_proofs() -> None:
    leaves = tree(8)
    with pytest.raises(InconsistentTrees):
        verify_consistency(5, 4, root_of(leaves[:5]), root_of(leaves[:4]), [])
    with pytest.raises(InconsistentTrees):
        verify_consistency(3, 8, root_of(leaves[:3]), root_of(leaves), [])
    with pytest.raises(InconsistentTrees):
        verify_consistency(8, 8, root_of(leaves), EMPTY_ROOT, [])


def test_frontier_check_rejects_a_mismatched_frontier() -> None:
    with pytest.raises(InconsistentTrees):
        Frontier(3, [bytes(32)]).check()
