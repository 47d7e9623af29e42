"""Signer election: a pure function of the cluster id and the eligible members.

Rendezvous (highest random weight) hashing: each node's weight is
SHA-256(cluster id, node id), and the signers are the `k` heaviest. Every
agent computes it from its own member list, so no election messages exist,
and agents that agree on the list agree on the signers. A node's weight does
not depend on who else is eligible, which gives the minimal-change laws
(tests/ca/test_election.py): a joining node displaces at most one signer
(the lightest) and only if it is heavier; a failing non-signer changes
nothing; a failing signer is replaced by the next heaviest node alone.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable

__all__ = ["signer_set", "signer_weight"]


def signer_weight(cluster_id: str, node_id: str) -> bytes:
    """The node's rendezvous weight (compared as bytes, big-endian).

    Both strings are length-prefixed, so no pair of (cluster, node) ids
    hashes the same input as another pair.
    """
    cluster = cluster_id.encode()
    node = node_id.encode()
    return hashlib.sha256(
        len(cluster).to_bytes(4, "big") + cluster + len(node).to_bytes(4, "big") + node
    ).digest()


def signer_set(cluster_id: str, eligible: Iterable[str], k: int = 3) -> list[str]:
    """The `k` eligible node ids with the highest weight, best first.

    Duplicates count once. Equal weights (a SHA-256 collision) would be
    ordered by node id (the larger first), so the result never depends on
    the order of the input.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return heapq.nlargest(
        k, set(eligible), key=lambda node: (signer_weight(cluster_id, node), node)
    )
