"""The source adapters: in-process (intentions, catalog, leaf manager) and over HTTP."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from meshnode.ca.csr import validate_csr
from meshnode.ca.leaf_manager import Issued, LeafManager, Roots
from meshnode.ca.pem import cert_from_pem
from meshnode.ca.provider import BuiltinProvider
from meshnode.ca.spiffe import ServiceID
from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import parse_service
from meshnode.connect.agent_sources import AgentHttp, HttpAuthorizer, HttpCertSource, HttpResolver
from meshnode.http import Request, Response, Router
from meshnode.http.server import serve_http
from meshnode.intentions.replica import IntentionState
from meshnode.proxy.sources import Instance, Versioned
from meshnode.proxy.testing import TestCA
from meshnode.sidecars.inproc import CatalogResolver, IntentionAuthorizer, LeafCertSource
from meshnode.store.state import LocalState, NodeInfo, StaticNodes
from tests.sidecars.test_manager import FakeRunner


async def test_intention_authorizer_decides_and_wakes_on_changes() -> None:
    intentions = IntentionState(LocalState("n1"))
    authorizer = IntentionAuthorizer(intentions)
    assert authorizer.allowed("web", "db")[0]
    before = authorizer.generation
    intentions.upsert("web", "db", "deny")
    assert await authorizer.wait_changed(before, 1.0) > before
    allowed, reason = authorizer.allowed("web", "db")
    assert not allowed and "web => db" in reason
    assert authorizer.allowed("bad name!", "db")[0] is False  # a peer's odd ID: denied


async def test_catalog_resolver_lists_passing_sidecars_of_a_destination() -> None:
    state = LocalState("n1")
    nodes = StaticNodes(
        [NodeInfo("n1", "10.0.0.1", "alive"), NodeInfo("n2", "10.0.0.2", "suspect")],
        state.tracker,
    )
    catalog = Catalog(state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner)
    resolver = CatalogResolver(catalog)
    assert await resolver.instances("db") == []
    before = resolver.generation
    catalog.register(
        parse_service(
            {
                "Name": "db-sidecar-proxy",
                "Kind": "connect-proxy",
                "Port": 21000,
                "Proxy": {"DestinationServiceName": "db"},
            }
        )
    )
    assert await resolver.wait_changed(before, 1.0) > before
    assert await resolver.instances("db") == [Instance("10.0.0.1", 21000, "n1", "db-sidecar-proxy")]
    assert await resolver.instances("web") == []


async def test_leaf_cert_source_follows_the_leaf_manager() -> None:
    ca = TestCA("c1.mesh")
    provider = BuiltinProvider()
    roots = Roots("root-1", "c1.mesh", (ca.root.cert_pem,))

    async def issue(service: str, csr_pem: str) -> Issued:
        from datetime import UTC, datetime

        csr = validate_csr(csr_pem, expected=ServiceID("c1.mesh", "dc1", service))
        leaf = provider.sign_leaf(
            ca.intermediate.cert_pem,
            ca.intermediate.key_pem,
            csr,
            now=datetime.now(UTC),
            ttl_s=3600,
        )
        return Issued(leaf, (ca.intermediate.cert_pem,), "root-1")

    current = [roots]
    leaves = LeafManager(
        issue=issue,
        spiffe_id=lambda s: ServiceID("c1.mesh", "dc1", s).uri,
        roots=lambda: current[0],
        is_local=lambda s: s == "web",
        rng=random.Random(0),
    )
    source = LeafCertSource(leaves, "web")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(leaves.run)
            await nursery.start(source.run)
            generation = await source.wait_changed(0, 5.0)
            material = source.current()
            assert material is not None and generation == material.generation
            assert material.spiffe_id == "spiffe://c1.mesh/ns/default/dc/dc1/svc/web"
            assert material.trust_domain == "c1.mesh"
            assert material.roots_pem == ca.root.cert_pem
            assert cert_from_pem(material.cert_chain_pem).subject.rfc4514_string() == ""
            # A second root joins the bundle: new material, same leaf.
            other = TestCA("c1.mesh")
            current[0] = Roots("root-1", "c1.mesh", (ca.root.cert_pem, other.root.cert_pem))
            leaves.roots_changed()
            assert await source.wait_changed(generation, 5.0) > generation
            updated = source.current()
            assert updated is not None
            assert updated.roots_pem == ca.root.cert_pem + other.root.cert_pem
            assert updated.cert_chain_pem == material.cert_chain_pem
            nursery.cancel_scope.cancel()


class FakeAgentApi:
    """The four agent endpoints the HTTP sources use, with blocking queries."""

    def __init__(self, ca: TestCA) -> None:
        self.material = ca.material("web")
        self.ca = ca
        self.index = Versioned()
        self.intentions: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []
        self.router = Router()
        self.router.add("GET", "/v1/agent/connect/ca/leaf/{service}", self.leaf)
        self.router.add("GET", "/v1/agent/connect/ca/roots", self.roots)
        self.router.add("GET", "/v1/connect/intentions", self.list_intentions)
        self.router.add("GET", "/v1/health/connect/{service}", self.health)

    async def _blocking(self, request: Request, body: Callable[[], Any]) -> Response:
        index = int(request.query_value("index") or 0)
        if index:
            await self.index.wait_changed(index - 1, 5.0)  # index n answered generation n-1
        return Response.json(body(), headers=[("X-Consul-Index", str(self.index.generation + 1))])

    async def leaf(self, request: Request) -> Response:
        m = self.material
        body = {"CertPEM": m.cert_chain_pem, "PrivateKeyPEM": m.key_pem, "ServiceURI": m.spiffe_id}
        return await self._blocking(request, lambda: body)

    async def roots(self, request: Request) -> Response:
        body = {"TrustDomain": "c1.mesh", "Roots": [{"RootCert": self.ca.root.cert_pem}]}
        return await self._blocking(request, lambda: body)

    async def list_intentions(self, request: Request) -> Response:
        return await self._blocking(request, lambda: self.intentions)

    async def health(self, request: Request) -> Response:
        return await self._blocking(request, lambda: self.instances)


async def test_http_sources_follow_the_agent_with_blocking_queries(ca: TestCA) -> None:
    api = FakeAgentApi(ca)
    api.instances = [
        {"Node": {"Node": "n2", "Address": "10.0.0.2"}, "Service": {"ID": "db-p", "Port": 21000}}
    ]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, api.router, host="127.0.0.1", port=0))
            agent = AgentHttp("127.0.0.1", port)
            certs, authorizer, resolver = (
                HttpCertSource(agent, "web"),
                HttpAuthorizer(agent),
                HttpResolver(agent),
            )
            for source in (certs, authorizer, resolver):
                await nursery.start(source.run)
            material = certs.current()
            assert material is not None
            assert material.spiffe_id == api.material.spiffe_id
            assert material.roots_pem == ca.root.cert_pem
            assert material.trust_domain == "c1.mesh"
            assert authorizer.allowed("web", "db")[0]  # no intentions: default allow
            assert await resolver.instances("db") == [Instance("10.0.0.2", 21000, "n2", "db-p")]
            before = authorizer.generation
            api.intentions = [{"SourceName": "web", "DestinationName": "db", "Action": "deny"}]
            api.instances = []
            api.index.bump()
            assert await authorizer.wait_changed(before, 5.0) > before
            assert not authorizer.allowed("web", "db")[0]
            with trio.fail_after(5):
                while await resolver.instances("db"):
                    await resolver.wait_changed(resolver.generation, 1.0)
            nursery.cancel_scope.cancel()


async def test_http_authorizer_fails_closed_before_its_first_answer() -> None:
    authorizer = HttpAuthorizer(AgentHttp("127.0.0.1", 1))
    allowed, reason = authorizer.allowed("web", "db")
    assert not allowed and "not loaded" in reason
