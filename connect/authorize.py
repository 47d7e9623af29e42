"""Intention decisions for native services: the agent's authorize endpoint, cached.

Rules that live here:

- `AgentAuthorizer` asks ``POST /v1/agent/connect/authorize`` once per
  (source service, destination) and caches the answer. It follows
  ``GET /v1/connect/intentions`` with blocking queries: every change empties
  the cache and raises the generation, so live connections are re-evaluated
  and new ones ask again. An answer that raced a change is not cached.
- An agent that cannot be reached raises `HttpError`: a new connection is
  then refused (fail closed), a live one is left alone (an agent restart must
  not cut every connection of the host).
- `ReplicaAuthorizer` adapts a proxy `Authorizer` (a local replica, or the
  settable fake of `meshnode.proxy.testing`) for tests and benchmarks.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from ..proxy.sources import Authorizer, Versioned
from .agent_sources import AgentHttp, HttpError, _follow

__all__ = ["AgentAuthorizer", "Decider", "ReplicaAuthorizer"]

_AUTHORIZE_PATH = "/v1/agent/connect/authorize"
_REASON_MAX_CHARS = 300


class Decider(Protocol):
    """What a native service asks about intentions, with a generation for live re-evaluation."""

    @property
    def generation(self) -> int: ...

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int: ...

    async def authorize(self, client_uri: str, source: str, destination: str) -> tuple[bool, str]:
        """(allowed, reason) for `source` (certificate URI `client_uri`) -> `destination`."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the intentions until cancelled."""
        ...


class AgentAuthorizer:
    """A `Decider` over the local agent's HTTP API."""

    def __init__(self, agent: AgentHttp) -> None:
        self._agent = agent
        self._versions = Versioned()
        self._cache: dict[tuple[str, str], tuple[bool, str]] = {}

    @property
    def generation(self) -> int:
        return self._versions.generation

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)

    async def authorize(self, client_uri: str, source: str, destination: str) -> tuple[bool, str]:
        """The cached decision, or the agent's; `HttpError` when the agent cannot answer."""
        key = (source, destination)
        found = self._cache.get(key)
        if found is not None:
            return found
        generation = self._versions.generation
        body, _ = await self._agent.request(
            "POST", _AUTHORIZE_PATH, {"Target": destination, "ClientCertURI": client_uri}
        )
        if not isinstance(body, dict) or not isinstance(body.get("Authorized"), bool):
            raise HttpError(f"POST {_AUTHORIZE_PATH}: the answer has no boolean Authorized")
        decision = (bool(body["Authorized"]), str(body.get("Reason", ""))[:_REASON_MAX_CHARS])
        if self._versions.generation == generation:
            self._cache[key] = decision
        return decision

    def _changed(self, body: Any) -> None:
        self._cache.clear()
        self._versions.bump()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tried = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _follow, self._agent, "/v1/connect/intentions", self._changed, "intentions", tried
            )
            await tried.wait()
            task_status.started()


class ReplicaAuthorizer:
    """A `Decider` over a proxy `Authorizer`: decisions from a replica, no HTTP."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    @property
    def generation(self) -> int:
        return self._authorizer.generation

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._authorizer.wait_changed(since_generation, timeout_s)

    async def authorize(self, client_uri: str, source: str, destination: str) -> tuple[bool, str]:
        return self._authorizer.allowed(source, destination)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()
