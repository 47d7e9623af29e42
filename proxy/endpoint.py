"""`Endpoint`: one mesh identity's connections, the base of a `Proxy` and a native `Service`.

Rules that live here, so the proxy and native services (connect/) cannot drift:

- Outbound: one `Dialer` (dial.py) per identity, over the identity's own
  `ContextCache`; each failed attempt is logged as a refusal.
- Inbound: the public accept loop (admission.py) with the per-address
  handshake limit; the verified server handshake (handshake.py) against the
  current contexts, each refusal counted in the listener's stats and logged
  with its reason (a peer that closes before any handshake at debug).
- Revocations (revocation.py): a client whose leaf is revoked is refused
  after its handshake, a server whose leaf is revoked is refused by the
  dialer (which moves to another instance), and `_enforce_revocations`
  cuts the live connections whose peer leaf is revoked or whose root left
  the bundle. A proxy and a native service check the same list the same way.
- Live connections are tracked by (source, destination); a cut one is
  counted and logged with its reason.
- Refusals are logged at most `LogLimit` times per period, so a flood of
  bad clients cannot flood the log.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from ..ca.spiffe import ServiceID
from ..logs import log
from .admission import Handler, serve_listener
from .balancer import BalancerConfig
from .dial import Clock, Dialer
from .handshake import ClosedEarly, server_handshake
from .limits import Limits
from .pump import close_quietly
from .revocation import (
    NO_REVOCATIONS,
    PeerLeaf,
    PeerLeaves,
    RevocationSource,
    enforce_revocations,
)
from .sources import CertSource, Resolver
from .stats import ListenerStats, LogLimit
from .tls import ContextCache, PeerError
from .tracker import ConnectionTracker, LiveConnection

__all__ = ["Accepted", "Endpoint", "peer_name"]

# Serves one verified inbound connection: its TLS socket, the client's ID and leaf,
# "address:port".
Accepted = Callable[[ssl.SSLSocket, ServiceID, PeerLeaf, str], Awaitable[None]]


class Endpoint:
    """Certificates, the dialer, live connections and the refusal log of one local service."""

    def __init__(
        self,
        certs: CertSource,
        resolver: Resolver,
        *,
        rng: random.Random,
        limits: Limits,
        balancer: BalancerConfig | None,
        clock: Clock,
        wall_clock: Clock,
        logger: logging.Logger,
        log_fields: dict[str, Any],
        dial_failure: str,
        revocations: RevocationSource | None = None,
    ) -> None:
        """`log_fields` name us on every refusal; `dial_failure` says a failed attempt."""
        self.certs = certs
        self.resolver = resolver
        self.limits = limits
        self.revocations = revocations or NO_REVOCATIONS
        self.tracker = ConnectionTracker()
        self._peer_leaves = PeerLeaves()
        self._clock = clock
        self._wall_clock = wall_clock
        self._logger = logger
        self._log_fields = log_fields
        self._log_limit = LogLimit()
        self._contexts = ContextCache(certs)
        self.dialer = Dialer(
            self._contexts,
            resolver,
            rng=rng,
            on_failure=functools.partial(self._refused, dial_failure),
            limits=limits,
            balancer=balancer,
            clock=clock,
            wall_clock=wall_clock,
            check=self._check_server,
        )

    def _refused(self, what: str, **fields: Any) -> None:
        if self._log_limit.allow(self._clock()):
            log(self._logger, "info", what, **self._log_fields, **fields)

    async def _serve_listener(
        self, listener: socket.socket, handler: Handler, stats: ListenerStats, *, public: bool
    ) -> None:
        """Serve one listener; `public`: bounded in handshakes per client address."""
        limits = self.limits
        await serve_listener(
            listener,
            handler,
            stats=stats,
            max_connections=limits.max_connections,
            max_handshakes_per_source=limits.max_handshakes_per_source if public else None,
            on_limited=functools.partial(
                self._refused, "inbound refused: too many handshakes from one address"
            ),
        )

    async def _accept(
        self, sock: socket.socket, stats: ListenerStats, peer: str
    ) -> tuple[ssl.SSLSocket, ServiceID, PeerLeaf] | None:
        """The verified TLS socket, the client's ID and leaf; None: refused (counted, logged)."""
        contexts = self._contexts.current()
        if contexts is None:
            stats.failed_total += 1
            self._refused("inbound refused: no certificate yet", peer=peer)
            return None
        try:
            tls, source = await server_handshake(
                sock, contexts, self.limits.handshake_timeout_s, wall_clock=self._wall_clock
            )
        except ClosedEarly as exc:
            # Closed before a handshake: a TCP health check, or a port scan.
            stats.closed_early_total += 1
            log(self._logger, "debug", "inbound closed before the handshake", peer=peer, error=exc)
            return None
        except PeerError as exc:
            stats.handshake_failed_total += 1
            self._refused("inbound handshake refused", peer=peer, error=exc)
            return None
        if tls.session_reused:
            stats.resumed_total += 1
        leaf = self._peer_leaves.of(tls)
        revoked = self.revocations.refusal(leaf.serial, leaf.spki_sha256)
        if revoked is not None:
            stats.denied_total += 1
            self._refused("inbound refused", peer=peer, reason=revoked)
            close_quietly(tls)  # no close_notify: OpenSSL drops its session from the cache
            return None
        return tls, source, leaf

    def _check_server(self, tls: ssl.SSLSocket) -> None:
        """Refuse a server whose leaf is revoked (the dial moves on to another instance)."""
        leaf = self._peer_leaves.of(tls)
        revoked = self.revocations.refusal(leaf.serial, leaf.spki_sha256)
        if revoked is not None:
            raise PeerError(revoked)

    async def _enforce_revocations(self, on_cut: Callable[[], object] | None = None) -> None:
        """Cut live connections whose peer leaf is revoked or whose root left the bundle.

        `on_cut` runs after each round that cut any: a native service closes
        the streams the application holds (their scopes are not its tasks').
        """
        await enforce_revocations(
            self.tracker, self.revocations, self.certs, self._log_fields, on_cut=on_cut
        )

    async def _serve_accepted(
        self,
        stats: ListenerStats,
        serve: Accepted,
        sock: socket.socket,
        handshaken: Callable[[], None],
    ) -> None:
        """A listener's handler: `_accept`, then `serve` the verified connection; `sock` closed.

        `serve` owns the TLS socket (it closes it); a refused one is closed here.
        """
        peer = peer_name(sock)
        try:
            accepted = await self._accept(sock, stats, peer)
            if accepted is not None:
                handshaken()
                await serve(*accepted, peer)
        finally:
            close_quietly(sock)

    def _count_cut(self, stats: ListenerStats, conn: LiveConnection) -> None:
        """Count and log an inbound connection that was cut (by an intention or a revocation)."""
        if conn.cut_reason:
            stats.cut_total += 1
            self._refused(
                "inbound connection cut", peer=conn.peer, source=conn.source, reason=conn.cut_reason
            )


def peer_name(sock: socket.socket) -> str:
    """ "address:port" of the peer, or "?" once the socket is gone (for logs)."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
