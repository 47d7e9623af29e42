"""Live connections by (source service, destination service), and cutting the denied ones.

Consul's proxies authorize a connection once, at its handshake, and leave
it open after a deny (Consul issue #5277). Here every proxied connection is
registered with its own cancel scope; when the intentions change, the proxy
asks the authorizer once per distinct pair and cancels the scopes of the
pairs now denied. The cost is one decision per pair, not per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .pump import Flow

if TYPE_CHECKING:
    from .revocation import PeerLeaf

__all__ = ["ConnectionTracker", "LiveConnection"]


@dataclass(eq=False, slots=True)
class LiveConnection:
    """One proxied connection: who talks to whom, its bytes and how to end it."""

    source: str
    destination: str
    direction: str  # "inbound" | "outbound"
    peer: str  # "ip:port" of the other proxy (or the local client)
    started_s: float  # trio clock
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    flow: Flow = field(default_factory=Flow)
    cut_reason: str = ""
    denied: bool = False  # cut because its pair is now denied (not idle, not removed)
    # The peer's certificate: a revocation or a pruned root cuts the connection.
    peer_leaf: PeerLeaf | None = None

    def __post_init__(self) -> None:
        self.flow.last_activity_s = self.started_s  # idle from the start, not from time 0

    def cut(self, reason: str) -> None:
        """End the connection now (both sockets are closed by its handler)."""
        if not self.cut_reason:
            self.cut_reason = reason
        self.scope.cancel()


class ConnectionTracker:
    """Every live connection of one proxy, grouped by (source, destination)."""

    def __init__(self) -> None:
        self._by_pair: dict[tuple[str, str], set[LiveConnection]] = {}

    def add(self, conn: LiveConnection) -> None:
        self._by_pair.setdefault((conn.source, conn.destination), set()).add(conn)

    def remove(self, conn: LiveConnection) -> None:
        pair = (conn.source, conn.destination)
        group = self._by_pair.get(pair)
        if group is not None:
            group.discard(conn)
            if not group:
                del self._by_pair[pair]

    def __len__(self) -> int:
        return sum(len(g) for g in self._by_pair.values())

    def __iter__(self) -> Iterator[LiveConnection]:
        for group in list(self._by_pair.values()):
            yield from list(group)

    def counts(self) -> dict[tuple[str, str], int]:
        return {pair: len(group) for pair, group in sorted(self._by_pair.items())}

    def cut_denied(
        self, decide: Callable[[str, str], tuple[bool, str]], direction: str = "inbound"
    ) -> int:
        """Cut the `direction` connections whose pair `decide` now denies; how many were cut."""
        cut = 0
        for (source, destination), group in list(self._by_pair.items()):
            targets = [c for c in group if c.direction == direction]
            if not targets:
                continue
            allowed, reason = decide(source, destination)
            if allowed:
                continue
            for conn in targets:
                if not conn.cut_reason:
                    conn.denied = True
                conn.cut(reason)
                cut += 1
        return cut

    def cut_all(self, reason: str) -> int:
        """Cut every connection (the proxy is being removed)."""
        conns = list(self)
        for conn in conns:
            conn.cut(reason)
        return len(conns)
