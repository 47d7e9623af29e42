"""The check, maintenance and probe endpoints on a real socket: shapes and one-line refusals."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from meshnode.api.check_endpoints import register_check_routes
from meshnode.api.status_endpoints import register_status_routes
from meshnode.catalog.catalog import Catalog
from meshnode.http import serve_http
from meshnode.http.testing import fetch

from .test_catalog_api import assert_refused, make_catalog, make_router


@pytest.fixture
def catalog() -> Catalog:
    return make_catalog()[0]


@pytest.fixture
def servers() -> list[str]:
    return []


@pytest.fixture
async def port(nursery: trio.Nursery, catalog: Catalog, servers: list[str]) -> AsyncIterator[int]:
    router = make_router(catalog)
    register_check_routes(router, catalog)
    register_status_routes(
        router, servers=lambda: servers, own_address=lambda: "10.0.0.1:7946", datacenter="dc1"
    )
    yield await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))


async def test_status_answers_in_consul_shapes(port: int, servers: list[str]) -> None:
    # No signer elected: the agent itself, never "" (which tools read as "no leader").
    assert (await fetch(port, "GET", "/v1/status/leader")).json() == "10.0.0.1:7946"
    assert (await fetch(port, "GET", "/v1/status/peers")).json() == ["10.0.0.1:7946"]
    servers += ["10.0.0.3:7946", "10.0.0.2:7946"]
    assert (await fetch(port, "GET", "/v1/status/leader")).json() == "10.0.0.3:7946"
    assert (await fetch(port, "GET", "/v1/status/peers")).json() == servers
    assert (await fetch(port, "GET", "/v1/catalog/datacenters")).json() == ["dc1"]


@pytest.mark.parametrize("method", ["PUT", "POST", "GET", "DELETE"])
@pytest.mark.parametrize("path", ["/v1/catalog/register", "/v1/catalog/deregister"])
async def test_catalog_writes_are_refused_with_the_reason(
    port: int, catalog: Catalog, method: str, path: str
) -> None:
    before = catalog.index()
    body = {"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web"}}
    reply = await fetch(port, method, path, body if method in ("PUT", "POST") else b"")
    assert reply.status == 405
    assert reply.headers["allow"] == ""  # RFC 9110: no method is allowed here
    message = reply.json()["error"]
    assert "belongs to the agent that runs its checks" in message
    assert "/v1/agent/service/register" in message
    assert catalog.index() == before


async def test_check_register_and_deregister(port: int, catalog: Catalog) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", {"Name": "web"})
    body = {"Name": "web alive", "CheckID": "web-alive", "ServiceID": "web", "TTL": "15s"}
    assert (await fetch(port, "PUT", "/v1/agent/check/register", body)).status == 200
    checks = (await fetch(port, "GET", "/v1/agent/checks")).json()
    assert checks["web-alive"]["ServiceID"] == "web"
    assert checks["web-alive"]["Type"] == "ttl"
    node_check = {"name": "disk", "ttl": "1m", "notes": "root fs"}  # py-consul's spelling
    assert (await fetch(port, "PUT", "/v1/agent/check/register", node_check)).status == 200
    [disk] = [
        c for c in (await fetch(port, "GET", "/v1/health/node/n1")).json() if c["CheckID"] == "disk"
    ]
    assert (disk["ServiceID"], disk["Notes"]) == ("", "root fs")
    assert (await fetch(port, "PUT", "/v1/agent/check/deregister/disk")).status == 200
    missing = await fetch(port, "PUT", "/v1/agent/check/deregister/disk")
    assert missing.status == 404 and "'disk'" in missing.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{", 400, "not valid JSON"),
        (json.dumps({"TTL": "1s"}).encode(), 400, "missing field 'Name'"),
        (json.dumps({"Name": "a b", "TTL": "1s"}).encode(), 400, "give the check an ID"),
        (json.dumps({"Name": "x", "TTL": "1s", "Bogus": 1}).encode(), 400, "unknown field 'Bogus'"),
        (json.dumps({"Name": "x", "Args": ["true"], "Interval": "1s"}).encode(), 400, "only tcp"),
        (
            json.dumps({"Name": "x", "TTL": "1s", "DeregisterCriticalServiceAfter": "1m"}).encode(),
            400,
            "needs a ServiceID",
        ),
        (json.dumps({"Name": "x", "TTL": "1s", "ServiceID": "ghost"}).encode(), 400, "'ghost'"),
        (
            json.dumps({"Name": "x", "ID": "_node_maintenance", "TTL": "1s"}).encode(),
            400,
            "reserved",
        ),
        (b'{"Name": "' + b"x" * 70_000 + b'"}', 413, "the limit is"),
    ],
)
async def test_bad_check_registrations_are_one_line(
    port: int, catalog: Catalog, body: bytes, status: int, fragment: str
) -> None:
    await assert_refused(port, catalog, "/v1/agent/check/register", body, status, fragment)


async def test_maintenance_endpoints(port: int) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", {"Name": "web"})
    on = await fetch(port, "PUT", "/v1/agent/service/maintenance/web?enable=True&reason=deploy")
    assert on.status == 200
    checks = (await fetch(port, "GET", "/v1/agent/checks")).json()
    assert checks["_service_maintenance:web"]["Notes"] == "deploy"
    assert checks["_service_maintenance:web"]["Type"] == "maintenance"
    assert checks["_service_maintenance:web"]["Timeout"] == ""
    assert (await fetch(port, "PUT", "/v1/agent/maintenance?enable=true")).status == 200
    critical = (await fetch(port, "GET", "/v1/health/state/critical")).json()
    assert {c["CheckID"] for c in critical} >= {"_node_maintenance", "_service_maintenance:web"}
    assert (await fetch(port, "PUT", "/v1/agent/maintenance?enable=false")).status == 200
    off = await fetch(port, "PUT", "/v1/agent/service/maintenance/web?enable=false")
    assert off.status == 200
    assert (await fetch(port, "GET", "/v1/agent/checks")).json() == {}


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/v1/agent/maintenance", 400, "missing ?enable="),
        ("/v1/agent/maintenance?enable=maybe", 400, "true or false"),
        ("/v1/agent/maintenance?enable=true&reason=" + "r" * 1100, 400, "longer than 1024"),
        ("/v1/agent/service/maintenance/ghost?enable=true", 404, "'ghost'"),
        ("/v1/agent/service/maintenance/web?enable=", 400, "true or false"),
    ],
)
async def test_maintenance_refusals(port: int, path: str, status: int, fragment: str) -> None:
    await fetch(port, "PUT", "/v1/agent/service/register", {"Name": "web"})
    reply = await fetch(port, "PUT", path)
    assert reply.status == status
    assert fragment in reply.json()["error"]
