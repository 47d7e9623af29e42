"""One proxy: an inbound mTLS listener for a local service and outbound listeners per upstream.

Rules that live here:

- Inbound: accept, TLS 1.3 handshake within `handshake_timeout_s` against
  the current material (client certificate required, chain to the bundle),
  the client's SPIFFE ID must be a service in our trust domain, then the
  intention (client service -> our service); only then is the local service
  dialled and the two sockets spliced. Every refusal is closed, counted and
  logged with its reason.
- Outbound: one listener per upstream on its local bind address and port.
  Each connection picks an instance (`Balancer`), dials it with our leaf as
  the client certificate and requires the server's ID to be the destination
  service; a connect, handshake or identity failure moves on to another
  instance, at most `upstream_attempts` instances within `upstream_deadline_s`.
- Live enforcement: on every intention change the inbound connections are
  re-evaluated per (source, destination) pair and the denied ones are cut.
  A peer leaf that is revoked is refused at the handshake, and live
  connections are cut when their peer leaf is revoked or their peer's root
  leaves the bundle (`revocation.py`).
- Limits: at most `max_connections` per listener (the listener stops
  accepting at the limit, so the kernel backlog queues the rest), idle
  connections are closed after `idle_timeout_s`, two buffers per connection.
- Certificates: each new handshake takes the current material's contexts;
  live connections keep the ones they started with.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..logs import get_logger, log
from .balancer import Balancer, BalancerConfig
from .handshake import ClosedEarly, client_handshake_any, server_handshake
from .pump import (
    SpliceError,
    accept,
    close_quietly,
    connect,
    listen,
    splice,
)
from .revocation import NO_REVOCATIONS, PeerLeaves, RevocationSource, enforce_revocations
from .sources import Authorizer, CertSource, DecisionLog, Instance, Resolver
from .tls import ContextCache, PeerError, close_tls
from .tracker import ConnectionTracker, LiveConnection

__all__ = ["Limits", "ListenerStats", "Proxy", "ProxyConfig", "UpstreamConfig"]

_log = get_logger("proxy")
# How often a refusal of the same kind is logged per listener; the rest are counted.
_LOG_WINDOW_S = 10.0
_LOG_PER_WINDOW = 20


@dataclass(frozen=True, slots=True)
class Limits:
    # A handshake is a few round trips and ~3 ms of CPU; 10 s only cuts peers
    # that stall on purpose (or hosts far beyond overload).
    handshake_timeout_s: float = 10.0
    # Dialling the local app or a peer proxy: loopback or one LAN hop.
    connect_timeout_s: float = 5.0
    # Per listener; a 64 KiB buffer each way makes 1,024 connections 128 MiB.
    max_connections: int = 1024
    # Envoy's tcp_proxy default idle timeout (1 h): long-lived database
    # connections survive, abandoned ones do not pile up.
    idle_timeout_s: float = 3600.0
    # Per direction and connection; past 64 KiB throughput no longer grows
    # here (bench/proxy_vs_stunnel.py), memory does.
    buffer_bytes: int = 64 * 1024
    # Instances tried per outbound connection, and the time for all tries.
    upstream_attempts: int = 3
    upstream_deadline_s: float = 10.0


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
    local_service_address: str = "127.0.0.1"
    local_service_port: int = 0
    upstreams: tuple[UpstreamConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)


@dataclass(slots=True)
class ListenerStats:
    """Counters of one listener (Prometheus-style totals plus the live count)."""

    accepted_total: int = 0  # TCP connections accepted
    denied_total: int = 0  # refused by identity or intention
    handshake_failed_total: int = 0  # TLS failed or timed out
    # Closed with no TLS bytes: the catalog's TCP check every 10 s, port scans.
    closed_early_total: int = 0
    # TLS sessions resumed (no certificate crypto), a subset of the handshakes.
    resumed_total: int = 0
    failed_total: int = 0  # could not reach the local app or any instance
    cut_total: int = 0  # cut by a deny or the idle timeout
    bytes_in_total: int = 0  # towards the service behind the listener
    bytes_out_total: int = 0  # back to the connecting client
    active: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "Accepted": self.accepted_total,
            "Denied": self.denied_total,
            "HandshakeFailed": self.handshake_failed_total,
            "ClosedEarly": self.closed_early_total,
            "Resumed": self.resumed_total,
            "Failed": self.failed_total,
            "Cut": self.cut_total,
            "BytesIn": self.bytes_in_total,
            "BytesOut": self.bytes_out_total,
            "Active": self.active,
        }


class _LogLimit:
    """At most `_LOG_PER_WINDOW` refusal lines per window; the rest are counted."""

    def __init__(self) -> None:
        self._window_start_s = -_LOG_WINDOW_S
        self._lines = 0
        self._suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start_s >= _LOG_WINDOW_S:
            if self._suppressed:
                log(_log, "info", "refusals not logged", count=self._suppressed)
            self._window_start_s, self._lines, self._suppressed = now, 0, 0
        self._lines += 1
        if self._lines > _LOG_PER_WINDOW:
            self._suppressed += 1
            return False
        return True


@dataclass(slots=True)
class _Upstream:
    config: UpstreamConfig
    balancer: Balancer
    stats: ListenerStats = field(default_factory=ListenerStats)
    port: int = 0


class Proxy:
    """An inbound listener and upstream listeners for one local service; `run` serves them."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        certs: CertSource,
        authorizer: Authorizer,
        resolver: Resolver,
        rng: random.Random | None = None,
        audit: DecisionLog | None = None,
        revocations: RevocationSource | None = None,
    ) -> None:
        self.config = config
        self.revocations = revocations or NO_REVOCATIONS
        self._peer_leaves = PeerLeaves()
        self.certs = certs
        self.authorizer = authorizer
        self.resolver = resolver
        self.audit = audit
        self._contexts = ContextCache(certs)
        rng = rng or random.Random()
        self.inbound = ListenerStats()
        self.upstreams = [
            _Upstream(u, Balancer(random.Random(rng.random()), config.balancer))
            for u in config.upstreams
        ]
        self.tracker = ConnectionTracker()
        self.inbound_port: int | None = None
        self._log_limit = _LogLimit()
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
                inbound_sock = listen(self.config.listen_address, self.config.listen_port)
                listeners.append(inbound_sock)
                self.inbound_port = inbound_sock.getsockname()[1]
            upstream_socks = []
            for upstream in self.upstreams:
                u = upstream.config
                sock = listen(u.local_bind_address, u.local_bind_port)
                listeners.append(sock)
                upstream.port = sock.getsockname()[1]
                upstream_socks.append((upstream, sock))
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    if inbound_sock is not None:
                        nursery.start_soon(self._serve, inbound_sock, self.inbound, self._inbound)
                    for upstream, sock in upstream_socks:

                        async def handle(s: socket.socket, up: _Upstream = upstream) -> None:
                            await self._outbound(up, s)

                        nursery.start_soon(self._serve, sock, upstream.stats, handle)
                    nursery.start_soon(self._enforce)
                    nursery.start_soon(
                        enforce_revocations,
                        self.tracker,
                        self.revocations,
                        self.certs,
                        self.config.proxy_id,
                    )
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
                    task_status.started()
        finally:
            for sock in listeners:
                close_quietly(sock)

    def stop(self, reason: str = "proxy stopped") -> None:
        """Close the listeners and every live connection (a removed sidecar)."""
        self.tracker.cut_all(reason)
        if self._scope is not None:
            self._scope.cancel()

    async def _serve(
        self,
        listener: socket.socket,
        stats: ListenerStats,
        handler: Callable[[socket.socket], Awaitable[None]],
    ) -> None:
        slots = trio.Semaphore(self.config.limits.max_connections)
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                try:
                    sock = await accept(listener)
                except BaseException:
                    slots.release()
                    raise
                stats.accepted_total += 1
                stats.active += 1

                async def one(s: socket.socket = sock) -> None:
                    try:
                        await handler(s)
                    finally:
                        stats.active -= 1
                        slots.release()

                nursery.start_soon(one)

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
            now = trio.current_time()
            for conn in self.tracker:
                if now - conn.flow.last_activity_s >= idle_timeout_s:
                    conn.cut("idle timeout")

    def _refused(self, what: str, now: float, **fields: Any) -> None:
        if self._log_limit.allow(now):
            log(_log, "info", what, id=self.config.proxy_id, **fields)

    # --- inbound -----------------------------------------------------------------------------

    async def _inbound(self, sock: socket.socket) -> None:
        stats = self.inbound
        limits = self.config.limits
        peer = _peer_name(sock)
        tls: ssl.SSLSocket | None = None
        app: socket.socket | None = None
        try:
            contexts = self._contexts.current()
            if contexts is None:
                stats.failed_total += 1
                self._refused("inbound refused: no certificate yet", trio.current_time(), peer=peer)
                return
            try:
                tls, source = await server_handshake(sock, contexts, limits.handshake_timeout_s)
            except ClosedEarly as exc:
                # Closed before a handshake: a TCP health check, or a port scan.
                stats.closed_early_total += 1
                log(_log, "debug", "inbound closed before the handshake", peer=peer, error=exc)
                return
            except PeerError as exc:
                stats.handshake_failed_total += 1
                self._refused(
                    "inbound handshake refused", trio.current_time(), peer=peer, error=exc
                )
                return
            if tls.session_reused:
                stats.resumed_total += 1
            leaf = self._peer_leaves.of(tls)
            revoked = self.revocations.refusal(leaf.serial, leaf.spki_sha256)
            if revoked is not None:
                stats.denied_total += 1
                self._refused("inbound refused", trio.current_time(), peer=peer, reason=revoked)
                close_quietly(tls)  # no close_notify: OpenSSL drops its session from the cache
                return
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
                    trio.current_time(),
                    peer=peer,
                    source=source.service,
                    reason=reason,
                )
                return
            conn = LiveConnection(
                source.service, self.config.service, "inbound", peer, trio.current_time()
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
                            self._refused(
                                "local service unreachable", trio.current_time(), error=exc
                            )
                    if app is None:
                        stats.failed_total += 1
                        return
                    await splice(tls, app, flow=conn.flow, buffer_bytes=limits.buffer_bytes)
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
                if conn.cut_reason:
                    stats.cut_total += 1
                    self._refused(
                        "inbound connection cut",
                        trio.current_time(),
                        peer=peer,
                        source=source.service,
                        reason=conn.cut_reason,
                    )
        finally:
            close_quietly(app)
            close_tls(tls)
            close_quietly(sock)

    # --- outbound ----------------------------------------------------------------------------

    async def _dial(
        self, upstream: _Upstream, deadline_s: float
    ) -> tuple[Instance, ssl.SSLSocket] | None:
        """A verified TLS connection to an instance of the upstream, or None after the tries."""
        destination = upstream.config.destination
        limits = self.config.limits
        failures = 0

        def failed(instance: Instance, ejected: bool, error: BaseException) -> None:
            nonlocal failures
            failures += 1
            self._refused(
                "upstream instance failed",
                trio.current_time(),
                destination=destination,
                instance=f"{instance.address}:{instance.port}",
                ejected=ejected,
                error=error,
            )

        found = await client_handshake_any(
            destination,
            contexts=self._contexts,
            resolver=self.resolver,
            balancer=upstream.balancer,
            attempts=limits.upstream_attempts,
            attempt_timeout_s=limits.connect_timeout_s + limits.handshake_timeout_s,
            deadline_s=deadline_s,
            on_failure=failed,
            check=self._check_server,
        )
        if isinstance(found, str):
            if not failures:  # each failed attempt is logged already
                self._refused("outbound refused", trio.current_time(), reason=found)
            return None
        return found

    def _check_server(self, tls: ssl.SSLSocket) -> None:
        """Refuse a server whose leaf is revoked (the dial moves on to another instance)."""
        leaf = self._peer_leaves.of(tls)
        revoked = self.revocations.refusal(leaf.serial, leaf.spki_sha256)
        if revoked is not None:
            raise PeerError(revoked)

    async def _outbound(self, upstream: _Upstream, sock: socket.socket) -> None:
        stats = upstream.stats
        limits = self.config.limits
        destination = upstream.config.destination
        tls: ssl.SSLSocket | None = None
        try:
            dialled = await self._dial(upstream, trio.current_time() + limits.upstream_deadline_s)
            if dialled is None:
                stats.failed_total += 1
                return
            instance, tls = dialled
            if tls.session_reused:
                stats.resumed_total += 1
            conn = LiveConnection(
                self.config.service,
                destination,
                "outbound",
                f"{instance.address}:{instance.port}",
                trio.current_time(),
            )
            conn.peer_leaf = self._peer_leaves.of(tls)
            self.tracker.add(conn)
            try:
                with conn.scope:
                    await splice(sock, tls, flow=conn.flow, buffer_bytes=limits.buffer_bytes)
            except SpliceError as exc:
                log(_log, "debug", "outbound connection failed", error=exc)
            finally:
                self.tracker.remove(conn)
                self._contexts.remember(instance.key, tls, time.time())
                upstream.balancer.finished(instance)
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
        now = trio.current_time() if _in_trio() else 0.0
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
                    "Instances": u.balancer.snapshot(now),
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


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
