"""What tools probe, tried as a Consul user would: py-consul and `dig` against real agents.

- /v1/status/leader and /peers name the elected signer (the agent itself
  before there is one), /v1/catalog/datacenters our datacenter;
- catalog writes are refused with a reason py-consul shows;
- a check registered on its own, node maintenance and service maintenance
  take services out of DNS and ``?passing``, and back;
- DeregisterCriticalServiceAfter removes a service that stays critical, and
  only that one (a dev agent, whose floor is 1 s instead of Consul's minute).
"""

from __future__ import annotations

import shutil
import subprocess
import time

import consul
import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is not installed"),
]


def client(agent: AgentProc) -> consul.Consul:
    host, port = agent.http.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def dig_short(agent: AgentProc, name: str) -> list[str]:
    host, port = agent.dns.rsplit(":", 1)
    out = subprocess.run(
        ["dig", f"@{host}", "-p", port, "+time=2", "+tries=1", "+short", name],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return sorted(out.stdout.split())


def passing(c: consul.Consul, name: str) -> list[str]:
    _, entries = c.health.service(name, passing=True)
    return [e["Node"]["Node"] for e in entries]


def test_status_leader_peers_and_refused_catalog_writes(cluster: Cluster) -> None:
    signer = cluster.agent(1).start("-signer", "-signer-token", "t-signers")
    plain = cluster.agent(2).start()
    c = client(plain)
    # Alone and no signer: the agent answers with itself, never "" ("no leader").
    assert c.status.leader() == plain.gossip
    assert c.status.peers() == [plain.gossip]
    plain.cli("join", signer.gossip)
    took = wait_for(lambda: c.status.leader() == signer.gossip, 20.0, "the signer as leader")
    print(f"join -> signer reported as leader in {took:.1f} s")
    assert c.status.peers() == [signer.gossip]
    assert client(signer).status.leader() == signer.gossip  # every agent agrees
    assert c.catalog.datacenters() == ["dc1"]
    with pytest.raises(consul.ConsulException) as refused:
        c.catalog.register("n9", "10.9.9.9", service={"Service": "web"})
    assert "405" in str(refused.value) and "/v1/agent/service/register" in str(refused.value)
    with pytest.raises(consul.ConsulException):
        c.catalog.deregister("n2", service_id="web")


def test_maintenance_and_node_checks_with_py_consul_and_dig(cluster: Cluster) -> None:
    (a1,) = cluster.start(1)
    c = client(a1)
    assert c.agent.service.register(
        "web", service_id="web1", port=8080, check=consul.Check.ttl("60s")
    )
    assert c.agent.check.ttl_pass("service:web1")
    wait_for(lambda: dig_short(a1, "web.service.mesh") == [a1.ip], 5.0, "web in DNS")

    assert c.agent.service.maintenance("web1", True, reason="deploy 42")
    wait_for(lambda: dig_short(a1, "web.service.mesh") == [], 5.0, "web out of DNS")
    assert passing(c, "web") == []
    notes = {k: v["Notes"] for k, v in c.agent.checks().items()}
    assert notes["_service_maintenance:web1"] == "deploy 42"
    assert c.agent.service.maintenance("web1", False)
    wait_for(lambda: dig_short(a1, "web.service.mesh") == [a1.ip], 5.0, "web back in DNS")

    assert c.agent.maintenance(True, reason="kernel")
    wait_for(lambda: dig_short(a1, "web.service.mesh") == [], 5.0, "node maintenance")
    _, node_checks = c.health.node(a1.name)
    assert "_node_maintenance" in {x["CheckID"] for x in node_checks}
    assert c.agent.maintenance(False)
    wait_for(lambda: passing(c, "web") == [a1.name], 5.0, "node back")

    # A node check registered on its own counts for every service of the node.
    assert c.agent.check.register("disk", check=consul.Check.ttl("60s"), check_id="disk")
    assert c.agent.check.ttl_fail("disk", notes="95% full")
    wait_for(lambda: dig_short(a1, "web.service.mesh") == [], 5.0, "critical node check")
    assert c.agent.check.deregister("disk")
    wait_for(lambda: dig_short(a1, "web.service.mesh") == [a1.ip], 5.0, "node check gone")
    assert "disk" not in c.agent.checks()


def test_deregister_critical_service_after_on_a_real_agent(cluster: Cluster) -> None:
    agent = cluster.agent(1).start("-dev")
    c = client(agent)
    reaped_check = consul.Check.ttl("60s")
    reaped_check["DeregisterCriticalServiceAfter"] = "2s"
    kept_check = dict(reaped_check)
    registered_at = time.monotonic()
    assert c.agent.service.register("gone", check=reaped_check)
    assert c.agent.service.register("kept", check=kept_check)
    assert c.agent.check.ttl_pass("service:kept")  # passing: never reaped
    took = wait_for(lambda: "gone" not in c.agent.services(), 10.0, "'gone' reaped")
    print(f"critical service with a 2 s limit reaped after {took:.1f} s")
    assert time.monotonic() - registered_at >= 1.9
    assert "kept" in c.agent.services()
    assert "service:gone" not in c.agent.checks()
    # The CLI, as a user checks: the reaped service is gone, the kept one listed.
    listed = agent.cli("catalog", "services").stdout.split()
    assert "kept" in listed and "gone" not in listed
