"""``GET /v1/agent/connect/proxies``: this agent's proxies, their listeners and counters.

meshnode's own endpoint (Consul has none: its proxies are Envoy processes
with their own admin API). It answers a JSON list, one object per proxy,
sorted by ID, in the shape of `meshnode.proxy.Proxy.snapshot`:

``{ID, Service, Inbound: null | {Address, Port, LocalServiceAddress,
LocalServicePort, Accepted, Denied, HandshakeFailed, ClosedEarly, Resumed,
Failed, Cut, BytesIn, BytesOut, Active}, Upstreams: [{DestinationName, LocalBindAddress,
LocalBindPort, <the same counters>, Instances: [{Address, Port, Active,
Total, Failed, Ejected}]}], Connections: [{Source, Destination, Count}]}``

Counters are totals since the proxy started; bytes include live connections.
"""

from __future__ import annotations

from ..http import Request, Response, Router
from ..sidecars.manager import ProxyRegistry

__all__ = ["register_proxy_routes"]


def register_proxy_routes(router: Router, registry: ProxyRegistry) -> None:
    """Add the proxies endpoint backed by `registry` (the agent's `SidecarManager`)."""

    async def proxies(request: Request) -> Response:
        return Response.json(registry.snapshot())

    router.add("GET", "/v1/agent/connect/proxies", proxies)
