"""A registration acknowledged over HTTP survives kill -9 of its agent, whole.

A registration is one store batch (meshnode/store/batch.py): the service, its
sidecar and both checks are committed together before the 200. Registered
with py-consul (an unmodified Consul client), read back after a restart.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import consul
import pytest

from meshnode.testutil import Cluster

pytestmark = pytest.mark.slow


def test_a_registration_acknowledged_just_before_kill9_is_all_there_after_restart(
    cluster: Cluster,
) -> None:
    (a1,) = cluster.start(1)
    client = consul.Consul(host=a1.ip, port=8500)
    assert client.agent.service.register(
        "web",
        service_id="web1",
        port=8080,
        check=consul.Check.ttl("30s"),
        extra_checks=[consul.Check.tcp("127.0.0.1", 8080, "10s")],
        connect={"SidecarService": {}},
    )
    for i in range(20):  # and a burst, the last one acknowledged right before the kill
        assert client.agent.service.register("api", service_id=f"api{i}", port=9000 + i)
    a1.kill9()
    a1.start()
    after = consul.Consul(host=a1.ip, port=8500)
    services = after.agent.services()
    assert services["web1"]["Port"] == 8080
    assert services["web1-sidecar-proxy"]["Proxy"]["DestinationServiceID"] == "web1"
    assert {f"api{i}" for i in range(20)} <= set(services)
    owners = [c["ServiceID"] for c in after.agent.checks().values()]
    assert owners.count("web1") == 2
    assert owners.count("web1-sidecar-proxy") >= 1


def test_concurrent_registrations_acknowledged_before_kill9_are_all_there(
    cluster: Cluster,
) -> None:
    """Eight clients at once share commits (store/group_commit.py); every 200 is on disk."""
    (a1,) = cluster.start(1)

    def client_burst(c: int) -> list[str]:
        client = consul.Consul(host=a1.ip, port=8500)
        acked = []
        for i in range(15):
            service_id = f"c{c}-{i}"
            if client.agent.service.register("api", service_id=service_id, port=9000 + i):
                acked.append(service_id)
        return acked

    with ThreadPoolExecutor(max_workers=8) as pool:
        acked = [s for ids in pool.map(client_burst, range(8)) for s in ids]
    a1.kill9()
    a1.start()
    services = consul.Consul(host=a1.ip, port=8500).agent.services()
    assert len(acked) == 8 * 15
    assert set(acked) <= set(services)
