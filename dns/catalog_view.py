"""What the DNS server reads: a narrow, read-only view of the catalog.

The DNS layer never imports the catalog. The agent adapts its catalog to
`DnsCatalog`; tests and the benchmark use `StaticCatalog`. Every answer the
server caches is keyed on `DnsCatalog.index()`, so an adapter must raise the
index whenever anything that could change an answer changes (a service, a
check, a node's health or address).

Every method runs on a cache miss, right after any catalog change, so an
adapter answers each in O(its answer): a question about one name or one
address must never walk the whole catalog (issue 5: rebuilding a reverse
map over every service froze an agent for minutes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["DnsCatalog", "DnsInstance", "DnsNode", "InstanceStatus", "StaticCatalog"]

InstanceStatus = Literal["passing", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class DnsInstance:
    """One service instance as DNS sees it; health already aggregated."""

    node: str
    # The instance's address: the service address when set, else its node's.
    address: str
    port: int
    # Consul's Weights.Passing or Weights.Warning, whichever `status` selects.
    weight: int
    tags: tuple[str, ...]
    # Service checks and node health combined: the worst of them.
    status: InstanceStatus
    # Per-service TTL override; None means DnsConfig.service_ttl_s.
    ttl_s: int | None
    service_id: str


@dataclass(frozen=True, slots=True)
class DnsNode:
    """One node (agent) as DNS sees it."""

    name: str
    address: str
    datacenter: str
    meta: dict[str, str] = field(default_factory=dict)


class DnsCatalog(Protocol):
    """The read-only catalog view the DNS server answers from.

    Names are passed lowercased: an adapter matches them case-insensitively,
    as DNS names are.
    """

    def service_instances(self, name: str) -> list[DnsInstance]:
        """Every instance of the service, whatever its status (DNS filters)."""
        ...

    def connect_instances(self, name: str) -> list[DnsInstance]:
        """The service's connect-proxy instances (may be empty)."""
        ...

    def node(self, name: str) -> DnsNode | None: ...

    def nodes_at(self, ip: str) -> list[DnsNode]:
        """The nodes whose address is `ip` (canonical text, as `str(ipaddress)`)."""
        ...

    def instances_at(self, ip: str) -> list[tuple[str, DnsInstance]]:
        """(service name, instance) for every instance whose address is `ip`, any status."""
        ...

    def index(self) -> int:
        """Rises whenever anything that could change an answer changes."""
        ...


def _canonical(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


class StaticCatalog:
    """An in-memory `DnsCatalog` for tests and the benchmark; every change raises the index."""

    def __init__(self) -> None:
        self._services: dict[str, list[DnsInstance]] = {}
        self._connect: dict[str, list[DnsInstance]] = {}
        self._nodes: dict[str, DnsNode] = {}
        self._index = 1

    def set_service(self, name: str, instances: Iterable[DnsInstance]) -> None:
        self._services[name.lower()] = list(instances)
        self._index += 1

    def set_connect(self, name: str, instances: Iterable[DnsInstance]) -> None:
        self._connect[name.lower()] = list(instances)
        self._index += 1

    def remove_service(self, name: str) -> None:
        self._services.pop(name.lower(), None)
        self._connect.pop(name.lower(), None)
        self._index += 1

    def add_node(self, node: DnsNode) -> None:
        self._nodes[node.name.lower()] = node
        self._index += 1

    def service_instances(self, name: str) -> list[DnsInstance]:
        return list(self._services.get(name.lower(), ()))

    def connect_instances(self, name: str) -> list[DnsInstance]:
        return list(self._connect.get(name.lower(), ()))

    def node(self, name: str) -> DnsNode | None:
        return self._nodes.get(name.lower())

    # A fixture's few records: a scan is fine here, unlike in a real adapter.
    def nodes_at(self, ip: str) -> list[DnsNode]:
        return [n for n in self._nodes.values() if _canonical(n.address) == ip]

    def instances_at(self, ip: str) -> list[tuple[str, DnsInstance]]:
        return [
            (name, i)
            for name, instances in self._services.items()
            for i in instances
            if _canonical(i.address) == ip
        ]

    def index(self) -> int:
        return self._index
