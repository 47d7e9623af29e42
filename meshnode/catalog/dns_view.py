"""The catalog as the DNS server reads it (`meshnode.dns.DnsCatalog`).

The DNS server caches encoded answers per `index()`, so these methods only run
on a cache miss; they may walk the catalog. Names come lowercased and service
names are DNS labels, so matching is case-insensitive.
"""

from __future__ import annotations

from ..dns.catalog_view import DnsInstance, DnsNode, InstanceStatus
from ..store.state import NodeInfo
from .catalog import Catalog
from .views import HealthEntry

__all__ = ["CatalogDnsView"]

_RANK: dict[str, int] = {"passing": 0, "warning": 1, "critical": 2}
_STATUS: tuple[InstanceStatus, ...] = ("passing", "warning", "critical")


def _status(entry: HealthEntry) -> InstanceStatus:
    worst = max((_RANK.get(c.record.status, 2) for c in entry.checks), default=0)
    return _STATUS[worst]


def _instance(entry: HealthEntry, ttls: dict[str, int]) -> DnsInstance:
    record = entry.service.record
    status = _status(entry)
    definition = record.definition
    weight = definition.weights_warning if status == "warning" else definition.weights_passing
    return DnsInstance(
        node=entry.service.node.name,
        address=record.address or entry.service.node.address,
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


class CatalogDnsView:
    """`DnsCatalog` over a `Catalog`."""

    def __init__(self, catalog: Catalog, service_ttls: dict[str, int] | None = None) -> None:
        self._catalog = catalog
        self._ttls = dict(service_ttls or {})  # lowercased name -> TTL (dns_config.service_ttl)

    def _name(self, lowered: str) -> str | None:
        return next((n for n in self._catalog.services() if n.lower() == lowered), None)

    def service_instances(self, name: str) -> list[DnsInstance]:
        real = self._name(name)
        return (
            []
            if real is None
            else [_instance(e, self._ttls) for e in self._catalog.health_service(real)]
        )

    def connect_instances(self, name: str) -> list[DnsInstance]:
        real = self._name(name)
        if real is None:
            return []
        return [_instance(e, self._ttls) for e in self._catalog.health_service(real, connect=True)]

    def service_names(self) -> list[str]:
        return list(self._catalog.services())

    def node(self, name: str) -> DnsNode | None:
        found = next((n for n in self._catalog.nodes() if n.name.lower() == name.lower()), None)
        return None if found is None else _dns_node(found)

    def nodes(self) -> list[DnsNode]:
        return [_dns_node(n) for n in self._catalog.nodes()]

    def index(self) -> int:
        return self._catalog.index()
