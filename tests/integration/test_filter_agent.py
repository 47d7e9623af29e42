"""?filter= against a real agent process, through py-consul's `filter_expr` (go-bexpr syntax)."""

from __future__ import annotations

import consul
import pytest

from meshnode.testutil import Cluster

pytestmark = pytest.mark.slow


def test_py_consul_filters_on_a_running_agent(cluster: Cluster) -> None:
    (a1,) = cluster.start(1)
    host, port = a1.http.rsplit(":", 1)
    client = consul.Consul(host=host, port=int(port))
    assert client.agent.service.register(
        "web", service_id="web1", port=8080, tags=["v1"], meta={"env": "prod"},
        check=consul.Check.ttl("30s"),
    )  # fmt: skip
    assert client.agent.service.register("web", service_id="web2", port=8081, tags=["v2"])
    assert client.agent.check.ttl_pass("service:web1")
    assert client.connect.intentions.upsert("web", "db", action="allow") is True

    assert sorted(client.agent.services(filter_expr='"v1" in Tags')) == ["web1"]
    assert list(client.agent.checks(filter_expr="Status == passing")) == ["service:web1"]
    _, found = client.catalog.service("web", filter_expr="ServiceMeta.env == prod")
    assert [s["ServiceID"] for s in found] == ["web1"]
    _, found = client.catalog.services(filter_expr="ServicePort == 8081")
    assert found == {"web": ["v2"]}
    _, entries = client.health.service("web", filter_expr='Service.ID matches "2$"')
    assert [e["Service"]["ID"] for e in entries] == ["web2"]
    _, checks = client.health.checks("web", filter_expr='ServiceID == "web1"')
    assert [c["CheckID"] for c in checks] == ["service:web1"]
    _, passing = client.health.state("passing", filter_expr='ServiceName == "web"')
    assert [c["CheckID"] for c in passing] == ["service:web1"]
    allowed = client.connect.intentions.list(filter_expr="Action == allow")
    assert [i["DestinationName"] for i in allowed] == ["db"]
    with pytest.raises(consul.ConsulException, match="filter: unknown field 'Tag'"):
        client.agent.services(filter_expr='"v1" in Tag')
    assert client.agent.services(filter_expr='Service == "web"')  # the agent still serves
