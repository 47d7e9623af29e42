"""One proxy: an inbound mTLS listener for a local service and outbound listeners per upstream.

Rules that live here:

- Inbound: accept, TLS 1.3 handshake within `handshake_timeout_s` against
  the current material (client certificate required, chain to the bundle),
  the client's SPIFFE ID must be a service in our trust domain, then the
  intention (client service -> our service); only then is the local service
  dialled and the two sockets spliced. Every refusal is closed, counted and
  logged with its reason.
- Outbound: one listener per upstream on its local bind address and port.
  Each connection is dialled by the `Dialer` (dial.py, shared with native
  services): an instance, our leaf, the destination's identity, another
  instance on failure.
- Live enforcement: on every intention change the inbound connections are
  re-evaluated per (source, destination) pair and the denied ones are cut.
  A peer leaf that is revoked is refused at the handshake, and live
  connections are cut when their peer leaf is revoked or their peer's root
  leaves the bundle (`revocation.py`, applied in endpoint.py).
- Limits: at most `max_connections` per listener and, on the public port,
  `max_handshakes_per_source` per client address still in its handshake
  (admission.py); idle connections are closed after `idle_timeout_s`, two
  buffers per connection.
- Time and randomness are injected: `rng` seeds the balancers, `clock`
  (monotonic) and `wall_clock` (certificates) are read for every decision.
- Certificates: each new handshake takes the current material's contexts;
  live connections keep the ones they started with.
- Public port: when `listen_port_range` is set and the port is taken by
  another process (two agents on one host both start at 21000), the next
  free port of the range is bound instead (wrapping once round the range);
  `inbound_port` is the port bound and `listening` says whether this proxy's
  own listener is open, which is what its "listening" check must report.
"""

from __future__ import annotations

import errno
import functools
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..ca.spiffe import ServiceID
from ..logs import get_logger, log
from .balancer import BalancerConfig
from .dial import Clock, DialError
from .endpoint import Endpoint
from .limits import Limits
from .pump import (
    SpliceError,
    close_quietly,
    connect,
    listen,
    splice,
)
from .revocation import PeerLeaf, RevocationSource
from .sources import Authorizer, CertSource, DecisionLog, Resolver
from .stats import ListenerStats
from .tls import close_tls
from .tracker import LiveConnection

__all__ = ["Limits", "ListenerStats", "Proxy", "ProxyConfig", "UpstreamConfig"]

_log = get_logger("proxy")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    destination: str
    local_bind_port: int  # 0: any free port (tests), see `Proxy.upstream_ports`
    local_bind_address: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """What one proxy serves; `listen_port` None: outbound only (a dev proxy for a client)."""

    proxy_id: str  # the catalog ID of the proxy, e.g. "web-sidecar-proxy"
    service: str  # the local service it fronts: its leaf is this service's
    listen_address: str = "0.0.0.0"
    listen_port: int | None = None
    # (first, last) inclusive: other ports to try when `listen_port` is in use.
    listen_port_range: tuple[int, int] | None = None
    local_service_address: str = "127.0.0.1"
    local_service_port: int = 0
    upstreams: tuple[UpstreamConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)


@dataclass(slots=True)
class _Upstream:
    config: UpstreamConfig
    stats: ListenerStats = field(default_factory=ListenerStats)
    port: int = 0


