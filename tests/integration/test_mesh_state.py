"""Catalog, health and intentions across five real agents with gossip encryption.

What a user of the mesh sees: a service registered on one node is found on
every other within seconds, an intention written anywhere is enforced
everywhere, a paused node catches up with what it missed, a dead node's
services turn critical, and an acknowledged write survives kill -9.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = pytest.mark.slow


def write_service(path: Path, name: str, port: int, **extra: Any) -> Path:
    path.write_text(json.dumps({"service": {"name": name, "port": port, **extra}}))
    return path


def instances(agent: AgentProc, name: str, *, passing: bool = False) -> list[dict[str, Any]]:
    found = agent.api(f"/v1/health/service/{name}" + ("?passing" if passing else ""))
    return found if isinstance(found, list) else []


def check(agent: AgentProc, src: str, dst: str) -> str:
    out = agent.cli("intention", "check", src, dst, check=False)
    return out.stdout.strip()


def test_five_agents_share_the_catalog_and_the_intentions(cluster: Cluster, tmp_path: Path) -> None:
    agents = cluster.start(5)
    a1, a2, _, a4, a5 = agents
    svc = write_service(tmp_path / "web.json", "web", 8080, tags=["v1"], id="web1")
    out = a1.cli("services", "register", str(svc))
    assert "web" in out.stdout
    took = wait_for(lambda: len(instances(a5, "web")) == 1, 3.0, "web on n5")
    print(f"service on n1 -> visible on n5 in {took * 1000:.0f} ms")
    entry = instances(a5, "web")[0]
    assert entry["Node"]["Node"] == "n1"
    assert entry["Service"]["Port"] == 8080 and entry["Service"]["Tags"] == ["v1"]
    listed = a5.cli("catalog", "services").stdout.split()
    assert "web" in listed

    assert check(a4, "web", "socat") == "Allowed"  # the default policy
    out = a2.cli("intention", "deny", "web", "socat")
    assert out.stdout.strip() == "Created: web => socat (deny)"
    took = wait_for(lambda: check(a4, "web", "socat") == "Denied", 3.0, "deny on n4")
    print(f"intention on n2 -> enforced on n4 in {took * 1000:.0f} ms")
    denied = a4.cli("intention", "check", "web", "socat", check=False)
    assert denied.returncode == 1

    # The owner dies: its services turn critical on every other node.
    a1.kill9()
    for other in agents[1:]:
        wait_for(
            lambda o=other: (  # type: ignore[misc]
                instances(o, "web") and not instances(o, "web", passing=True)
            ),
            20.0,
            f"web critical on {other.name}",
        )
    statuses = {c["CheckID"]: c["Status"] for c in instances(a5, "web")[0]["Checks"]}
    assert statuses["serfHealth"] == "critical"


def test_paused_agent_catches_up_with_catalog_and_intentions(
    cluster: Cluster, tmp_path: Path
) -> None:
    a1, a2, a3, _, a5 = cluster.start(5)
    a5.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)
        a1.cli("services", "register", str(write_service(tmp_path / "db.json", "db", 5432)))
        a2.cli("intention", "deny", "web", "db")
        a3.cli("intention", "create", "-allow", "ops", "db")
        a2.cli("kv", "put", "config/mode", "blue")
        time.sleep(19.0)  # 20 s paused: broadcasts spent, n5 declared failed
    finally:
        a5.send_signal(signal.SIGCONT)
    took = wait_for(
        lambda: (
            len(instances(a5, "db", passing=True)) == 1
            and check(a5, "web", "db") == "Denied"
            and check(a5, "ops", "db") == "Allowed"
            and a5.cli("kv", "get", "config/mode", check=False).stdout.strip() == "blue"
        ),
        30.0,
        "n5 catching up after SIGCONT",
    )
    print(f"n5 caught up {took:.1f} s after SIGCONT")


def test_acknowledged_registration_and_intention_survive_kill9(
    cluster: Cluster, tmp_path: Path
) -> None:
    a1, a2, a3 = cluster.start(3)
    a1.cli("services", "register", str(write_service(tmp_path / "api.json", "api", 9000)))
    a1.cli("intention", "deny", "api", "billing")
    a1.kill9()  # right after both acknowledgements
    a1.start()
    a1.cli("join", a2.gossip)
    services = a1.api("/v1/agent/services")
    assert isinstance(services, dict) and "api" in services
    wait_for(
        lambda: (
            len(instances(a3, "api", passing=True)) == 1 and check(a3, "api", "billing") == "Denied"
        ),
        25.0,
        "n1's writes on n3 after its restart",
    )


def test_config_dir_services_and_sighup_reload(cluster: Cluster, tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write_service(conf / "web.json", "web", 80)
    a1 = cluster.agent(1).start("-config-dir", str(conf))
    a2 = cluster.agent(2).start()
    a2.cli("join", a1.gossip)
    wait_for(lambda: len(instances(a2, "web")) == 1, 5.0, "web from the config dir on n2")
    write_service(conf / "cache.json", "cache", 6379)
    (conf / "web.json").unlink()
    a1.send_signal(signal.SIGHUP)
    wait_for(
        lambda: len(instances(a2, "cache")) == 1 and not instances(a2, "web"),
        5.0,
        "reload: cache added, web gone",
    )
    # A broken file: the reload fails, says why, and changes nothing.
    (conf / "bad.json").write_text("{not json")
    out = a1.cli("reload", check=False)
    assert out.returncode == 1 and "not valid JSON" in out.stderr
    assert len(instances(a1, "cache")) == 1


def test_py_consul_catalog_health_and_intentions(cluster: Cluster) -> None:
    consul = pytest.importorskip("consul")
    a1, a2 = cluster.start(2)
    c1 = consul.Consul(host=a1.ip, port=8500)
    c2 = consul.Consul(host=a2.ip, port=8500)
    assert c1.agent.service.register("pay", service_id="pay1", port=7000, tags=["blue"])
    wait_for(lambda: c2.catalog.service("pay")[1], 3.0, "pay in n2's catalog")
    _, nodes = c2.catalog.service("pay")
    assert nodes[0]["ServiceID"] == "pay1" and nodes[0]["ServicePort"] == 7000
    assert nodes[0]["Node"] == "n1"
    _, healthy = c2.health.service("pay", passing=True)
    assert [h["Service"]["ID"] for h in healthy] == ["pay1"]
    _, services = c2.catalog.services()
    assert services["pay"] == ["blue"]
    assert c1.agent.service.deregister("pay1")
    wait_for(lambda: not c2.catalog.service("pay")[1], 3.0, "pay gone from n2")

    # Intentions through py-consul: written on n1, read and enforced on n2.
    assert c2.connect.intentions.check("web", "pay") is True  # the default policy
    assert c1.connect.intentions.upsert("web", "pay", action="deny", description="py") is True
    wait_for(lambda: c2.connect.intentions.check("web", "pay") is False, 3.0, "deny on n2")
    read = c2.connect.intentions.read("web", "pay")
    assert (read["SourceName"], read["Action"], read["Precedence"]) == ("web", "deny", 9)
    assert [i["SourceName"] for i in c2.connect.intentions.match("destination", "pay")["pay"]] == [
        "web"
    ]
