"""The catalog, health and agent-service endpoints on a real socket; py-consul against them."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import consul
import pytest
import trio

from meshnode.api.agent_service_endpoints import register_agent_service_routes
from meshnode.api.catalog_endpoints import register_catalog_routes
from meshnode.api.filter_expr import ListOf, Shape
from meshnode.api.filter_shapes import (
    AGENT_SERVICE,
    CATALOG_SERVICE,
    CHECK,
    HEALTH_ENTRY,
    NODE,
    NODE_SERVICE,
)
from meshnode.catalog.catalog import Catalog
from meshnode.http import Router, serve_http
from meshnode.http.testing import fetch, serve_in_thread
from meshnode.store.state import LocalState, NodeInfo, StaticNodes


def make_catalog() -> tuple[Catalog, StaticNodes]:
    state = LocalState("n1")
    nodes = StaticNodes(
        [
            NodeInfo("n1", "10.0.0.1", "alive", node_id="id-n1", meta={"tags": {"rack": "a"}}),
            NodeInfo("n2", "10.0.0.2", "alive"),
        ],
        state.tracker,
    )
    return Catalog(state, nodes, node_name="n1", datacenter="dc1"), nodes


def make_router(catalog: Catalog) -> Router:
    router = Router()
    register_catalog_routes(router, catalog, datacenter="dc1")
    register_agent_service_routes(router, catalog, datacenter="dc1")
    return router


async def assert_refused(
    port: int, catalog: Catalog, path: str, body: bytes, status: int, fragment: str
) -> None:
    """A PUT of `body` is refused with `status` and one line holding `fragment`; nothing written."""
    before = catalog.index()
    reply = await fetch(port, "PUT", path, body)
    assert reply.status == status
    message = reply.json()["error"]
    assert fragment in message and "\n" not in message
    assert catalog.index() == before


@pytest.fixture
def catalog_and_nodes() -> tuple[Catalog, StaticNodes]:
    return make_catalog()


@pytest.fixture
async def port(
    nursery: trio.Nursery, catalog_and_nodes: tuple[Catalog, StaticNodes]
) -> AsyncIterator[int]:
    router = make_router(catalog_and_nodes[0])
    yield await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))


WEB = {
    "Name": "web",
    "ID": "web1",
    "Port": 8080,
    "Tags": ["v1"],
    "Meta": {"team": "a"},
    "Check": {"TTL": "30s"},
    "Connect": {
        "SidecarService": {
            "Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}
        }
    },
}


async def test_register_then_read_everywhere(port: int) -> None:
    reply = await fetch(port, "PUT", "/v1/agent/service/register", WEB)
    assert (reply.status, reply.body) == (200, b"")
    services = await fetch(port, "GET", "/v1/catalog/services")
    assert services.json() == {"web": ["v1"], "web-sidecar-proxy": ["v1"]}
    assert int(services.headers["x-consul-index"]) >= 1
    [entry] = (await fetch(port, "GET", "/v1/catalog/service/web?tag=v1")).json()
    assert {
        k: entry[k] for k in ("Node", "Address", "ServiceID", "ServicePort", "ServiceMeta")
    } == {
        "Node": "n1",
        "Address": "10.0.0.1",
        "ServiceID": "web1",
        "ServicePort": 8080,
        "ServiceMeta": {"team": "a"},
    }
    assert entry["NodeMeta"] == {"rack": "a"}
    assert entry["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert (await fetch(port, "GET", "/v1/catalog/service/web?tag=v2")).json() == []
    [proxy] = (await fetch(port, "GET", "/v1/catalog/connect/web")).json()
    assert proxy["ServiceKind"] == "connect-proxy"
    assert proxy["ServiceProxy"]["Upstreams"][0] == {
        "DestinationType": "service",
        "DestinationName": "db",
        "LocalBindAddress": "127.0.0.1",
        "LocalBindPort": 9191,
    }
    node = (await fetch(port, "GET", "/v1/catalog/node/n1")).json()
    assert node["Node"]["ID"] == "id-n1"
    assert sorted(node["Services"]) == ["web1", "web1-sidecar-proxy"]
    assert (await fetch(port, "GET", "/v1/catalog/node/ghost")).json() is None
    nodes = (await fetch(port, "GET", "/v1/catalog/nodes")).json()
    assert [n["Node"] for n in nodes] == ["n1", "n2"]
    agent = (await fetch(port, "GET", "/v1/agent/services")).json()
    assert agent["web1"]["Service"] == "web" and agent["web1"]["Datacenter"] == "dc1"
    assert (await fetch(port, "GET", "/v1/agent/service/web1")).json()["Port"] == 8080
    assert (await fetch(port, "GET", "/v1/agent/service/nope")).status == 404
    checks = (await fetch(port, "GET", "/v1/agent/checks")).json()
    assert checks["service:web1"]["Status"] == "critical"
    assert checks["service:web1"]["Type"] == "ttl"
    assert checks["service:web1-sidecar-proxy"]["Name"] == "Connect Sidecar Listening"
    assert checks["service:web1-sidecar-proxy"]["Interval"] == "10s"


async def test_ttl_endpoints_and_health_views(port: int) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", {"Name": "web", "Check": {"TTL": "30s"}})
    assert (await fetch(port, "GET", "/v1/health/service/web?passing")).json() == []
    assert (await fetch(port, "PUT", "/v1/agent/check/pass/service:web?note=ok")).status == 200
    [entry] = (await fetch(port, "GET", "/v1/health/service/web?passing=1")).json()
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", "service:web"]
    assert entry["Checks"][1]["Output"] == "ok"
    assert entry["Service"]["Service"] == "web"
    reply = await fetch(
        port, "PUT", "/v1/agent/check/update/service:web", {"Status": "warning", "Output": "slow"}
    )
    assert reply.status == 200
    assert [c["Status"] for c in (await fetch(port, "GET", "/v1/health/checks/web")).json()] == [
        "warning"
    ]
    assert len((await fetch(port, "GET", "/v1/health/node/n1")).json()) == 2
    assert [
        c["CheckID"] for c in (await fetch(port, "GET", "/v1/health/state/warning")).json()
    ] == ["service:web"]
    assert (await fetch(port, "PUT", "/v1/agent/check/fail/ghost")).status == 404
    bad = await fetch(port, "PUT", "/v1/agent/check/update/service:web", {"Status": "great"})
    assert (bad.status, "status must be one of" in bad.json()["error"]) == (400, True)
    assert (await fetch(port, "GET", "/v1/health/state/bogus")).status == 400


async def test_not_a_ttl_check_is_400(port: int) -> None:
    body = {"Name": "web", "Check": {"TCP": "127.0.0.1:1", "Interval": "10s"}}
    await fetch(port, "PUT", "/v1/agent/service/register", body)
    reply = await fetch(port, "PUT", "/v1/agent/check/pass/service:web")
    assert reply.status == 400
    assert "not a TTL check" in reply.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[]", 400, "must be an object"),
        (json.dumps({"Port": 80}).encode(), 400, "missing field 'Name'"),
        (json.dumps({"Name": "web", "Port": "80"}).encode(), 400, "'Port' must be an integer"),
        (json.dumps({"Name": "web", "Bogus": 1}).encode(), 400, "unknown field 'Bogus'"),
        (json.dumps({"Name": "no_underscores"}).encode(), 400, "DNS label"),
        (json.dumps({"Name": "web", "Check": {"Interval": "1s"}}).encode(), 400, "exactly one of"),
        (json.dumps({"Name": "web", "Tags": ["t" * 300]}).encode(), 400, "1..255"),
        (json.dumps({"Name": "web", "Meta": {"k": "v" * 600}}).encode(), 400, "at most 512"),
        (b'{"Name": "' + b"w" * 300_000 + b'"}', 413, "the limit is"),
    ],
)
async def test_bad_registrations_are_one_line_and_change_nothing(
    port: int,
    catalog_and_nodes: tuple[Catalog, StaticNodes],
    body: bytes,
    status: int,
    fragment: str,
) -> None:
    catalog, _ = catalog_and_nodes
    await assert_refused(port, catalog, "/v1/agent/service/register", body, status, fragment)
    assert catalog.local_services() == []


async def test_deregister(port: int) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", WEB)
    assert (await fetch(port, "PUT", "/v1/agent/service/deregister/web1")).status == 200
    assert (await fetch(port, "GET", "/v1/agent/checks")).json() == {}
    assert (await fetch(port, "GET", "/v1/catalog/services")).json() == {}
    missing = await fetch(port, "PUT", "/v1/agent/service/deregister/web1")
    assert missing.status == 404 and "web1" in missing.json()["error"]


async def test_refused_query_parameters(port: int) -> None:
    assert (await fetch(port, "GET", "/v1/catalog/services?dc=dc2")).status == 400
    assert (await fetch(port, "GET", "/v1/catalog/services?dc=dc1")).status == 200
    assert (
        await fetch(port, "GET", "/v1/health/service/web?filter=x")
    ).status == 400  # no operator
    assert (await fetch(port, "GET", "/v1/catalog/services?index=abc")).status == 400
    assert (await fetch(port, "GET", "/v1/catalog/services?index=1&wait=soon")).status == 400


async def test_blocking_health_query_wakes_when_a_node_fails(
    port: int, catalog_and_nodes: tuple[Catalog, StaticNodes]
) -> None:
    _, nodes = catalog_and_nodes
    await fetch(
        port,
        "PUT",
        "/v1/agent/service/register",
        {"Name": "web", "Check": {"TTL": "1m", "Status": "passing"}},
    )
    first = await fetch(port, "GET", "/v1/health/service/web?passing")
    assert len(first.json()) == 1
    index = first.headers["x-consul-index"]
    answers: list[Any] = []

    async def blocking() -> None:
        reply = await fetch(port, "GET", f"/v1/health/service/web?passing&index={index}&wait=30s")
        answers.append((int(reply.headers["x-consul-index"]), reply.json()))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocking)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert answers == []
            nodes.set(NodeInfo("n1", "10.0.0.1", "failed"))
    assert answers[0][0] > int(index)
    assert answers[0][1] == []


@pytest.fixture
def threaded() -> Iterator[tuple[consul.Consul, Catalog]]:
    catalog, _ = make_catalog()
    with serve_in_thread(make_router(catalog)) as served_port:
        yield consul.Consul(host="127.0.0.1", port=served_port), catalog


def test_py_consul(threaded: tuple[consul.Consul, Catalog]) -> None:
    client, _ = threaded
    check = consul.Check.ttl("30s")
    assert client.agent.service.register(
        "web", service_id="web1", port=80, tags=["v1"], check=check
    )
    assert client.agent.service.register(
        "db", port=5432, check=consul.Check.tcp("127.0.0.1", 5432, "10s")
    )
    index, services = client.catalog.services()
    assert services == {"web": ["v1"], "db": []}
    assert int(index) >= 1
    _, instances = client.catalog.service("web")
    assert [(i["ServiceID"], i["ServicePort"]) for i in instances] == [("web1", 80)]
    _, nodes = client.catalog.nodes()
    assert {n["Node"] for n in nodes} == {"n1", "n2"}
    _, passing = client.health.service("web", passing=True)
    assert passing == []
    assert client.agent.check.ttl_pass("service:web1", "ok")
    _, passing = client.health.service("web", passing=True)
    assert [p["Service"]["ID"] for p in passing] == ["web1"]
    assert "web1" in client.agent.services()
    assert client.agent.service.deregister("web1")
    with pytest.raises(consul.ConsulException):
        client.agent.service.register("bad_name")


# --- ?filter= ------------------------------------------------------------------------------


async def get_filtered(port: int, path: str, expression: str) -> Any:
    reply = await fetch(port, "GET", f"{path}?filter={urllib.parse.quote(expression)}")
    assert reply.status == 200, reply.body
    return reply.json()


DB = {"Name": "db", "ID": "db1", "Port": 5432, "Tags": ["primary"], "Check": {"TTL": "30s"}}


async def test_filter_on_every_catalog_health_and_agent_list(port: int) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", WEB)
    await fetch(port, "PUT", "/v1/agent/service/register", DB)
    await fetch(port, "PUT", "/v1/agent/check/pass/service:db1")
    on = partial(get_filtered, port)
    assert await on("/v1/catalog/services", '"primary" in ServiceTags') == {"db": ["primary"]}
    assert await on("/v1/catalog/services", 'ServiceKind == "connect-proxy"') == {
        "web-sidecar-proxy": ["v1"]
    }
    assert await on("/v1/catalog/service/web", "ServicePort == 9") == []
    [web] = await on("/v1/catalog/service/web", 'ServiceMeta.team == "a" and NodeMeta.rack == a')
    assert web["ServiceID"] == "web1"
    [proxy] = await on("/v1/catalog/connect/web", 'ServiceProxy.Upstreams.DestinationName == "db"')
    assert proxy["ServiceID"] == "web1-sidecar-proxy"
    assert [n["Node"] for n in await on("/v1/catalog/nodes", 'Meta["rack"] == "a"')] == ["n1"]
    assert [n["Node"] for n in await on("/v1/catalog/nodes", "Node matches `2$`")] == ["n2"]
    node = await on("/v1/catalog/node/n1", 'Service == "db"')
    assert list(node["Services"]) == ["db1"]
    health = await on(
        "/v1/health/service/db", 'Checks.Status == "passing" and Service.Port == 5432'
    )
    assert [e["Service"]["ID"] for e in health] == ["db1"]
    assert await on("/v1/health/service/web", 'Checks.Status != "critical"') == []  # any
    checks = await on("/v1/health/checks/web", 'Status == "critical"')
    assert [c["CheckID"] for c in checks] == ["service:web1"]
    passing = await on("/v1/health/state/any", 'ServiceName == "db"')
    assert [c["CheckID"] for c in passing] == ["service:db1"]
    assert await on("/v1/health/node/n1", "CheckID == none") == []
    agent = await on("/v1/agent/services", '"v1" in Tags and Kind is empty')
    assert list(agent) == ["web1"]
    local = await on("/v1/agent/checks", 'ServiceID == "db1"')
    assert list(local) == ["service:db1"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/catalog/services",
        "/v1/catalog/service/web",
        "/v1/catalog/nodes",
        "/v1/catalog/node/n1",
        "/v1/health/service/web",
        "/v1/health/checks/web",
        "/v1/health/state/any",
        "/v1/agent/services",
        "/v1/agent/checks",
    ],
)
async def test_bad_filter_is_a_one_line_400_even_with_nothing_to_filter(
    port: int, path: str
) -> None:
    reply = await fetch(port, "GET", f"{path}?filter={urllib.parse.quote('Foo == 1')}")
    assert reply.status == 400
    assert reply.json()["error"] == "filter: unknown field 'Foo'"
    long = await fetch(port, "GET", f"{path}?filter={'x' * 2049}")
    assert long.status == 400 and "longer than 2048" in long.json()["error"]


async def test_blocking_query_with_a_filter_wakes_and_filters(port: int) -> None:
    first = await fetch(port, "GET", "/v1/catalog/services")
    index = first.headers["x-consul-index"]
    expression = urllib.parse.quote('ServiceName == "db"')
    answers: list[Any] = []

    async def wait() -> None:
        path = f"/v1/catalog/service/db?index={index}&wait=5s&filter={expression}"
        answers.append((await fetch(port, "GET", path)).json())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert answers == []
            await fetch(port, "PUT", "/v1/agent/service/register", DB)
    assert [a["ServiceID"] for a in answers[0]] == ["db1"]


def fields_outside(data: Any, shape: Shape, where: str = "") -> list[str]:
    """Keys of `data` that `shape` does not name (a selector on them would be refused)."""
    missing = []
    for key, value in data.items():
        kind = shape.get(key)
        if kind is None:
            missing.append(where + key)
        elif isinstance(kind, ListOf):
            for item in value:
                missing += fields_outside(item, kind.shape, f"{where}{key}.")
        elif isinstance(kind, dict) and value:
            missing += fields_outside(value, kind, f"{where}{key}.")
    return missing


async def test_shapes_name_every_field_the_endpoints_answer(port: int) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", WEB)
    await fetch(port, "PUT", "/v1/agent/service/register", {**DB, "Connect": {"Native": True}})
    answers: list[tuple[str, Shape]] = [
        ("/v1/catalog/service/web", CATALOG_SERVICE),
        ("/v1/catalog/connect/web", CATALOG_SERVICE),
        ("/v1/catalog/service/db", CATALOG_SERVICE),
        ("/v1/catalog/nodes", NODE),
        ("/v1/health/service/web", HEALTH_ENTRY),
        ("/v1/health/checks/web", CHECK),
    ]
    for path, shape in answers:
        for item in (await fetch(port, "GET", path)).json():
            assert fields_outside(item, shape) == [], path
    for path, shape in [("/v1/agent/services", AGENT_SERVICE), ("/v1/agent/checks", CHECK)]:
        for item in (await fetch(port, "GET", path)).json().values():
            assert fields_outside(item, shape) == [], path
    for item in (await fetch(port, "GET", "/v1/catalog/node/n1")).json()["Services"].values():
        assert fields_outside(item, NODE_SERVICE) == []


def test_py_consul_filter_expr(threaded: tuple[consul.Consul, Catalog]) -> None:
    client, _ = threaded
    assert client.agent.service.register("web", service_id="web1", port=80, tags=["v1"])
    assert client.agent.service.register("db", service_id="db1", port=5432, meta={"env": "prod"})
    assert list(client.agent.services(filter_expr='Meta.env == "prod"')) == ["db1"]
    _, found = client.catalog.services(filter_expr="ServicePort == 80")
    assert found == {"web": ["v1"]}
    _, nodes = client.catalog.nodes(filter_expr='Node == "n2"')
    assert [n["Node"] for n in nodes] == ["n2"]
    _, entries = client.health.service("web", filter_expr='"v2" in Service.Tags')
    assert entries == []
    with pytest.raises(consul.ConsulException, match="filter: unknown field 'Nod'"):
        client.catalog.nodes(filter_expr='Nod == "n2"')
