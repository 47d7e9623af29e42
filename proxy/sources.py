"""What a proxy needs from the rest of the mesh, as three small protocols.

Rules that live here:

- `CertSource`: the current TLS material of ONE local service (its leaf chain,
  key, trust bundle, SPIFFE ID and trust domain). Every change gets a higher
  `generation`; `wait_changed` blocks until one exists, so a proxy swaps the
  material into new handshakes with no polling and no restart.
- `Authorizer`: `allowed(source, destination)` decided from a local replica
  of the intentions, in microseconds, plus a generation that rises on every
  intention change, so live connections can be re-evaluated.
- `DecisionLog` (optional): each inbound decision and each cut, for an audit.
- `Resolver`: the healthy sidecar instances of a destination. `instances`
  may await (an HTTP resolver fetches a destination it never saw), and is
  answered from a cache after that.

Two implementations of each ship with meshnode: in-process adapters over
the agent's own objects (`meshnode/sidecars/inproc.py`) and HTTP adapters over
the agent's API with blocking queries (`connect/agent_sources.py`);
`testing.py` has settable fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

__all__ = [
    "Authorizer",
    "CertSource",
    "DecisionLog",
    "Instance",
    "Resolver",
    "TlsMaterial",
    "Versioned",
]


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Everything a TLS context of one service is built from, as PEM text."""

    service: str
    spiffe_id: str  # the URI SAN our leaf carries
    trust_domain: str  # peers must carry an ID in this trust domain
    cert_chain_pem: str  # our leaf first, then the intermediates a peer needs
    key_pem: str
    roots_pem: str  # the trust bundle: every root a peer's chain may end at
    generation: int  # rises with every change of any field


@dataclass(frozen=True, slots=True)
class Instance:
    """One healthy sidecar proxy of a destination: where to dial it."""

    address: str
    port: int
    node: str = ""
    service_id: str = ""

    @property
    def key(self) -> tuple[str, int]:
        """What the balancer counts connections and failures by."""
        return (self.address, self.port)


class Versioned:
    """A generation counter with an async wait, shared by the adapters and fakes."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = trio.Event()

    def bump(self) -> int:
        """Note a change: wake every waiter; the new generation."""
        self.generation += 1
        self._event.set()
        self._event = trio.Event()
        return self.generation

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        """Block until the generation is above `since_generation`, or the timeout."""
        with trio.move_on_after(timeout_s):
            while self.generation <= since_generation:
                await self._event.wait()
        return self.generation


class CertSource(Protocol):
    """The TLS material of one local service, kept current by its owner."""

    def current(self) -> TlsMaterial | None:
        """The material for a new handshake; None before the first leaf exists."""
        ...

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        """Block until the material's generation is above `since_generation` (or timeout)."""
        ...


class Authorizer(Protocol):
    """Intentions as the proxy asks them: one decision per connection."""

    @property
    def generation(self) -> int:
        """Rises on every intention change (a blocking-query index will do)."""
        ...

    def allowed(self, source: str, destination: str) -> tuple[bool, str]:
        """May `source` connect to `destination`? (allowed, reason for the log)."""
        ...

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        """Block until an intention changed after `since_generation` (or timeout)."""
        ...


class DecisionLog(Protocol):
    """Where a proxy reports each intention decision it acts on (the agent's audit log)."""

    def record(
        self,
        event: str,
        where: str,
        source: str,
        destination: str,
        allowed: bool,
        reason: str,
        peer: str = "",
    ) -> None:
        """`event` is "connect" (a new inbound connection) or "cut" (a live one, now denied)."""
        ...


class Resolver(Protocol):
    """Healthy sidecar proxies of a destination service."""

    @property
    def generation(self) -> int:
        """Rises when any answer may have changed."""
        ...

    async def instances(self, destination: str) -> Sequence[Instance]:
        """The passing instances of `destination`'s sidecars; [] when none (or unknown)."""
        ...

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        """Block until an answer may have changed after `since_generation` (or timeout)."""
        ...
