"""/v1/agent/metrics?format=prometheus from real agents, read by `promtool check
metrics` and prometheus-client's parser, as a Prometheus scrape would be.

A member that is killed and comes back within a minute counts as a flap
(`consul_serf_member_flap`), as serf counts it; the memberlist names follow
the member states the agent reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshnode.api.metrics_format import CONSUL_EQUIVALENTS, CONTENT_TYPE
from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = pytest.mark.slow

_LAN = (("network", "lan"),)
# promtool's one complaint we accept: Consul's own counter names have no `_total`.
_CONSUL_LINT = re.compile(r'^(consul_\w+) counter metrics should have "_total" suffix$')


def scrape(agent: AgentProc) -> tuple[str, str]:
    """(Content-Type, body) of the agent's Prometheus metrics."""
    url = f"http://{agent.http}/v1/agent/metrics?format=prometheus"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.headers["Content-Type"], reply.read().decode("utf-8")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(family name, sorted labels) -> value, as prometheus-client parses the text."""
    return {
        (family.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(agent: AgentProc, family: str, labels: tuple[tuple[str, str], ...] = _LAN) -> float:
    return samples(scrape(agent)[1]).get((family, labels), -1.0)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_promtool_accepts_a_live_agents_metrics(cluster: Cluster) -> None:
    a1, _a2 = cluster.start(2)
    wait_for(lambda: value(a1, "consul_memberlist_udp_sent") > 0, 10.0, "gossip traffic")
    content_type, text = scrape(a1)
    assert content_type == CONTENT_TYPE
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # 0: clean; 3: lint findings only (1 would be a text promtool cannot parse).
    assert lint.returncode in (0, 3), lint.stderr
    complaints = [line for line in lint.stderr.splitlines() if line.strip()]
    consul_counters = {eq.name for eq in CONSUL_EQUIVALENTS if eq.kind == "counter"}
    for line in complaints:
        match = _CONSUL_LINT.match(line)
        assert match is not None and match.group(1) in consul_counters, line
    parsed = samples(text)
    assert parsed[("meshnode_gossip_members_alive", ())] == 2
    assert parsed[("consul_memberlist_node_instances", (*_LAN, ("node_state", "alive")))] == 2
    assert parsed[("meshnode_gossip_udp_sent_bytes", ())] > 0


def test_a_member_back_within_a_minute_is_a_flap(cluster: Cluster) -> None:
    a1, a2 = cluster.start(2)
    wait_for(lambda: value(a1, "consul_serf_member_join") == 1, 10.0, "a2's join counted on a1")
    assert value(a1, "consul_serf_member_flap") == 0
    a2.kill9()
    took = wait_for(lambda: value(a1, "consul_serf_member_failed") == 1, 30.0, "a2 failed on a1")
    print(f"failure counted after {took:.1f} s")
    dead = (*_LAN, ("node_state", "dead"))
    assert value(a1, "consul_memberlist_node_instances", dead) == 1
    a2.start()
    a2.cli("join", a1.gossip)
    wait_for(lambda: value(a1, "consul_serf_member_flap") == 1, 10.0, "the flap counted on a1")
    text = scrape(a1)[1]
    assert samples(text)[("consul_serf_member_join", _LAN)] == 2
    assert samples(text)[("meshnode_gossip_member_flapped", ())] == 1
    assert value(a1, "consul_memberlist_node_instances", dead) == 0
