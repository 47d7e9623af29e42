"""Two real agents with the same gossip key and different cluster labels never merge.

This is the accident memberlist #246 guards against: two clusters given the
same key (a copied config) whose members are told to join each other.
"""

from __future__ import annotations

import time

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for
from tests.integration.conftest import cluster

pytestmark = pytest.mark.slow
__all__ = ["cluster"]


def _rejected_labels(agent: AgentProc) -> int:
    metrics = agent.api("/v1/agent/metrics") or {"Counters": []}
    return sum(c["Count"] for c in metrics["Counters"] if c["Name"].endswith("LabelError"))


def test_same_key_other_label_refuses_to_join_and_same_label_joins(cluster: Cluster) -> None:
    prod = cluster.agent(1).start("-cluster-label", "prod")
    staging = cluster.agent(2).start("-cluster-label", "staging")
    unlabelled = cluster.agent(3).start()
    refused = staging.cli("join", prod.gossip, check=False)
    assert refused.returncode != 0, refused.stdout
    refused_too = unlabelled.cli("join", prod.gossip, check=False)
    assert refused_too.returncode != 0, refused_too.stdout
    # UDP as well: staging learnt nothing from prod's answers, and prod counted the refusals.
    wait_for(lambda: _rejected_labels(prod) >= 2, 10.0, "prod counts the foreign labels")
    time.sleep(2.0)  # any gossip that slipped through would have spread by now
    for agent in (prod, staging, unlabelled):
        assert list(agent.statuses()) == [agent.name], agent.statuses()
    print(refused.stderr.strip())

    # The same label (and key) joins: the label is all that kept them apart.
    prod2 = cluster.agent(4).start("-cluster-label", "prod")
    prod2.cli("join", prod.gossip)
    wait_for(lambda: len(prod.statuses()) == 2, 10.0, "prod and prod2 together")
    assert set(prod2.statuses()) == {prod.name, prod2.name}
    assert list(staging.statuses()) == [staging.name]
