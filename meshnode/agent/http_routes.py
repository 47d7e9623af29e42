"""Every HTTP route the agent serves, in one place: the facade's and each subsystem's.

`meshnode.api.build_router` mounts what goes through `AgentFacade` (members,
keyring, KV); the other endpoint groups take the subsystem they serve. The
API token guard reads the token at each request, so a reload applies at once.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ..api import build_router
from ..api.agent_service_endpoints import register_agent_service_routes
from ..api.audit_endpoints import register_audit_routes
from ..api.auth import token_guard
from ..api.ca_endpoints import register_ca_routes
from ..api.catalog_endpoints import register_catalog_routes
from ..api.check_endpoints import register_check_routes
from ..api.cross_site import cross_site_guard
from ..api.event_endpoints import register_event_routes
from ..api.intention_endpoints import register_intention_routes
from ..api.proxy_endpoints import register_proxy_routes
from ..api.status_endpoints import register_status_routes
from ..api.ui_endpoints import register_ui_routes
from ..ca.service import owned_service_names
from ..http.router import Router
from .revocation_wiring import register_revocations

if TYPE_CHECKING:
    from .core import Agent

__all__ = ["agent_router"]


def _signer_addresses(agent: Agent) -> list[str]:
    """The elected signers' gossip "ip:port", best first: /v1/status/peers (and leader)."""
    members = (agent.core.member(name) for name in agent.ca.signers())
    return [str(m.addr) for m in members if m is not None]


def _own_names(agent: Agent) -> list[str]:
    """The names a browser may use for this agent (the DNS rebinding check)."""
    return [agent.config.node_name, socket.gethostname()]


def agent_router(agent: Agent) -> Router:
    """The agent's router, guarded against other sites' pages and by its API token."""
    router = build_router(agent)
    router.add_guard(cross_site_guard(_own_names(agent)))
    router.add_guard(token_guard(lambda: agent.config.api_token))
    register_intention_routes(router, agent.intentions, agent.audit)
    register_audit_routes(router, agent.audit)
    register_event_routes(router, agent.events)
    register_catalog_routes(router, agent.catalog, datacenter=agent.config.datacenter)
    register_agent_service_routes(router, agent.catalog, datacenter=agent.config.datacenter)
    register_check_routes(router, agent.catalog)
    register_status_routes(
        router,
        servers=lambda: _signer_addresses(agent),
        own_address=lambda: str(agent.transport.local_addr),
        datacenter=agent.config.datacenter,
    )
    register_proxy_routes(router, agent.sidecars)
    register_revocations(
        router,
        agent.revocations,
        agent.leaves,
        agent.ca,
        agent.catalog.local_services,
        lambda: agent.config.api_token,
    )
    register_ca_routes(
        router,
        agent.ca,
        agent.leaves,
        agent.catalog.local_services,
        wall_clock=agent.clock.wall_s,
    )
    register_ui_routes(
        router,
        node_name=agent.config.node_name,
        datacenter=agent.config.datacenter,
        current_token=lambda: agent.config.api_token,
        local_leaf_names=lambda: owned_service_names(agent.catalog.local_services()),
        cached_leaf=agent.leaves.cached,
    )
    return router
