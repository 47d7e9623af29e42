"""Fixtures for the DNS tests: a catalog every test starts from, and its builders."""

from __future__ import annotations

import pytest

from meshnode.dns import DnsInstance, DnsNode, InstanceStatus, StaticCatalog


def instance(
    node: str,
    address: str,
    port: int = 80,
    *,
    status: InstanceStatus = "passing",
    tags: tuple[str, ...] = (),
    weight: int = 1,
    ttl_s: int | None = None,
) -> DnsInstance:
    return DnsInstance(node, address, port, weight, tags, status, ttl_s, f"{node}-{port}")


@pytest.fixture
def catalog() -> StaticCatalog:
    """web: two healthy (one warning), one critical; db on IPv6; big: 100 instances."""
    cat = StaticCatalog()
    cat.add_node(DnsNode("n1", "10.0.0.1", "dc1", {"rack": "a", "role": "web"}))
    cat.add_node(DnsNode("n2", "10.0.0.2", "dc1", {}))
    cat.add_node(DnsNode("n3", "10.0.0.3", "dc1", {}))
    cat.add_node(DnsNode("v6", "fd00::6", "dc1", {}))
    cat.set_service(
        "web",
        [
            instance("n1", "10.0.0.1", 80, tags=("primary", "v1"), weight=5),
            instance("n2", "10.0.0.2", 8080, status="warning", tags=("v2",), weight=2),
            instance("n3", "10.0.0.3", 80, status="critical", tags=("primary",)),
        ],
    )
    cat.set_service("db", [instance("v6", "fd00::6", 5432)])
    cat.set_service(
        "big", [instance(f"b{i}", f"10.1.{i // 200}.{i % 200 + 1}") for i in range(100)]
    )
    return cat
