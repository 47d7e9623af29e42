"""The server's verified handshake, shared by the proxy and native services (connect/).

Rules that live here:

- Server side: TLS 1.3 within a timeout against the current contexts, then
  the client's URI SAN must be a service ID of our trust domain. A peer that
  closes before any handshake (a TCP health check, a port scan) is
  `ClosedEarly`, not a refusal; everything else is `PeerError` with a
  one-line reason.
- The client side (pick, dial, verify, retry) is dial.py.
- Resumption: the server issues a ticket only when the ClientHello offers
  no session (`tickets_for`), and its connections end with `close_tls`,
  which keeps their sessions cached.
- The certificate check reads the time from the `wall_clock` passed in.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import trio
from trio.lowlevel import wait_readable

from ..ca.spiffe import ServiceID
from .pump import close_quietly, handshake
from .tls import PeerError, TlsContexts, verified_peer

__all__ = ["ClosedEarly", "server_handshake"]


# A ClientHello with a ticket is about 1 KB (the ticket holds the whole session).
_PEEK_BYTES = 4096


class ClosedEarly(Exception):
    """The peer closed before a TLS handshake: a TCP check, not an attack (logged at debug)."""


async def server_handshake(
    sock: socket.socket,
    contexts: TlsContexts,
    timeout_s: float,
    *,
    wall_clock: Callable[[], float],
) -> tuple[ssl.SSLSocket, ServiceID]:
    """The verified TLS socket over `sock` and the client's service ID; `PeerError`/`ClosedEarly`.

    On an exception the TLS socket is closed plainly (not `close_tls`), so
    OpenSSL drops a refused peer's session from the cache; `sock` is the
    caller's to close.
    """
    tls: ssl.SSLSocket | None = None
    try:
        with trio.move_on_after(timeout_s) as timer:
            hello = _peek(sock)  # usually there already: no wait, no epoll round
            if hello is None:
                await wait_readable(sock)
                hello = _peek(sock)
            server = contexts.server
            # Read when the socket is wrapped.
            server.num_tickets = contexts.tickets_for(hello)
            tls = server.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            await handshake(tls)
        if timer.cancelled_caught or tls is None:
            raise PeerError(f"no handshake within {timeout_s:g} s")
        source = verified_peer(tls, contexts.material.trust_domain, wall_clock())
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
        close_quietly(tls)
        raise ClosedEarly(str(exc)) from None
    except OSError as exc:  # ssl.SSLError is an OSError: a bad or missing certificate
        close_quietly(tls)
        raise PeerError(str(exc)) from None
    except BaseException:
        close_quietly(tls)
        raise
    return tls, source


def _peek(sock: socket.socket) -> bytes | None:
    """The first bytes waiting on `sock`, left for the TLS handshake; None: nothing yet."""
    try:
        return sock.recv(_PEEK_BYTES, socket.MSG_PEEK)
    except BlockingIOError:
        return None
