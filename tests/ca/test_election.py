"""Signer election laws (rendezvous hashing): order-free, and minimal change on join and failure."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.ca import signer_set

cluster_ids = st.text(min_size=1, max_size=40)
node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
members = st.lists(node_ids, min_size=0, max_size=30, unique=True)
ks = st.integers(min_value=1, max_value=5)


def test_table() -> None:
    nodes = [f"n{i}" for i in range(10)]
    signers = signer_set("c1", nodes)
    assert len(signers) == 3
    assert len(set(signers)) == 3
    assert set(signers) <= set(nodes)
    assert signer_set("c1", nodes, k=10)[:3] == signers  # best first, a prefix of any longer list
    assert signer_set("c1", []) == []
    assert signer_set("c1", ["only"]) == ["only"]
    assert signer_set("c1", ["a", "a", "b"], k=5) == signer_set("c1", ["b", "a"], k=5)
    with pytest.raises(ValueError, match="at least 1"):
        signer_set("c1", nodes, k=0)


def test_cluster_id_changes_the_ranking() -> None:
    nodes = [f"n{i}" for i in range(20)]
    assert len({tuple(signer_set(f"c{i}", nodes)) for i in range(10)}) > 1


@given(cluster_ids, members, ks, st.randoms(use_true_random=False))
def test_same_set_for_any_input_order(
    cluster: str, nodes: list[str], k: int, rnd: random.Random
) -> None:
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert signer_set(cluster, shuffled, k) == signer_set(cluster, nodes, k)
    assert len(signer_set(cluster, nodes, k)) == min(k, len(nodes))


@given(cluster_ids, members, node_ids, ks)
def test_join_changes_at_most_one_member(
    cluster: str, nodes: list[str], newcomer: str, k: int
) -> None:
    if newcomer in nodes:
        return
    before = signer_set(cluster, nodes, k)
    after = signer_set(cluster, [*nodes, newcomer], k)
    if newcomer not in after:
        assert after == before
    else:
        assert set(after) - set(before) == {newcomer}
        assert len(set(before) - set(after)) <= 1  # none left if the set was not full


@given(cluster_ids, members, ks, st.data())
def test_failure_of_a_non_signer_changes_nothing(
    cluster: str, nodes: list[str], k: int, data: st.DataObject
) -> None:
    before = signer_set(cluster, nodes, k)
    others = [n for n in nodes if n not in before]
    if not others:
        return
    failed = data.draw(st.sampled_from(others))
    assert signer_set(cluster, [n for n in nodes if n != failed], k) == before


@given(cluster_ids, members, ks, st.data())
def test_failure_of_a_signer_replaces_exactly_it(
    cluster: str, nodes: list[str], k: int, data: st.DataObject
) -> None:
    before = signer_set(cluster, nodes, k)
    if not before:
        return
    failed = data.draw(st.sampled_from(before))
    survivors = [n for n in nodes if n != failed]
    after = signer_set(cluster, survivors, k)
    assert set(before) - set(after) == {failed}
    # The others keep their order; the replacement (if any) is the next best survivor.
    assert [n for n in after if n in before] == [n for n in before if n != failed]
    newcomers = set(after) - set(before)
    assert len(newcomers) == (1 if len(survivors) >= k else 0)
