"""Two real agents on one address, each with a sidecar: the second moves off port 21000.

Both agents start their automatic sidecar ports at 21000 on the same IP. The
second one to bind finds the port taken: it must listen on the next free port,
show that port in the catalog and in DNS SRV answers, and its listening check
must describe its own listener (before the fix it passed because the other
agent's sidecar answered on 21000).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for
from tests.integration.test_proxy_agents import _Echo, app, free_port, register, round_trip

pytestmark = pytest.mark.slow


def _sidecar(agent: AgentProc, service: str) -> dict[str, object] | None:
    found = agent.api(f"/v1/health/service/{service}-sidecar-proxy") or []
    mine = [e for e in found if e["Node"]["Node"] == agent.name]
    return mine[0] if mine else None


def _port(agent: AgentProc, service: str) -> int:
    entry = _sidecar(agent, service)
    assert entry is not None
    service_block = entry["Service"]
    assert isinstance(service_block, dict)
    return int(service_block["Port"])


def _passing(agent: AgentProc, service: str) -> bool:
    entry = _sidecar(agent, service)
    checks = [] if entry is None else entry["Checks"]
    assert isinstance(checks, list)
    return any(c["Name"] == "Connect Sidecar Listening" for c in checks) and all(
        c["Status"] == "passing" for c in checks
    )


def test_two_agents_on_one_address_get_different_sidecar_ports(
    cluster: Cluster, tmp_path: Path
) -> None:
    signer = ("-signer", "-signer-token", "t-signers")
    first = cluster.agent(1).start(*signer)
    second = AgentProc(cluster, "n2", first.ip, tmp_path / "n2")
    second.port_offset = 1  # the same address as the first agent, its own API ports
    cluster.agents.append(second)
    second.start(*signer)
    second.cli("join", first.gossip)
    wait_for(lambda: len(first.statuses()) == 2, 15.0, "two members")
    db_upstream, api_upstream = free_port(), free_port()
    with app(_Echo) as db_port, app(_Echo) as api_port:
        register(
            first,
            tmp_path,
            {"name": "db", "id": "db", "port": db_port, "connect": {"sidecar_service": {}}},
        )
        wait_for(lambda: _passing(first, "db"), 20.0, "db sidecar passing on the first agent")
        assert _port(first, "db") == 21000
        register(
            second,
            tmp_path,
            {"name": "api", "id": "api", "port": api_port, "connect": {"sidecar_service": {}}},
        )
        wait_for(lambda: _sidecar(second, "api") is not None, 10.0, "api sidecar registered")
        # The second agent's sidecar moved: the catalog says where it really listens.
        wait_for(lambda: _port(second, "api") != 21000, 10.0, "api sidecar moved off 21000")
        api_sidecar_port = _port(second, "api")
        assert 21001 <= api_sidecar_port <= 21255
        assert "proxy port in use, moved" in second.log_text()
        wait_for(lambda: _passing(second, "api"), 20.0, "api sidecar passing")
        entry = _sidecar(second, "api")
        assert entry is not None
        outputs = [str(c["Output"]) for c in entry["Checks"]]  # type: ignore[attr-defined]
        assert any(f":{api_sidecar_port}" in o and "api-sidecar-proxy" in o for o in outputs)

        # A client of both (on the first agent): bytes reach each service through its sidecar.
        upstreams = [
            {"destination_name": "db", "local_bind_port": db_upstream},
            {"destination_name": "api", "local_bind_port": api_upstream},
        ]
        register(
            first,
            tmp_path,
            {
                "name": "web",
                "id": "web",
                "port": free_port(),
                "connect": {"sidecar_service": {"proxy": {"upstreams": upstreams}}},
            },
        )
        wait_for(lambda: round_trip(db_upstream) == b"ping", 20.0, "web -> db")
        wait_for(lambda: round_trip(api_upstream) == b"ping", 20.0, "web -> api")

        if shutil.which("dig") is not None:  # what a resolver sees: the moved port
            host, port = second.dns.split(":")
            srv = subprocess.run(
                ["dig", f"@{host}", "-p", port, "+short", "api.connect.mesh", "SRV"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.split()
            assert srv[2] == str(api_sidecar_port), srv
