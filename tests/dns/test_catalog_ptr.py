"""dig -x against the agent's real catalog view: PTR answers follow every catalog change.

PTR used to come from a reverse map rebuilt over every service after any
change (issue 5); now each answer asks the catalog's indexes for one
address. These tests check, with a real client, that the answers are still
right, and stay right as services, checks and members change.
"""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio

from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import CheckDefinition, parse_service
from meshnode.catalog.dns_view import CatalogDnsView
from meshnode.catalog.records import (
    KIND_SERVICE,
    CheckRecord,
    ServiceRecord,
)
from meshnode.catalog.testing import check_entry, service_entry, tombstone
from meshnode.dns import DnsBound, DnsConfig, serve_dns
from meshnode.store.state import LocalState, NodeInfo, StaticNodes
from tests.dns.test_server import dig
from tests.meshnode.test_catalog_catalog import FakeRunner

pytestmark = pytest.mark.skipif(
    not __import__("shutil").which("dig"), reason="dig missing: apt-get install bind9-dnsutils"
)

NODES = 50
SERVICES = 2000


def _catalog() -> tuple[Catalog, LocalState, StaticNodes]:
    """2,000 services of 100 names on 50 nodes; every 4th has its own address 10.9.x.y."""
    state = LocalState("local")
    nodes = StaticNodes(
        [NodeInfo("local", "127.0.0.1", "alive")]
        + [NodeInfo(f"n{i}", f"10.1.0.{i + 1}", "alive") for i in range(NODES)],
        state.tracker,
    )
    catalog = Catalog(state, nodes, node_name="local", datacenter="dc1", runner=FakeRunner)
    entries = []
    for i in range(SERVICES):
        node = f"n{i % NODES}"
        body: dict[str, object] = {"Name": f"svc{i % 100}", "ID": f"s{i}", "Port": 80}
        if i % 4 == 0:
            body["Address"] = f"10.9.{i // 250}.{i % 250}"
        entries.append(service_entry(ServiceRecord(node, parse_service(body)), 1))
    state.merge(entries)
    return catalog, state, nodes


def _ptr_names(lines: list[str]) -> list[str]:
    return sorted(line.split()[-1] for line in lines if " PTR " in line)


async def _serve(nursery: trio.Nursery, catalog: Catalog) -> int:
    config = DnsConfig(host="127.0.0.1", port=0)
    bound: DnsBound = await nursery.start(
        partial(serve_dns, CatalogDnsView(catalog), config, rng=random.Random(1))
    )
    return bound.udp_port


async def test_ptr_of_a_node_address_lists_the_node_and_its_services(
    nursery: trio.Nursery,
) -> None:
    catalog, _, _ = _catalog()
    port = await _serve(nursery, catalog)
    # n3 (10.1.0.4) holds s3, s53, s103...: 40 services, the address-less ones
    # (i % 4 != 0) answer at the node's address: names svc3, svc53 (i % 100).
    ptr = await dig(port, "-x", "10.1.0.4")
    assert ptr.status == "NOERROR"
    assert _ptr_names(ptr.answer) == [
        "n3.node.dc1.mesh.",
        "svc3.service.dc1.mesh.",
        "svc53.service.dc1.mesh.",
    ]
    own = await dig(port, "-x", "10.9.0.100")  # s100 only: svc0 on n0
    assert _ptr_names(own.answer) == ["svc0.service.dc1.mesh."]
    nothing = await dig(port, "-x", "10.200.0.1")
    assert nothing.status == "REFUSED" and nothing.answer == []


async def test_ptr_follows_deregistrations_checks_and_members(nursery: trio.Nursery) -> None:
    catalog, state, nodes = _catalog()
    port = await _serve(nursery, catalog)
    assert _ptr_names((await dig(port, "-x", "10.9.0.100")).answer) == ["svc0.service.dc1.mesh."]
    # A remote deregistration (a tombstone, as gossip brings it).
    state.merge([tombstone(KIND_SERVICE, "n0", "s100", 2)])
    gone = await dig(port, "-x", "10.9.0.100")
    assert gone.status == "REFUSED" and gone.answer == []

    # A failing check hides s104 (svc4 on n4, at its own 10.9.0.104).
    assert _ptr_names((await dig(port, "-x", "10.9.0.104")).answer) == ["svc4.service.dc1.mesh."]
    check = CheckRecord(
        "n4", "c104", "critical", CheckDefinition(kind="ttl", check_id="c104"), service_id="s104"
    )
    state.merge([check_entry(check, 2)])
    assert (await dig(port, "-x", "10.9.0.104")).answer == []

    # A failed member: its services leave PTR answers, the node itself stays.
    nodes.set(NodeInfo("n3", "10.1.0.4", "failed"))
    assert _ptr_names((await dig(port, "-x", "10.1.0.4")).answer) == ["n3.node.dc1.mesh."]

    # A new local registration with its own address answers at once.
    catalog.register(parse_service({"Name": "fresh", "Port": 81, "Address": "10.9.9.9"}))
    fresh = await dig(port, "-x", "10.9.9.9")
    assert _ptr_names(fresh.answer) == ["fresh.service.dc1.mesh."]