class Proxy(Endpoint):
    """An inbound listener and upstream listeners for one local service; `run` serves them."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        certs: CertSource,
        authorizer: Authorizer,
        resolver: Resolver,
        rng: random.Random,
        audit: DecisionLog | None = None,
        clock: Clock = trio.current_time,
        wall_clock: Clock = time.time,
        revocations: RevocationSource | None = None,
    ) -> None:
        """`rng` seeds the upstreams' balancers; `clock` is monotonic, `wall_clock` for certs."""
        self.config = config
        super().__init__(
            certs,
            resolver,
            rng=rng,
            limits=config.limits,
            balancer=config.balancer,
            clock=clock,
            wall_clock=wall_clock,
            logger=_log,
            log_fields={"id": config.proxy_id},
            dial_failure="upstream instance failed",
            revocations=revocations,
        )
        self.authorizer = authorizer
        self.audit = audit
        self.inbound = ListenerStats()
        self.upstreams = [_Upstream(u) for u in config.upstreams]
        for upstream in self.upstreams:  # seeded in the configured order
            self.dialer.balancer(upstream.config.destination)
        self.inbound_port: int | None = None
        self.listening = False  # this proxy's public listener is open and served
        self._scope: trio.CancelScope | None = None

    @property
    def upstream_ports(self) -> dict[str, int]:
        """Destination name -> the bound local port (useful when configured as 0)."""
        return {u.config.destination: u.port for u in self.upstreams}

    # --- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener (errors surface here), report started, serve until cancelled."""
        listeners: list[socket.socket] = []
        try:
            inbound_sock = None
            if self.config.listen_port is not None:
                inbound_sock = self._bind_inbound(self.config.listen_port)
                listeners.append(inbound_sock)
                self.inbound_port = inbound_sock.getsockname()[1]
            upstream_socks = []
            for upstream in self.upstreams:
                u = upstream.config
                sock = listen(u.local_bind_address, u.local_bind_port)
                listeners.append(sock)
                upstream.port = sock.getsockname()[1]
                upstream_socks.append((upstream, sock))
            accept = functools.partial(self._serve_accepted, self.inbound, self._inbound)
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    if inbound_sock is not None:
                        nursery.start_soon(
                            functools.partial(
                                self._serve_listener,
                                inbound_sock,
                                accept,
                                self.inbound,
                                public=True,
                            )
                        )
                    for upstream, sock in upstream_socks:
                        handle = functools.partial(self._outbound, upstream)
                        nursery.start_soon(
                            functools.partial(
                                self._serve_listener, sock, handle, upstream.stats, public=False
                            )
                        )
                    nursery.start_soon(self._enforce)
                    nursery.start_soon(self._enforce_revocations)
                    nursery.start_soon(self._sweep_idle)
                    log(
                        _log,
                        "info",
                        "proxy started",
                        id=self.config.proxy_id,
                        service=self.config.service,
                        inbound=self.inbound_port,
                        upstreams=",".join(f"{d}:{p}" for d, p in self.upstream_ports.items()),
                    )
                    self.listening = inbound_sock is not None
                    task_status.started()
        finally:
            self.listening = False
            for sock in listeners:
                close_quietly(sock)

    def _bind_inbound(self, port: int) -> socket.socket:
        """The public listener on `port`, else on the next free port of `listen_port_range`."""
        first, last = self.config.listen_port_range or (port, port)
        candidates = [port]
        if first <= port <= last:  # the rest of the range, then its start: each port once
            candidates += [*range(port + 1, last + 1), *range(first, port)]
        for n, candidate in enumerate(candidates, 1):
            try:
                sock = listen(self.config.listen_address, candidate)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or n == len(candidates):
                    raise
                continue
            if candidate != port:
                log(
                    _log,
                    "warning",
                    "proxy port in use, moved",
                    id=self.config.proxy_id,
                    taken=port,
                    port=candidate,
                )
            return sock
        raise AssertionError("unreachable: the last candidate returns or raises")

    def stop(self, reason: str = "proxy stopped") -> None:
        """Close the listeners and every live connection (a removed sidecar)."""
        self.tracker.cut_all(reason)
        if self._scope is not None:
            self._scope.cancel()

    async def _enforce(self) -> None:
        generation = self.authorizer.generation
        while True:
            generation = await self.authorizer.wait_changed(generation, 3600.0)
            cut = self.tracker.cut_denied(self.authorizer.allowed, "inbound")
            if cut:
                log(_log, "info", "cut connections denied by a new intention", count=cut)

    async def _sweep_idle(self) -> None:
        idle_timeout_s = self.config.limits.idle_timeout_s
        # A connection lives at most a quarter of the timeout past it.
        period_s = max(0.05, idle_timeout_s / 4)
        while True:
            await trio.sleep(period_s)
            now = self._clock()
            for conn in self.tracker:
                if now - conn.flow.last_activity_s >= idle_timeout_s:
                    conn.cut("idle timeout")

    async def _splice(self, a: socket.socket, b: socket.socket, conn: LiveConnection) -> None:
        """Splice a client's socket `a` with `b`, counting on `conn.flow` by our clock."""
        limits = self.config.limits
        await splice(a, b, flow=conn.flow, buffer_bytes=limits.buffer_bytes, clock=self._clock)

    # --- inbound -----------------------------------------------------------------------------

    async def _inbound(
        self, tls: ssl.SSLSocket, source: ServiceID, leaf: PeerLeaf, peer: str
    ) -> None:
        stats = self.inbound
        limits = self.config.limits
        app: socket.socket | None = None
        try:
            allowed, reason = self.authorizer.allowed(source.service, self.config.service)
            if self.audit is not None:
                self.audit.record(
                    "connect",
                    self.config.proxy_id,
                    source.service,
                    self.config.service,
                    allowed,
                    reason,
                    peer,
                )
            if not allowed:
                stats.denied_total += 1
                self._refused(
                    "inbound denied",
                    peer=peer,
                    source=source.service,
                    reason=reason,
                )
                return
            conn = LiveConnection(
                source.service, self.config.service, "inbound", peer, self._clock()
            )
            conn.peer_leaf = leaf
            self.tracker.add(conn)
            try:
                with conn.scope:
                    with trio.move_on_after(limits.connect_timeout_s):
                        try:
                            app = await connect(
                                self.config.local_service_address, self.config.local_service_port
                            )
                        except OSError as exc:
                            self._refused("local service unreachable", error=exc)
                    if app is None:
                        stats.failed_total += 1
                        return
                    await self._splice(tls, app, conn)
            except SpliceError as exc:  # a peer reset: the connection is over
                log(_log, "debug", "inbound connection failed", peer=peer, error=exc)
            finally:
                self.tracker.remove(conn)
                stats.bytes_in_total += conn.flow.bytes_a_to_b
                stats.bytes_out_total += conn.flow.bytes_b_to_a
                if conn.denied and self.audit is not None:
                    self.audit.record(
                        "cut",
                        self.config.proxy_id,
                        source.service,
                        self.config.service,
                        False,
                        conn.cut_reason,
                        peer,
                    )
                self._count_cut(stats, conn)
        finally:
            close_quietly(app)
            close_tls(tls)

    # --- outbound ----------------------------------------------------------------------------

    async def _outbound(
        self, upstream: _Upstream, sock: socket.socket, _handshaken: Callable[[], None]
    ) -> None:
        stats = upstream.stats
        limits = self.config.limits
        destination = upstream.config.destination
        tls: ssl.SSLSocket | None = None
        try:
            try:
                dialled = await self.dialer.dial(destination, limits.upstream_deadline_s)
            except DialError as exc:
                stats.failed_total += 1
                if not exc.failures:  # each failed attempt is logged already
                    self._refused("outbound refused", reason=exc.reason)
                return
            instance, tls = dialled.instance, dialled.tls
            if tls.session_reused:
                stats.resumed_total += 1
            conn = LiveConnection(
                self.config.service,
                destination,
                "outbound",
                f"{instance.address}:{instance.port}",
                self._clock(),
            )
            conn.peer_leaf = self._peer_leaves.of(tls)
            self.tracker.add(conn)
            try:
                with conn.scope:
                    await self._splice(sock, tls, conn)
            except SpliceError as exc:
                log(_log, "debug", "outbound connection failed", error=exc)
            finally:
                self.tracker.remove(conn)
                dialled.finished()
                stats.bytes_in_total += conn.flow.bytes_a_to_b
                stats.bytes_out_total += conn.flow.bytes_b_to_a
                if conn.cut_reason:
                    stats.cut_total += 1
        finally:
            close_tls(tls)
            close_quietly(sock)

    # --- state for `connect ls` ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The proxy's listeners, counters and live connections, as JSON-ready data."""
        now = self._clock() if _in_trio() else 0.0
        live_in = ListenerStats(**{f: getattr(self.inbound, f) for f in _STAT_FIELDS})
        upstream_stats = {
            id(u): ListenerStats(**{f: getattr(u.stats, f) for f in _STAT_FIELDS})
            for u in self.upstreams
        }
        by_destination = {u.config.destination: upstream_stats[id(u)] for u in self.upstreams}
        for conn in self.tracker:
            target = (
                live_in if conn.direction == "inbound" else by_destination.get(conn.destination)
            )
            if target is not None:
                target.bytes_in_total += conn.flow.bytes_a_to_b
                target.bytes_out_total += conn.flow.bytes_b_to_a
        return {
            "ID": self.config.proxy_id,
            "Service": self.config.service,
            "Inbound": None
            if self.config.listen_port is None
            else {
                "Address": self.config.listen_address,
                "Port": self.inbound_port or self.config.listen_port,
                "LocalServiceAddress": self.config.local_service_address,
                "LocalServicePort": self.config.local_service_port,
                **live_in.as_json(),
            },
            "Upstreams": [
                {
                    "DestinationName": u.config.destination,
                    "LocalBindAddress": u.config.local_bind_address,
                    "LocalBindPort": u.port or u.config.local_bind_port,
                    **upstream_stats[id(u)].as_json(),
                    "Instances": self.dialer.balancer(u.config.destination).snapshot(now),
                }
                for u in self.upstreams
            ],
            "Connections": [
                {"Source": s, "Destination": d, "Count": n}
                for (s, d), n in self.tracker.counts().items()
            ],
        }


_STAT_FIELDS = tuple(ListenerStats.__dataclass_fields__)


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
