"""What the HTTP API needs from the agent, as a Protocol.

The API modules only see this facade, so they are tested against a fake
(`meshnode.api.testing.FakeAgent`) and the agent is free to change inside.
Errors the agent raises for a caller's mistake are the typed ones below; the
endpoints map them to 4xx with their one-line message, anything else is a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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
    "MemberView",
    "ReloadError",
    "UnknownMember",
]

# serf's member status integers, which Consul's /v1/agent/members reports.
STATUS_ALIVE = 1
STATUS_LEAVING = 2
STATUS_LEFT = 3
STATUS_FAILED = 4


class FacadeError(Exception):
    """Base of the errors an agent raises for a caller's mistake (message: one line)."""


class JoinError(FacadeError):
    """No peer could be contacted (unreachable, wrong key, bad address...)."""


class UnknownMember(FacadeError):
    """No member has that name."""


class KeyringError(FacadeError):
    """A keyring change was refused (unknown key, removing the primary key...)."""


class ReloadError(FacadeError):
    """The config files could not be read again; nothing was changed."""


class KvError(FacadeError):
    """A KV write was refused (bad key, store full...)."""


class KvFull(KvError):
    """A KV write would take KV over its budget: the client must delete first (413)."""


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One live KV key as the API shows it (Consul's indexes)."""

    key: str
    value: bytes
    create_index: int
    modify_index: int


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as the API shows it."""

    name: str
    addr: str  # the gossip IP, without port
    port: int  # the gossip port
    tags: dict[str, str] = field(default_factory=dict)
    status: int = STATUS_ALIVE  # serf's integer (1 alive, 2 leaving, 3 left, 4 failed)
    state: str = "alive"  # finer: "alive" | "suspect" | "leaving" | "left" | "failed"


@dataclass(frozen=True, slots=True)
class KeyringReport:
    """The answer of a keyring operation gathered from the cluster (serf's model)."""

    keys: dict[str, int] = field(default_factory=dict)  # base64 key -> nodes holding it
    primary_keys: dict[str, int] = field(default_factory=dict)  # base64 key -> nodes using it
    num_nodes: int = 0  # nodes that were asked
    messages: dict[str, str] = field(default_factory=dict)  # node -> error, when it failed
    datacenter: str = "dc1"


class AgentFacade(Protocol):
    """The agent operations behind /v1/agent/* and /v1/operator/keyring."""

    @property
    def node_name(self) -> str: ...

    def members(self) -> list[MemberView]: ...

    async def join(self, addrs: list[str]) -> int:
        """Contact `addrs`, return how many answered; `JoinError` when none did."""
        ...

    async def leave(self) -> None:
        """Leave gracefully: return once the others have been told."""
        ...

    def force_leave(self, node: str) -> None:
        """Mark a failed member as left; `UnknownMember` when no such member."""
        ...

    def self_info(self) -> dict[str, Any]:
        """Consul's /v1/agent/self: Config, Member, Meta, Stats."""
        ...

    def metrics(self) -> dict[str, Any]:
        """Consul's /v1/agent/metrics: Timestamp, Gauges, Counters, Samples."""
        ...

    async def reload(self) -> None:
        """Read the config files again and apply what can change live; `ReloadError` if bad."""
        ...

    async def keyring_list(self) -> KeyringReport: ...

    async def keyring_install(self, key: str) -> KeyringReport: ...

    async def keyring_use(self, key: str) -> KeyringReport: ...

    async def keyring_remove(self, key: str) -> KeyringReport: ...

    # KV: a last-writer-wins register per key, replicated by gossip (no CAS, no locks).

    def kv_get(self, key: str) -> KvEntry | None: ...

    def kv_list(self, prefix: str) -> list[KvEntry]:
        """Live keys starting with `prefix`, sorted."""
        ...

    def kv_put(self, key: str, value: bytes) -> None:
        """Write `value`; durable (in SQLite) when this returns. `KvError` when refused."""
        ...

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        """Delete `key` (or every key under the prefix `key`); durable on return."""
        ...

    def kv_index(self) -> int:
        """The index of the last KV change (`X-Consul-Index`), at least 1."""
        ...

    async def kv_wait(self, index: int, timeout_s: float) -> int:
        """Block until the KV index moves past `index` or the timeout; the index then."""
        ...
