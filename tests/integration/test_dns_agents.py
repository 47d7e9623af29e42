"""DNS answers from real agents, asked with `dig`: what an application's resolver sees.

A registration on one agent is found by DNS on another within 3 s; a node
that dies drops out of the answers within the failure-detection time; a
service with 100 instances is truncated over UDP and complete over TCP.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from typing import Any

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is not installed"),
]


def dig(agent: AgentProc, *args: str) -> str:
    host, port = agent.dns.rsplit(":", 1)
    out = subprocess.run(
        ["dig", f"@{host}", "-p", port, "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout


def short(agent: AgentProc, *args: str) -> list[str]:
    return sorted(dig(agent, "+short", *args).split("\n")[:-1])


def register(agent: AgentProc, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://{agent.http}/v1/agent/service/register",
        data=json.dumps(body).encode(),
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200


def test_dns_on_real_agents(cluster: Cluster) -> None:
    a1, a2, a3 = cluster.start(3)
    register(a1, {"Name": "db", "ID": "db1", "Port": 5432, "Tags": ["primary"]})
    register(a2, {"Name": "db", "ID": "db2", "Port": 5433})
    took = wait_for(lambda: len(short(a3, "db.service.mesh")) == 2, 3.0, "db A records on n3")
    print(f"registration -> DNS answer on another agent in {took * 1000:.0f} ms")
    assert short(a3, "db.service.mesh") == sorted([a1.ip, a2.ip])
    assert short(a3, "primary.db.service.mesh") == [a1.ip]
    srv = short(a3, "_db._tcp.service.mesh", "SRV")
    assert sorted(line.split()[2] for line in srv) == ["5432", "5433"]
    full = dig(a3, "db.service.mesh", "SRV")
    assert "ADDITIONAL SECTION" in full and "n1.node.dc1.mesh." in full
    assert short(a3, "n2.node.mesh") == [a2.ip]
    # The agent's datacenter (dc1) in both of Consul's forms, and the NS: a3 itself.
    assert short(a3, "db.service.dc1.mesh") == sorted([a1.ip, a2.ip])
    assert short(a3, "n2.node.dc1.dc.mesh") == [a2.ip]
    assert "status: NXDOMAIN" in dig(a3, "db.service.dc2.mesh")
    assert short(a3, "mesh", "NS") == ["n3.node.dc1.mesh."]
    assert f"n3.node.dc1.mesh. 0 IN A {a3.ip}" in " ".join(dig(a3, "mesh", "NS").split())
    missing = dig(a3, "nope.service.mesh")
    assert "status: NXDOMAIN" in missing and "SOA" in missing
    assert "status: REFUSED" in dig(a3, "example.com")

    a2.kill9()
    took = wait_for(lambda: short(a3, "db.service.mesh") == [a1.ip], 20.0, "db2 gone from DNS")
    print(f"failed node's instance gone from DNS after {took:.1f} s")


def test_hundred_instances_truncate_over_udp_and_complete_over_tcp(cluster: Cluster) -> None:
    (a1,) = cluster.start(1)
    for i in range(100):
        register(a1, {"Name": "big", "ID": f"big{i}", "Port": 10000 + i, "Address": f"10.1.0.{i}"})
    udp = dig(a1, "big.service.mesh", "+ignore", "+noedns")
    assert " tc" in udp.split("flags:")[1].split(";")[0]
    tcp = dig(a1, "+tcp", "+short", "big.service.mesh").split()
    assert len(tcp) == 100
