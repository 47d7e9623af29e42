"""`/v1/agent/self` reports a digest of the replicated store, so operators and the
chaos tests can tell "every replica is the same" without reading every key."""

from __future__ import annotations

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = pytest.mark.slow


def store_stats(agent: AgentProc) -> dict[str, str]:
    info = agent.api("/v1/agent/self")
    assert isinstance(info, dict)
    stats: dict[str, str] = info["Stats"]["store"]
    return stats


def test_digests_agree_after_replication_and_differ_before(cluster: Cluster) -> None:
    a1, a2 = cluster.start(2)
    wait_for(lambda: store_stats(a1)["digest"] == store_stats(a2)["digest"], 10.0, "same digest")
    before = store_stats(a1)
    a1.cli("kv", "put", "chaos/one", "1")
    assert store_stats(a1)["digest"] != before["digest"]
    assert int(store_stats(a1)["entries"]) == int(before["entries"]) + 1
    wait_for(lambda: store_stats(a2)["digest"] == store_stats(a1)["digest"], 5.0, "n2 caught up")
    assert len(store_stats(a1)["digest"]) == 32
