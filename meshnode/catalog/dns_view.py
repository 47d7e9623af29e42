"""The catalog as the DNS server reads it (`meshnode.dns.DnsCatalog`).

The DNS server caches encoded answers per `index()`, and every catalog
change empties that cache, so these methods run on every cache miss: each
costs O(its answer) through the catalog's indexes, never O(catalog).
Names come lowercased and service names are DNS labels, so matching is
case-insensitive.

Nodes by lowercased name and by address come from a table rebuilt when the
member list changes (`Catalog.members_index`), at most once per change and
only when a node or PTR question needs it: O(members), not O(services).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dns.catalog_view import DnsInstance, DnsNode, InstanceStatus
from ..store.state import NodeInfo
from .catalog import Catalog
from .index import canonical_ip
from .views import InstanceState

__all__ = ["CatalogDnsView"]

_STATUS: dict[str, InstanceStatus] = {"passing": "passing", "warning": "warning"}


def _instance(state: InstanceState, ttls: dict[str, int]) -> DnsInstance:
    record = state.record
    status = _STATUS.get(state.status, "critical")
    definition = record.definition
    weight = definition.weights_warning if status == "warning" else definition.weights_passing
    return DnsInstance(
        node=state.node.name,
        address=record.address or state.node.address,
        port=record.port,
        weight=weight,
        tags=record.tags,
        status=status,
        ttl_s=ttls.get(record.name.lower()),
        service_id=record.service_id,
    )


def _dns_node(node: NodeInfo) -> DnsNode:
    tags = node.meta.get("tags")
    meta = {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}
    return DnsNode(node.name, node.address, node.datacenter, meta)


@dataclass(frozen=True, slots=True)
class _NodeTable:
    """The member list by lowercased name and by canonical IP, for one members index."""

    members_index: int
    by_name: dict[str, NodeInfo]
    by_ip: dict[str, list[NodeInfo]]


def _node_table(catalog: Catalog) -> _NodeTable:
    members_index = catalog.members_index()
    by_name: dict[str, NodeInfo] = {}
    by_ip: dict[str, list[NodeInfo]] = {}
    for node in catalog.nodes():
        by_name.setdefault(node.name.lower(), node)
        ip = canonical_ip(node.address)
        if ip is not None:
            by_ip.setdefault(ip, []).append(node)
    return _NodeTable(members_index, by_name, by_ip)


class CatalogDnsView:
    """`DnsCatalog` over a `Catalog`."""

    def __init__(self, catalog: Catalog, service_ttls: dict[str, int] | None = None) -> None:
        self._catalog = catalog
        self._ttls = dict(service_ttls or {})  # lowercased name -> TTL (dns_config.service_ttl)
        self._table: _NodeTable | None = None

    def _nodes(self) -> _NodeTable:
        table = self._table
        if table is None or table.members_index != self._catalog.members_index():
            table = self._table = _node_table(self._catalog)
        return table

    def _instances(self, name: str, connect: bool) -> list[DnsInstance]:
        return [
            _instance(s, self._ttls)
            for real in self._catalog.service_spellings(name)
            for s in self._catalog.instance_states(real, connect=connect)
        ]

    def service_instances(self, name: str) -> list[DnsInstance]:
        return self._instances(name, connect=False)

    def connect_instances(self, name: str) -> list[DnsInstance]:
        return self._instances(name, connect=True)

    def node(self, name: str) -> DnsNode | None:
        found = self._catalog.node(name)  # the usual case: no capitals, no table needed
        if found is None:
            found = self._nodes().by_name.get(name.lower())
        return None if found is None else _dns_node(found)

    def nodes_at(self, ip: str) -> list[DnsNode]:
        return [_dns_node(n) for n in self._nodes().by_ip.get(ip, ())]

    def instances_at(self, ip: str) -> list[tuple[str, DnsInstance]]:
        nodes = [n.name for n in self._nodes().by_ip.get(ip, ())]
        return [
            (s.record.name, _instance(s, self._ttls))
            for s in self._catalog.instance_states_at(ip, nodes)
        ]

    def index(self) -> int:
        return self._catalog.index()
