"""The agent's HTTP API: Consul-shaped endpoints over an `AgentFacade` and the subsystems.

`facade.AgentFacade` is what /v1/agent/*, /v1/operator/keyring and /v1/kv
need from the agent (a Protocol, so tests use `testing.FakeAgent`); the other
`*_endpoints` modules take the subsystem they serve (catalog, intentions,
CA, events, sidecars, audit). `auth` is the API token guard, `bodies` and
`errors` the shared request and error shapes. docs/http-api.md lists every
endpoint.

Must not import the agent's wiring (`meshnode.agent`, except `agent.keys`
for the key format), the CLI, or gossip: the agent mounts these routes, not
the other way round.
"""

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
