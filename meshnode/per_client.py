"""Live connections per client address: the bound that keeps one client from taking every slot.

Shared by the HTTP API, DNS over TCP and the proxies' public ports. Sans-IO:
the server says when a connection from an address opens (`admit`; False
means over the limit: close it at once) and when it ends (`release`). Only
addresses with a live connection are kept, so the map is bounded by the
server's own connection cap.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["PerClientLimit", "client_address"]


class _HasPeer(Protocol):
    def getpeername(self) -> Any: ...


def client_address(sock: _HasPeer) -> str:
    """The peer's IP address ("?" when the peer is already gone: counted as one client)."""
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return "?"


class PerClientLimit:
    """At most `max_per_client` live connections per client address."""

    def __init__(self, max_per_client: int) -> None:
        if max_per_client < 1:
            raise ValueError(f"max_per_client must be at least 1, not {max_per_client}")
        self.max_per_client = max_per_client
        self._live: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`; False (not counted) when it is over the limit."""
        live = self._live.get(address, 0)
        if live >= self.max_per_client:
            return False
        self._live[address] = live + 1
        return True

    def release(self, address: str) -> None:
        """A connection counted by `admit` is over."""
        live = self._live.get(address, 0) - 1
        if live > 0:
            self._live[address] = live
        else:
            self._live.pop(address, None)

    def live(self, address: str) -> int:
        return self._live.get(address, 0)

    def __len__(self) -> int:
        """How many addresses have a live connection."""
        return len(self._live)
