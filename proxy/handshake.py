"""The two verified handshakes of the mesh, shared by the proxy and native services (connect/).

Rules that live here:

- Server side: TLS 1.3 within a timeout against the current contexts, then
  the client's URI SAN must be a service ID of our trust domain. A peer that
  closes before any handshake (a TCP health check, a port scan) is
  `ClosedEarly`, not a refusal; everything else is `PeerError` with a
  one-line reason.
- Client side: pick an instance of the destination (`Balancer`), dial it
  with our leaf, require the server's ID to be the destination service; on a
  connect, handshake or identity failure move on to another instance, at most
  `attempts` within the deadline. Each failure is reported to `on_failure`
  (for the log) and to the balancer (for ejection).
- Resumption: the client offers the session it kept for that instance (see
  tls.py); the caller stores the connection's session when it ends
  (`ContextCache.remember`). A failed attempt forgets the instance's
  session, so a bad one cannot fail every later dial. The server issues a
  ticket only when the ClientHello offers no session (`tickets_for`), and
  its connections end with `close_tls`, which keeps their sessions cached.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

import trio
from trio.lowlevel import wait_readable

from ..ca.spiffe import ServiceID
from .balancer import Balancer
from .openssl import offer_session
from .pump import close_quietly, connect, handshake
from .sources import Instance, Resolver
from .tls import ContextCache, PeerError, TlsContexts, verified_peer

__all__ = ["ClosedEarly", "client_handshake_any", "server_handshake"]


# A ClientHello with a ticket is about 1 KB (the ticket holds the whole session).
_PEEK_BYTES = 4096


class ClosedEarly(Exception):
    """The peer closed before a TLS handshake: a TCP check, not an attack (logged at debug)."""


async def server_handshake(
    sock: socket.socket, contexts: TlsContexts, timeout_s: float
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
        source = verified_peer(tls, contexts.material.trust_domain, time.time())
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


# (instance, ejected, error) of one failed attempt, for the caller's log.
FailureHook = Callable[[Instance, bool, BaseException], None]


async def client_handshake_any(
    destination: str,
    *,
    contexts: ContextCache,
    resolver: Resolver,
    balancer: Balancer,
    attempts: int,
    attempt_timeout_s: float,
    deadline_s: float,
    on_failure: FailureHook,
    check: Callable[[ssl.SSLSocket], None] | None = None,
) -> tuple[Instance, ssl.SSLSocket] | str:
    """A verified TLS connection to an instance of `destination`, or why there is none.

    `check` (a revocation check) may refuse a verified server with `PeerError`.
    """
    tried: set[tuple[str, int]] = set()
    errors: list[str] = []
    why = f"no healthy instance of {destination!r}"
    for _ in range(attempts):
        current = contexts.current()
        if current is None:
            return "no certificate yet"
        with trio.move_on_at(deadline_s):
            instances = await resolver.instances(destination)
        now = trio.current_time()
        if now >= deadline_s:
            return f"no instance of {destination!r} reached in time ({why})"
        instance = balancer.pick(instances, now, tried)
        if instance is None:
            return why
        tried.add(instance.key)
        balancer.started(instance)
        raw: socket.socket | None = None
        tls: ssl.SSLSocket | None = None
        error: BaseException | None = None
        connected = False
        try:
            with trio.move_on_at(min(deadline_s, now + attempt_timeout_s)) as timer:
                try:
                    raw = await connect(instance.address, instance.port)
                    tls = current.client.wrap_socket(raw, do_handshake_on_connect=False)
                    session = current.session_for(instance.key)
                    if session is not None:
                        offer_session(tls, session)
                    await handshake(tls)
                    found = verified_peer(tls, current.material.trust_domain, time.time())
                    if found.service != destination:
                        raise PeerError(
                            f"server is {found.uri!r}, not the destination {destination!r}"
                        )
                    if check is not None:
                        check(tls)
                    connected = True
                except (OSError, PeerError) as exc:
                    error = exc
        finally:
            # Also on a cancellation from outside: no socket and no balancer count leaks.
            if not connected:
                current.sessions.pop(instance.key, None)
                close_quietly(tls)
                close_quietly(raw)  # never wrapped (a detached socket closes as a no-op)
                balancer.finished(instance)
        if connected and tls is not None:
            balancer.succeeded(instance)
            return instance, tls
        if timer.cancelled_caught or error is None:
            error = TimeoutError("no connection and handshake in time")
        ejected = balancer.failed(instance, trio.current_time())
        on_failure(instance, ejected, error)
        errors.append(f"{instance.address}:{instance.port}: {error}")
        why = f"{len(errors)} instance(s) of {destination!r} failed: " + "; ".join(errors)
    return why
