"""/v1/agent/{join,members,leave,force-leave,self,metrics} with Consul's paths and JSON
(metrics also as Prometheus text, `?format=prometheus`)."""

from __future__ import annotations

from typing import Any

from ..addr import AddressError, parse_host_port
from ..http import HttpError, Request, Response, Router
from .errors import facade_errors
from .facade import AgentFacade, MemberView
from .metrics_format import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from .metrics_format import prometheus_text

__all__ = ["PROTOCOL_VERSION", "member_json", "register_agent_routes"]

# meshnode's gossip protocol version; reported in Consul's Protocol*/Delegate* fields.
PROTOCOL_VERSION = 1


def member_json(member: MemberView) -> dict[str, Any]:
    """Consul's member object, plus meshnode's finer `State` (alive/suspect/...)."""
    return {
        "Name": member.name,
        "Addr": member.addr,
        "Port": member.port,
        "Tags": dict(member.tags),
        "Status": member.status,
        "ProtocolMin": PROTOCOL_VERSION,
        "ProtocolMax": PROTOCOL_VERSION,
        "ProtocolCur": PROTOCOL_VERSION,
        "DelegateMin": PROTOCOL_VERSION,
        "DelegateMax": PROTOCOL_VERSION,
        "DelegateCur": PROTOCOL_VERSION,
        "State": member.state,
    }


def _refuse_wan(request: Request) -> None:
    wan = request.query_value("wan")
    if wan not in (None, "", "0", "false"):
        raise HttpError(400, "meshnode has a single LAN gossip pool; wan is not supported")


def register_agent_routes(router: Router, agent: AgentFacade) -> None:
    """Add the /v1/agent/* membership endpoints backed by `agent`."""

    async def join(request: Request) -> Response:
        _refuse_wan(request)
        address = request.params["addr"]
        try:
            parse_host_port(address, default_port=0, require_ip=False)
        except AddressError as exc:
            raise HttpError(400, f"bad join address: {exc}") from None
        with facade_errors():
            await agent.join([address])
        return Response.empty()

    async def members(request: Request) -> Response:
        if request.has_query("wan") and request.query_value("wan") not in ("0", "false"):
            return Response.json([])  # no WAN pool: Consul's answer for an empty one
        with facade_errors():
            views = agent.members()
        return Response.json([member_json(m) for m in sorted(views, key=lambda m: m.name)])

    async def leave(request: Request) -> Response:
        with facade_errors():
            await agent.leave()
        return Response.empty()

    async def force_leave(request: Request) -> Response:
        with facade_errors():
            agent.force_leave(request.params["node"])
        return Response.empty()

    async def self_info(request: Request) -> Response:
        with facade_errors():
            return Response.json(agent.self_info())

    async def metrics(request: Request) -> Response:
        form = request.query_value("format")
        if form not in (None, "", "prometheus"):
            raise HttpError(
                400, f"unknown metrics format {form[:40]!r}: use format=prometheus or leave it out"
            )
        with facade_errors():
            data = agent.metrics()
        if form == "prometheus":
            body = prometheus_text(data).encode("utf-8")
            return Response(body=body, content_type=PROMETHEUS_CONTENT_TYPE)
        return Response.json(data)

    router.add("PUT", "/v1/agent/join/{addr}", join)
    router.add("GET", "/v1/agent/members", members)
    router.add("PUT", "/v1/agent/leave", leave)
    router.add("PUT", "/v1/agent/force-leave/{node}", force_leave)
    router.add("GET", "/v1/agent/self", self_info)

    async def reload(request: Request) -> Response:
        with facade_errors():
            await agent.reload()
        return Response.json(None)

    router.add("GET", "/v1/agent/metrics", metrics)
    router.add("PUT", "/v1/agent/reload", reload)
