"""The fields ``?filter=`` may select on each endpoint: the JSON shapes of catalog_json.

Consul validates selectors against the result type; these are ours, kept
equal to what catalog_json and intention_json build (a test compares them).
"""

from __future__ import annotations

from typing import Any, Final

from ..http import HttpError, Request
from .filter_expr import (
    BOOL,
    INT,
    STR,
    STR_LIST,
    STR_MAP,
    Filter,
    FilterError,
    ListOf,
    Shape,
    parse_filter,
)

__all__ = [
    "AGENT_SERVICE",
    "CATALOG_SERVICE",
    "CHECK",
    "HEALTH_ENTRY",
    "INTENTION",
    "NODE",
    "NODE_SERVICE",
    "filtered",
    "request_filter",
]


def filtered(chosen: Filter | None, items: Any) -> Any:
    """`items` (a list, or a map's values) that `chosen` keeps; a 400 past the regex budget."""
    if chosen is None:
        return items
    try:
        return chosen.apply_map(items) if isinstance(items, dict) else chosen.apply(items)
    except FilterError as exc:
        raise HttpError(400, str(exc)) from None


def request_filter(request: Request, shape: Shape) -> Filter | None:
    """The request's ``?filter=`` parsed against `shape`; None without one; 400 when bad."""
    expression = request.query_value("filter")
    if not expression:
        return None
    try:
        return parse_filter(expression, shape)
    except FilterError as exc:
        raise HttpError(400, str(exc)) from None


_WEIGHTS: Final[Shape] = {"Passing": INT, "Warning": INT}
_PROXY: Final[Shape] = {
    "DestinationServiceName": STR,
    "DestinationServiceID": STR,
    "LocalServiceAddress": STR,
    "LocalServicePort": INT,
    "Upstreams": ListOf(
        {
            "DestinationType": STR,
            "DestinationName": STR,
            "LocalBindAddress": STR,
            "LocalBindPort": INT,
        }
    ),
}
_CONNECT: Final[Shape] = {"Native": BOOL}
_INDEXES: Final[Shape] = {"CreateIndex": INT, "ModifyIndex": INT}

_NODE_FIELDS: Final[Shape] = {
    **dict.fromkeys(("ID", "Node", "Address", "Datacenter"), STR),
    "TaggedAddresses": STR_MAP,
}
NODE: Final[Shape] = {**_NODE_FIELDS, "Meta": STR_MAP, **_INDEXES}

_SERVICE: Final[Shape] = {
    "ID": STR,
    "Service": STR,
    "Tags": STR_LIST,
    "Address": STR,
    "Meta": STR_MAP,
    "Port": INT,
    "Weights": _WEIGHTS,
    "EnableTagOverride": BOOL,
    "Kind": STR,
    "Proxy": _PROXY,
    "Connect": _CONNECT,
}

AGENT_SERVICE: Final[Shape] = {**_SERVICE, "Datacenter": STR, "ContentHash": STR}

CATALOG_SERVICE: Final[Shape] = {
    **_NODE_FIELDS,
    "NodeMeta": STR_MAP,
    "ServiceKind": STR,
    "ServiceID": STR,
    "ServiceName": STR,
    "ServiceTags": STR_LIST,
    "ServiceAddress": STR,
    "ServiceWeights": _WEIGHTS,
    "ServiceMeta": STR_MAP,
    "ServicePort": INT,
    "ServiceEnableTagOverride": BOOL,
    "ServiceProxy": _PROXY,
    "ServiceConnect": _CONNECT,
    **_INDEXES,
}

CHECK: Final[Shape] = {
    "Node": STR,
    "CheckID": STR,
    "Name": STR,
    "Status": STR,
    "Notes": STR,
    "Output": STR,
    "ServiceID": STR,
    "ServiceName": STR,
    "ServiceTags": STR_LIST,
    "Type": STR,
    "Interval": STR,
    "Timeout": STR,
    "ExposedPort": INT,
    "Definition": STR_MAP,
    **_INDEXES,
}

NODE_SERVICE: Final[Shape] = {**_SERVICE, **_INDEXES}

HEALTH_ENTRY: Final[Shape] = {
    "Node": NODE,
    "Service": NODE_SERVICE,
    "Checks": ListOf(CHECK),
}

INTENTION: Final[Shape] = {
    "ID": STR,
    "Description": STR,
    "SourceNS": STR,
    "SourceName": STR,
    "DestinationNS": STR,
    "DestinationName": STR,
    "SourceType": STR,
    "Action": STR,
    "Precedence": INT,
    "Meta": STR_MAP,
    "CreatedAt": STR,
    "UpdatedAt": STR,
    **_INDEXES,
}
