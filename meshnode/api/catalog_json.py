"""Consul's JSON shapes for nodes, services and checks (field names exactly as Consul's).

Catalog entries flatten the service into ``Service*`` fields next to the node;
health entries nest ``Node``, ``Service`` and ``Checks``; agent endpoints show
the local service without indexes. Fields meshnode has no use for
(``TaggedAddresses`` of services, ``Namespace``...) are left out, as Consul
leaves out empty ones.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..catalog.records import ServiceRecord, encode_service
from ..catalog.views import CheckView, HealthEntry, ServiceView
from ..durations import format_duration
from ..store.state import NodeInfo

__all__ = [
    "agent_service_json",
    "catalog_service_json",
    "check_json",
    "health_entry_json",
    "node_json",
    "node_service_json",
    "service_json",
]

Json = dict[str, Any]
_PROBED = ("tcp", "http")  # the check types with a timeout (not ttl, not maintenance)


def node_json(node: NodeInfo, index: int) -> Json:
    tags = node.meta.get("tags")
    meta = {k: v for k, v in tags.items() if isinstance(v, str)} if isinstance(tags, dict) else {}
    return {
        "ID": node.node_id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": {"lan": node.address, "wan": node.address},
        "Meta": meta,
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def _proxy_json(record: ServiceRecord) -> Json:
    proxy = record.proxy
    if proxy is None:
        return {}
    return {
        "DestinationServiceName": proxy.destination_service_name,
        "DestinationServiceID": proxy.destination_service_id,
        "LocalServiceAddress": proxy.local_service_address,
        "LocalServicePort": proxy.local_service_port,
        "Upstreams": [
            {
                "DestinationType": "service",
                "DestinationName": u.destination_name,
                "LocalBindAddress": u.local_bind_address,
                "LocalBindPort": u.local_bind_port,
            }
            for u in proxy.upstreams
        ],
    }


def _connect_json(record: ServiceRecord) -> Json:
    """Consul's ``Connect`` of a service: ``{"Native": true}`` for a native one, else empty."""
    return {"Native": True} if record.definition.connect_native else {}


def _weights(record: ServiceRecord) -> Json:
    d = record.definition
    return {"Passing": d.weights_passing, "Warning": d.weights_warning}


def service_json(record: ServiceRecord) -> Json:
    """The ``Service`` object of health entries, catalog node services and agent services."""
    return {
        "ID": record.service_id,
        "Service": record.name,
        "Tags": list(record.tags),
        "Address": record.address,
        "Meta": dict(record.meta),
        "Port": record.port,
        "Weights": _weights(record),
        "EnableTagOverride": False,
        "Kind": record.kind,
        "Proxy": _proxy_json(record),
        "Connect": _connect_json(record),
    }


def _indexed(data: Json, view: ServiceView) -> Json:
    return {**data, "CreateIndex": view.create_index, "ModifyIndex": view.modify_index}


def catalog_service_json(view: ServiceView, members_index: int) -> Json:
    """One entry of /v1/catalog/service/<name>: the node's fields, then ``Service*``."""
    node = node_json(view.node, members_index)
    record = view.record
    return {
        "ID": node["ID"],
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": node["Datacenter"],
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceKind": record.kind,
        "ServiceID": record.service_id,
        "ServiceName": record.name,
        "ServiceTags": list(record.tags),
        "ServiceAddress": record.address,
        "ServiceWeights": _weights(record),
        "ServiceMeta": dict(record.meta),
        "ServicePort": record.port,
        "ServiceEnableTagOverride": False,
        "ServiceProxy": _proxy_json(record),
        "ServiceConnect": _connect_json(record),
        "CreateIndex": view.create_index,
        "ModifyIndex": view.modify_index,
    }


def node_service_json(view: ServiceView) -> Json:
    return _indexed(service_json(view.record), view)


def check_json(view: CheckView) -> Json:
    record = view.record
    definition = record.definition
    return {
        "Node": record.node,
        "CheckID": record.check_id,
        "Name": record.name,
        "Status": record.status,
        "Notes": definition.notes,
        "Output": record.output,
        "ServiceID": record.service_id,
        "ServiceName": record.service_name,
        "ServiceTags": list(view.service_tags),
        "Type": "" if view.synthetic else definition.kind,
        "Interval": format_duration(definition.interval_s),
        "Timeout": format_duration(definition.timeout_s)
        if definition.kind in ("tcp", "http")
        else "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": view.create_index,
        "ModifyIndex": view.modify_index,
    }


def health_entry_json(entry: HealthEntry, members_index: int) -> Json:
    return {
        "Node": node_json(entry.service.node, members_index),
        "Service": node_service_json(entry.service),
        "Checks": [check_json(c) for c in entry.checks],
    }


def agent_service_json(record: ServiceRecord, datacenter: str) -> Json:
    """/v1/agent/service(s): the local view, with Consul's ContentHash for change detection."""
    return {
        **service_json(record),
        "Datacenter": datacenter,
        "ContentHash": hashlib.sha256(encode_service(record)).hexdigest()[:16],
    }
