"""Fixtures for the proxy tests: a CA from meshnode.ca, servers and proxies on port 0, TLS pairs."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Sequence

import pytest
import trio

from meshnode.proxy import Instance, Limits, Proxy, ProxyConfig, UpstreamConfig
from meshnode.proxy.testing import (
    StaticAuthorizer,
    StaticCertSource,
    StaticResolver,
    StaticRevocations,
    TestCA,
    echo,
    exchange,
)
from meshnode.proxy.tls import TlsContexts, close_tls

HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA("c1.mesh")


@pytest.fixture(scope="session")
def other_ca() -> TestCA:
    """A second CA with the same trust domain: its leaves must not be accepted."""
    return TestCA("c1.mesh")


def drive_handshake(client: ssl.SSLSocket, server: ssl.SSLSocket) -> None:
    """Drive both non-blocking ends of a socketpair through the handshake, in this thread."""
    pending = [client, server]
    for _ in range(20):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if not pending:
            return
    raise AssertionError("handshake did not finish")


def tls_connection(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    client = client_ctx.wrap_socket(a, do_handshake_on_connect=False, session=session)
    server = server_ctx.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    drive_handshake(client, server)
    return client, server


def ticketed_session(web: TlsContexts, db: TlsContexts) -> ssl.SSLSession:
    """The session of a full handshake of `web` with `db`, ticket included; both ends closed."""
    client, server = tls_connection(web.client, db.server, None)
    server.send(b"x")
    assert client.recv(1) == b"x"  # the ticket arrives with the first bytes
    session = client.session
    assert session is not None and session.has_ticket
    for end in (client, server):
        close_tls(end)
    return session


async def serve(nursery: trio.Nursery, handler: object) -> int:
    """A trio TCP server on 127.0.0.1:0; its port."""
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def hash_then_reply(stream: trio.SocketStream) -> None:
    """Read to EOF, then answer the SHA-256 of what came and a 1 MiB tail, then close."""
    digest = hashlib.sha256()
    try:
        while data := await stream.receive_some(65536):
            digest.update(data)
        await stream.send_all(digest.digest() + bytes(range(256)) * 4096)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def read_all(stream: trio.SocketStream, limit_bytes: int = 1 << 30) -> bytes:
    got = bytearray()
    try:
        while data := await stream.receive_some(65536):
            got += data
            assert len(got) <= limit_bytes
    except trio.BrokenResourceError:
        pass
    return bytes(got)


async def round_trip(port: int, payload: bytes = b"ping") -> bytes:
    """Connect, send, read back as many bytes (or fewer at EOF), close."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        try:
            return await exchange(stream, payload)
        except trio.BrokenResourceError:
            return b""


class Pair:
    """An outbound proxy for `web` and inbound proxies for `db` instances, all in-process.

    `revocations`: one revocation list every proxy of the pair checks.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        ca: TestCA,
        *,
        authorizer: StaticAuthorizer | None = None,
        limits: Limits | None = None,
        revocations: StaticRevocations | None = None,
    ) -> None:
        self.nursery = nursery
        self.ca = ca
        self.authorizer = authorizer or StaticAuthorizer()
        self.resolver = StaticResolver()
        self.limits = limits or Limits()
        self.revocations = revocations
        self.web_certs = StaticCertSource(ca.material("web"))
        self.outbound: Proxy | None = None
        self.inbound: list[Proxy] = []

    async def add_db(
        self, service_port: int, *, certs: StaticCertSource | None = None, service: str = "db"
    ) -> Proxy:
        proxy = Proxy(
            ProxyConfig(
                proxy_id=f"{service}-sidecar-proxy",
                service=service,
                listen_address=HOST,
                listen_port=0,
                local_service_address=HOST,
                local_service_port=service_port,
                limits=self.limits,
            ),
            certs=certs or StaticCertSource(self.ca.material(service)),
            authorizer=self.authorizer,
            resolver=self.resolver,
            rng=random.Random(len(self.inbound)),
            revocations=self.revocations,
        )
        await self.nursery.start(proxy.run)
        self.inbound.append(proxy)
        return proxy

    def route(self, destination: str, proxies: Sequence[Proxy | int]) -> None:
        self.resolver.set(
            destination,
            [Instance(HOST, p if isinstance(p, int) else p.inbound_port or 0) for p in proxies],
        )

    async def start_outbound(self, destinations: Sequence[str] = ("db",)) -> int:
        """Start the web proxy with one upstream per destination; the first upstream's port."""
        self.outbound, port = await self.add_outbound(self.web_certs, "web", destinations)
        return port

    async def add_outbound(
        self, certs: StaticCertSource, service: str = "web", destinations: Sequence[str] = ("db",)
    ) -> tuple[Proxy, int]:
        """Start a client proxy for `service` with one upstream per destination; the first port."""
        proxy = Proxy(
            ProxyConfig(
                proxy_id=f"{service}-sidecar-proxy",
                service=service,
                upstreams=tuple(UpstreamConfig(d, 0) for d in destinations),
                limits=self.limits,
            ),
            certs=certs,
            authorizer=self.authorizer,
            resolver=self.resolver,
            rng=random.Random(0),
            revocations=self.revocations,
        )
        await self.nursery.start(proxy.run)
        return proxy, proxy.upstream_ports[destinations[0]]

    async def route_db(
        self, handler: object = echo, *, certs: StaticCertSource | None = None
    ) -> Proxy:
        """`handler` served behind one `db` proxy, the only instance of "db"; the proxy."""
        db = await self.add_db(await serve(self.nursery, handler), certs=certs)
        self.route("db", [db])
        return db

    async def serve_db(
        self, handler: object = echo, *, certs: StaticCertSource | None = None
    ) -> tuple[Proxy, int]:
        """`route_db`, then the web proxy: (db's proxy, web's port)."""
        db = await self.route_db(handler, certs=certs)
        return db, await self.start_outbound()


@contextlib.asynccontextmanager
async def running_pair(
    ca: TestCA,
    *,
    deadline_s: float,
    authorizer: StaticAuthorizer | None = None,
    limits: Limits | None = None,
    revocations: StaticRevocations | None = None,
) -> AsyncIterator[Pair]:
    """A `Pair` in a nursery of its own, the whole block bounded by `deadline_s`.

    Its proxies and servers are cancelled when the block ends.
    """
    with trio.fail_after(deadline_s):
        async with trio.open_nursery() as nursery:
            yield Pair(nursery, ca, authorizer=authorizer, limits=limits, revocations=revocations)
            nursery.cancel_scope.cancel()
