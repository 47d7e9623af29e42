"""The agent's HTTP API: Consul-shaped endpoints over an `AgentFacade`."""

from ..http import Router
from .agent_endpoints import member_json, register_agent_routes
from .facade import (
    STATUS_ALIVE,
    STATUS_FAILED,
    STATUS_LEAVING,
    STATUS_LEFT,
    AgentFacade,
    FacadeError,
    JoinError,
    KeyringError,
    KeyringReport,
    KvEntry,
    KvError,
    KvFull,
    MemberView,
    UnknownMember,
)
from .keyring_endpoints import keyring_json, register_keyring_routes
from .kv_endpoints import register_kv_routes

__all__ = [
    "STATUS_ALIVE",
    "STATUS_FAILED",
    "STATUS_LEAVING",
    "STATUS_LEFT",
    "AgentFacade",
    "FacadeError",
    "JoinError",
    "KeyringError",
    "KeyringReport",
    "KvEntry",
    "KvError",
    "KvFull",
    "MemberView",
    "UnknownMember",
    "build_router",
    "keyring_json",
    "member_json",
    "register_agent_routes",
    "register_keyring_routes",
    "register_kv_routes",
]


def build_router(agent: AgentFacade) -> Router:
    """A router with every endpoint of this issue, ready for `serve_http`."""
    router = Router()
    register_agent_routes(router, agent)
    register_keyring_routes(router, agent)
    register_kv_routes(router, agent)
    return router
