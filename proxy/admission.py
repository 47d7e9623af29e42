"""The accept loop of a proxy's or native service's listeners, with its two bounds.

Rules that live here:

- At most `max_connections` live connections per listener: at the cap the
  loop stops accepting and the kernel's backlog holds the rest.
- On a public (mTLS) port, at most `max_handshakes_per_source` connections
  per client IP address that have not finished their TLS handshake; one more
  is closed at once and counted (`limited_total`). A flood of idle TCP from
  one address then holds a few slots for `handshake_timeout_s` at most, and
  neither the listener's other slots nor another address's handshake wait
  for it. The handler calls `handshaken()` when its handshake is over (the
  connection then counts only against `max_connections`); returning does too.
- Established connections are not counted per address: one client host may
  legitimately carry many (a connection pool), and it has a certificate.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ..per_client import PerClientLimit, client_address
from .pump import accept, close_quietly
from .stats import ListenerStats

__all__ = ["Handler", "LimitedHook", "serve_listener"]

# (accepted socket, handshaken) -> None; the handler owns and closes the socket.
Handler = Callable[[socket.socket, Callable[[], None]], Awaitable[None]]


class LimitedHook(Protocol):
    """Told of each connection closed over the per-address bound, for the caller's log."""

    def __call__(self, *, peer: str, limit: int) -> None: ...


async def serve_listener(
    listener: socket.socket,
    handler: Handler,
    *,
    stats: ListenerStats,
    max_connections: int,
    max_handshakes_per_source: int | None,
    on_limited: LimitedHook,
) -> None:
    """Accept until cancelled; `max_handshakes_per_source` None: no per-address bound (loopback)."""
    slots = trio.Semaphore(max_connections)
    pending = (
        None if max_handshakes_per_source is None else PerClientLimit(max_handshakes_per_source)
    )
    async with trio.open_nursery() as nursery:
        while True:
            await slots.acquire()
            try:
                sock = await accept(listener)
            except BaseException:
                slots.release()
                raise
            stats.accepted_total += 1
            address = client_address(sock)
            if pending is not None and not pending.admit(address):
                stats.limited_total += 1
                close_quietly(sock)
                slots.release()
                on_limited(peer=address, limit=pending.max_per_client)
                continue
            stats.active += 1
            nursery.start_soon(_one, handler, sock, address, pending, slots, stats)


async def _one(
    handler: Handler,
    sock: socket.socket,
    address: str,
    pending: PerClientLimit | None,
    slots: trio.Semaphore,
    stats: ListenerStats,
) -> None:
    counted = pending is not None

    def handshaken() -> None:
        nonlocal counted
        if counted and pending is not None:
            counted = False
            pending.release(address)

    try:
        await handler(sock, handshaken)
    finally:
        handshaken()
        stats.active -= 1
        slots.release()
