"""`Service`: one native mesh service inside an application (Consul's "Connect native").

Rules that live here:

- The TLS material, intentions and instances come through three small
  protocols (`CertSource`, `Decider`, `Resolver`); `Service.open` backs them
  with the local agent's HTTP API and blocking queries, so a renewed leaf or
  a rotated root reaches the next handshake with no restart.
- Serving: TLS 1.3, client certificate required and chained to the bundle,
  the client's SPIFFE ID a service of our trust domain, then the intention
  (client -> us). Only then does the handler run. Each refusal is closed and
  logged with its one-line reason.
- Dialling: the healthy connect endpoints of the destination (its native
  instances at their own address, or its sidecars), the server's ID must be
  the destination, another instance on failure (the proxy's `Dialer`).
- Every live connection, served or dialled, is tracked by (source,
  destination); when the intentions change the pairs are decided again and
  the denied connections are cut, as the proxy does.
- Revocations, as the proxy (endpoint.py): a revoked client leaf is refused,
  a server with a revoked leaf is skipped for another instance, and a live
  connection is cut when its peer's leaf is revoked or its root leaves the
  bundle. `Service.open` follows the agent's revocation list.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import ssl
import time
import types
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

import trio

from ..ca.spiffe import ServiceID
from ..client import ClientError, resolve_http_addr, resolve_token
from ..logs import get_logger, log
from ..proxy.balancer import BalancerConfig
from ..proxy.dial import Clock, DialError
from ..proxy.endpoint import Endpoint, peer_name
from ..proxy.limits import Limits
from ..proxy.pump import close_quietly, listen
from ..proxy.revocation import PeerLeaf, RevocationSource
from ..proxy.sources import CertSource, Resolver, TlsMaterial
from ..proxy.stats import ListenerStats
from ..proxy.tls import PeerError, TlsContexts, peer_service, peer_uri
from ..proxy.tracker import LiveConnection
from .agent_sources import AgentHttp, HttpCertSource, HttpError, HttpResolver, HttpRevocations
from .authorize import AgentAuthorizer, Decider
from .stream import MeshStream

__all__ = ["ConnectError", "Denied", "Handler", "Service"]

_log = get_logger("connect")
# Blocking waits are re-armed this often even with no change.
_ENFORCE_WAIT_S = 3600.0

Handler = Callable[[MeshStream], Awaitable[None]]


class ConnectError(Exception):
    """A local failure of the native API: no agent, no certificate, no instance (one line)."""


class Denied(ConnectError):
    """A peer is not allowed: wrong identity, or an intention denies it (the reason is the text)."""


class Service(Endpoint):
    """A native service: its certificate, its intentions, and connections in and out."""

    def __init__(
        self,
        name: str,
        *,
        certs: CertSource,
        decider: Decider,
        resolver: Resolver,
        rng: random.Random,
        limits: Limits | None = None,
        balancer: BalancerConfig | None = None,
        clock: Clock = trio.current_time,
        wall_clock: Clock = time.time,
        revocations: RevocationSource | None = None,
    ) -> None:
        """`rng` seeds the balancers; `clock` is monotonic, `wall_clock` for certificates.

        `revocations`: the cluster's revoked leaves (None: none is refused).
        """
        self.name = name
        self.decider = decider
        super().__init__(
            certs,
            resolver,
            rng=rng,
            limits=limits or Limits(),
            balancer=balancer,
            clock=clock,
            wall_clock=wall_clock,
            logger=_log,
            log_fields={"service": name},
            dial_failure="instance failed",
            revocations=revocations,
        )
        self._streams: dict[LiveConnection, MeshStream] = {}
        self.stats = ListenerStats()  # of the served connections, as a proxy's inbound
        self._stable_server: ssl.SSLContext | None = None
        self._scope: trio.CancelScope | None = None

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        name: str,
        *,
        http_addr: str | None = None,
        token: str | None = None,
        first_leaf_timeout_s: float = 30.0,
        limits: Limits | None = None,
        rng: random.Random | None = None,
    ) -> _Opening:
        """The service `name` over the local agent ($MESHNODE_HTTP_ADDR, else $CONSUL_HTTP_ADDR).

        ``service = await Service.open("web")`` runs its followers as trio
        system tasks until ``await service.aclose()``; ``async with
        Service.open("web") as service:`` scopes them to the block instead.
        The service must be registered on this agent (``"connect": {"native":
        true}``): the agent's CA signs a leaf only for a service of its node.
        `rng` seeds every random choice (a replayable run); by default it is
        seeded from the OS, as the agent's own generators are.
        """
        try:
            host, port = resolve_http_addr(http_addr)
        except ClientError as exc:
            raise ConnectError(str(exc)) from None
        agent = AgentHttp(host, port, resolve_token(token))
        certs = HttpCertSource(agent, name)
        resolver = HttpResolver(agent)
        revocations = HttpRevocations(agent)
        if rng is None:
            rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        service = cls(
            name,
            certs=certs,
            decider=AgentAuthorizer(agent),
            resolver=resolver,
            rng=rng,
            limits=limits,
            revocations=revocations,
        )

        def why() -> str:
            error = certs.last_error
            return f"{name!r} has no certificate from the agent at {host}:{port}" + (
                f": {error}" if error is not None else " (is it registered on this agent?)"
            )

        extra: list[Callable[..., Awaitable[None]]] = [revocations.run, certs.run, resolver.run]
        return _Opening(service, extra, first_leaf_timeout_s, why)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the intentions, cut denied and revoked live connections until cancelled.

        For injected sources: the caller runs its own `CertSource`, `Resolver`
        and `RevocationSource`.  `aclose` stops it too.
        """
        await self._run_with([], task_status=task_status)

    async def _run_with(
        self,
        extra: list[Callable[..., Awaitable[None]]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                for start in [*extra, self.decider.run]:
                    await nursery.start(start)
                nursery.start_soon(self._enforce)
                nursery.start_soon(self._enforce_revocations, self._cut_marked)
                task_status.started()

    async def aclose(self) -> None:
        """Stop following the agent and cut every live connection."""
        self.tracker.cut_all("the native service is closing")
        self._cut_marked()
        if self._scope is not None:
            self._scope.cancel()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- identity ---------------------------------------------------------------------------

    @property
    def material(self) -> TlsMaterial:
        """The current leaf, key and bundle; `ConnectError` before the first leaf."""
        found = self.certs.current()
        if found is None:
            raise ConnectError(f"{self.name!r} has no certificate yet")
        return found

    def _current(self) -> TlsContexts:
        found = self._contexts.current()
        if found is None:
            raise ConnectError(f"{self.name!r} has no certificate yet")
        return found

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server context for any TLS server; each handshake uses the current leaf and roots.

        It requires and verifies a client certificate. The caller must still
        check who the client is: `await authorize(sslsocket.getpeercert())`.
        """
        if self._stable_server is None:
            # A context of its own whose SNI callback (called by OpenSSL for
            # every ClientHello, with or without a server name) swaps in the
            # current generation's context: certificate, key and trust store.
            stable = _clone_server(self._current().server)

            def swap(sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: Any) -> None:
                current = self._contexts.current()
                if current is not None:
                    sslobj.context = current.server

            stable.sni_callback = swap
            self._stable_server = stable
        return self._stable_server

    def client_ssl_context(self, destination: str) -> ssl.SSLContext:
        """The client context for one connection to `destination` (take one per connection).

        The server's chain is verified; its identity is the caller's to check:
        `check_server(sslsocket.getpeercert(), destination)`.
        """
        del destination  # one client context serves every destination; the check differs
        return self._current().client

    def check_server(self, cert: Mapping[str, Any] | None, destination: str) -> ServiceID:
        """The server's verified ID if it is `destination`; `Denied` otherwise.

        Identity only: a mapping carries no public key, so the revocation list
        is not checked here (`dial` checks it and tracks the connection).
        """
        try:
            found = peer_service(peer_uri(cert), self.material.trust_domain)
        except PeerError as exc:
            raise Denied(str(exc)) from None
        if found.service != destination:
            raise Denied(f"server is {found.uri!r}, not the destination {destination!r}")
        return found

    async def authorize(self, cert: Mapping[str, Any] | None) -> ServiceID:
        """The client's verified ID if an intention allows it to reach us; `Denied` otherwise."""
        try:
            source = peer_service(peer_uri(cert), self.material.trust_domain)
        except PeerError as exc:
            raise Denied(str(exc)) from None
        try:
            allowed, reason = await self.decider.authorize(source.uri, source.service, self.name)
        except HttpError as exc:
            raise Denied(f"cannot ask the agent about {source.service!r}: {exc}") from None
        if not allowed:
            raise Denied(f"{source.service} => {self.name} denied: {reason}")
        return source

    async def admit(self, sock: ssl.SSLSocket) -> ServiceID:
        """`authorize` a client of a server the application runs itself, and track it.

        For servers built on `server_ssl_context`: the connection is then cut
        like a served one when an intention turns to deny or the client's leaf
        is revoked. `Denied` otherwise (a revoked leaf too).
        """
        leaf = self._peer_leaves.of(sock)
        revoked = self.revocations.refusal(leaf.serial, leaf.spki_sha256)
        if revoked is not None:
            raise Denied(revoked)
        source = await self.authorize(sock.getpeercert())
        stream = MeshStream(
            sock, local_service=self.name, peer_uri=source.uri, peer_service=source.service
        )
        self._track(stream, source.service, self.name, "inbound", peer_name(sock), leaf)
        return source

    # --- serving ----------------------------------------------------------------------------

    async def serve(
        self,
        handler: Handler,
        *,
        port: int,
        host: str = "0.0.0.0",
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept mTLS connections on host:port and run `handler` for each allowed one.

        Started with ``await nursery.start(service.serve, handler, port=0)``,
        it reports the bound port. The handler's stream is closed when it returns.
        """
        listener = listen(host, port)
        try:
            bound: int = listener.getsockname()[1]
            log(_log, "info", "native service listening", service=self.name, port=bound)
            task_status.started(bound)
            serve_one = functools.partial(self._serve_one, handler)
            await self._serve_listener(
                listener,
                functools.partial(self._serve_accepted, self.stats, serve_one),
                self.stats,
                public=True,
            )
        finally:
            close_quietly(listener)

    async def _serve_one(
        self, handler: Handler, tls: ssl.SSLSocket, source: ServiceID, leaf: PeerLeaf, peer: str
    ) -> None:
        stats = self.stats
        stream = MeshStream(
            tls, local_service=self.name, peer_uri=source.uri, peer_service=source.service
        )
        try:
            try:
                allowed, reason = await self.decider.authorize(
                    source.uri, source.service, self.name
                )
            except HttpError as exc:
                allowed, reason = False, f"cannot ask the agent: {exc}"
            if not allowed:
                stats.denied_total += 1
                self._refused("inbound denied", peer=peer, source=source.service, reason=reason)
                return
            conn = self._track(stream, source.service, self.name, "inbound", peer, leaf)
            try:
                with conn.scope:
                    await handler(stream)
            except trio.BrokenResourceError as exc:
                log(_log, "debug", "inbound connection broken", peer=peer, error=exc)
            self._count_cut(stats, conn)
        finally:
            await stream.aclose()

    # --- dialling ---------------------------------------------------------------------------

    async def dial(self, destination: str, *, timeout_s: float | None = None) -> MeshStream:
        """A verified mTLS stream to a healthy instance of `destination`; `ConnectError`."""
        deadline_s = self._clock() + (timeout_s or self.limits.upstream_deadline_s)
        try:
            allowed, reason = await self.decider.authorize(
                self.material.spiffe_id, self.name, destination
            )
        except HttpError as exc:
            raise ConnectError(f"cannot ask the agent about {destination!r}: {exc}") from None
        if not allowed:
            raise Denied(f"{self.name} => {destination} denied: {reason}")
        try:
            dialled = await self.dialer.dial(destination, deadline_s - self._clock())
        except DialError as exc:
            raise ConnectError(f"cannot dial {destination!r}: {exc.reason}") from None
        instance, tls = dialled.instance, dialled.tls
        uri = peer_uri(tls.getpeercert())
        stream = MeshStream(tls, local_service=self.name, peer_uri=uri, peer_service=destination)
        address = f"{instance.address}:{instance.port}"
        leaf = self._peer_leaves.of(tls)
        self._track(stream, self.name, destination, "outbound", address, leaf)
        previous = stream.on_close

        def finished() -> None:
            dialled.finished()
            if previous is not None:
                previous()

        stream.on_close = finished
        return stream

    # --- live enforcement -------------------------------------------------------------------

    def _track(
        self,
        stream: MeshStream,
        source: str,
        destination: str,
        direction: str,
        peer: str,
        leaf: PeerLeaf,
    ) -> LiveConnection:
        self._prune()
        conn = LiveConnection(source, destination, direction, peer, self._clock())
        conn.peer_leaf = leaf  # a revocation or a pruned root cuts it
        self.tracker.add(conn)
        self._streams[conn] = stream

        def untrack() -> None:
            self.tracker.remove(conn)
            self._streams.pop(conn, None)

        stream.on_close = untrack
        return conn

    def _prune(self) -> None:
        """Forget streams whose socket the application closed itself (the blocking wrapper)."""
        for stream in list(self._streams.values()):
            if stream.socket.fileno() < 0:
                stream.cut("closed by the application")

    def _cut_marked(self) -> int:
        cut = 0
        for conn, stream in list(self._streams.items()):
            if conn.cut_reason:
                stream.cut(conn.cut_reason)
                cut += 1
        return cut

    async def _enforce(self) -> None:
        generation = self.decider.generation
        while True:
            generation = await self.decider.wait_changed(generation, _ENFORCE_WAIT_S)
            self._prune()
            decisions: dict[tuple[str, str], tuple[bool, str]] = {}
            for conn, stream in list(self._streams.items()):
                pair = (conn.source, conn.destination)
                if pair in decisions:
                    continue
                uri = stream.peer_uri if conn.direction == "inbound" else self.material.spiffe_id
                try:
                    decisions[pair] = await self.decider.authorize(uri, *pair)
                except HttpError as exc:
                    # The agent is away (a restart): live connections stay as they are.
                    log(_log, "warning", "cannot re-check live connections", error=exc)
                    decisions[pair] = (True, "")

            decide = functools.partial(_decided, decisions)
            self.tracker.cut_denied(decide, "inbound")
            self.tracker.cut_denied(decide, "outbound")
            cut = self._cut_marked()
            if cut:
                log(_log, "info", "cut connections denied by a new intention", count=cut)


class _Opening:
    """What `Service.open` returns: awaitable (system tasks) or an async context manager."""

    def __init__(
        self,
        service: Service,
        extra: list[Callable[..., Awaitable[None]]],
        first_leaf_timeout_s: float,
        why: Callable[[], str],
    ) -> None:
        self._service = service
        self._extra = extra
        self._timeout_s = first_leaf_timeout_s
        self._why = why
        self._stack: contextlib.AsyncExitStack | None = None

    async def _first_leaf(self) -> None:
        with trio.move_on_after(self._timeout_s):
            while self._service.certs.current() is None:
                await self._service.certs.wait_changed(0, self._timeout_s)
        if self._service.certs.current() is None:
            raise ConnectError(self._why())

    async def _open_system(self) -> Service:
        started = trio.Event()
        failure: list[Exception] = []

        async def background() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._service._run_with, self._extra)
                    started.set()
            except Exception as exc:  # a system task must not raise: it would crash the run
                failure.append(exc)
                started.set()

        trio.lowlevel.spawn_system_task(background)
        await started.wait()
        if failure:
            raise ConnectError(f"cannot start {self._service.name!r}: {failure[0]}")
        try:
            await self._first_leaf()
        except BaseException:
            await self._service.aclose()
            raise
        return self._service

    def __await__(self) -> Generator[Any, None, Service]:
        return self._open_system().__await__()

    async def __aenter__(self) -> Service:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            await nursery.start(self._service._run_with, self._extra)
            await self._first_leaf()
        except BaseException:
            await self._service.aclose()
            await stack.aclose()
            raise
        self._stack = stack
        return self._service

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool:
        await self._service.aclose()
        assert self._stack is not None
        return bool(await self._stack.__aexit__(exc_type, exc, tb))


def _decided(
    decisions: Mapping[tuple[str, str], tuple[bool, str]], source: str, destination: str
) -> tuple[bool, str]:
    """A decision made for this round; a pair that opened since was allowed at its opening."""
    return decisions.get((source, destination), (True, ""))


def _clone_server(template: ssl.SSLContext) -> ssl.SSLContext:
    """A server context with the template's settings (TLS 1.3, client cert required)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = template.minimum_version
    ctx.maximum_version = template.maximum_version
    ctx.verify_mode = template.verify_mode
    ctx.options = template.options
    ctx.num_tickets = 0
    return ctx
