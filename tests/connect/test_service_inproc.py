"""Native services in one process: real sockets and TLS 1.3, sources from the shipped fakes.

The agent-backed behaviour (HTTP sources, two agents, rotation) is in
test_native_agents.py; here each rule is shown alone, fast.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl

import pytest
import trio

from meshnode.ca.pem import cert_from_pem
from meshnode.ca.revocation import Revocation, RevocationSet
from meshnode.connect import ConnectError, Denied, MeshStream, ReplicaAuthorizer, Service
from meshnode.proxy import Instance, TlsMaterial
from meshnode.proxy.revocation import RevocationList
from meshnode.proxy.testing import (
    StaticAuthorizer,
    StaticCertSource,
    StaticResolver,
    TestCA,
    exchange,
)
from tests.connect.conftest import echo

HOST = "127.0.0.1"
_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("c1.mesh")


class Mesh:
    """Native services sharing one authorizer and resolver, run in a nursery."""

    def __init__(self, nursery: trio.Nursery, ca: TestCA) -> None:
        self.nursery = nursery
        self.ca = ca
        self.authorizer = StaticAuthorizer()
        self.resolver = StaticResolver()

    async def service(
        self,
        name: str,
        material: TlsMaterial | None = None,
        revocations: RevocationList | None = None,
    ) -> Service:
        service = Service(
            name,
            certs=StaticCertSource(material or self.ca.material(name)),
            decider=ReplicaAuthorizer(self.authorizer),
            resolver=self.resolver,
            rng=random.Random(len(name)),
            revocations=revocations,
        )
        await self.nursery.start(service.run)
        return service

    async def serve(self, service: Service, destination: str = "") -> int:
        port: int = await self.nursery.start(
            lambda task_status: service.serve(echo, port=0, host=HOST, task_status=task_status)
        )
        self.resolver.set(destination or service.name, [Instance(HOST, port)])
        return port

    async def connected(self) -> tuple[Service, Service, MeshStream]:
        """`db` serving the echo, `web`, and a stream from web to db: (db, web, stream)."""
        db, web = await self.service("db"), await self.service("web")
        await self.serve(db)
        return db, web, await web.dial("db")


async def refused(client: Service, destination: str) -> bool:
    """No echo came back: the dial failed, or the server closed before any byte."""
    try:
        stream = await client.dial(destination)
    except ConnectError:
        return True
    try:
        return await exchange(stream, b"x") == b""
    except trio.BrokenResourceError:
        return True
    finally:
        await stream.aclose()


async def test_a_native_client_and_server_exchange_data_and_half_close(ca: TestCA) -> None:
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            _, web, stream = await mesh.connected()
            assert stream.peer_service == "db"
            assert stream.peer_uri == "spiffe://c1.mesh/ns/default/dc/dc1/svc/db"
            assert stream.socket.version() == "TLSv1.3"
            assert await exchange(stream, b"x" * 300_000) == b"x" * 300_000
            await stream.send_eof()  # the echo sees EOF, returns, and closes its side
            assert await stream.receive_some() == b""
            await stream.aclose()
            assert len(web.tracker) == 0
            nursery.cancel_scope.cancel()


async def test_dial_retries_another_instance_and_checks_the_server_identity(ca: TestCA) -> None:
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            web = await mesh.service("web")
            impostor = await mesh.service("cache")  # a valid leaf, for the wrong service
            impostor_port = await mesh.serve(impostor, "db")
            with socket.socket() as closed:
                closed.bind((HOST, 0))
                dead_port = closed.getsockname()[1]
            mesh.resolver.set("db", [Instance(HOST, dead_port), Instance(HOST, impostor_port)])
            with pytest.raises(ConnectError, match="not the destination 'db'"):
                await web.dial("db")
            db = await mesh.service("db")
            db_port = await mesh.serve(db)
            mesh.resolver.set("db", [Instance(HOST, dead_port), Instance(HOST, db_port)])
            for _ in range(5):  # whichever comes first, the dead one is skipped
                stream = await web.dial("db")
                assert await exchange(stream, b"ping") == b"ping"
                await stream.aclose()
            mesh.resolver.set("db", [])
            with pytest.raises(ConnectError, match="no healthy instance of 'db'"):
                await web.dial("db")
            nursery.cancel_scope.cancel()


async def test_a_deny_cuts_live_connections_on_both_sides_and_refuses_new_ones(
    ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshnode.connect")
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            db, web, stream = await mesh.connected()
            assert await exchange(stream, b"hello") == b"hello"
            assert len(db.tracker) == 1 and len(web.tracker) == 1
            mesh.authorizer.set("web", "db", False)
            with pytest.raises(trio.BrokenResourceError, match="cut: web => db denied"):
                while True:  # the cut is at once; each round trip yields to it
                    await exchange(stream, b"more")
            with pytest.raises(Denied, match="web => db denied"):
                await web.dial("db")
            while len(db.tracker):  # whichever side cut first, the server's side is gone
                await trio.sleep(0.01)
            # A client whose own replica still allows it: the server alone cuts it.
            mesh.authorizer.set("web", "db", True)
            lagging = await mesh.service("web")
            lagging.decider = ReplicaAuthorizer(StaticAuthorizer())
            stream = await lagging.dial("db")
            assert await exchange(stream, b"hello") == b"hello"
            cut_before = db.stats.cut_total
            mesh.authorizer.set("web", "db", False)
            assert await stream.receive_some() == b""  # EOF: the server closed it
            while db.stats.active:  # its handler task ends just after the close
                await trio.sleep(0.01)
            assert db.stats.cut_total == cut_before + 1
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert "inbound connection cut" in caplog.text


async def test_the_server_refuses_strangers_with_a_logged_reason(
    ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshnode.connect")
    foreign = TestCA("c1.mesh")  # the same trust domain, another root
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            mesh.authorizer.set("api", "db", False)
            db = await mesh.service("db")
            await mesh.serve(db)
            api = await mesh.service("api")
            with pytest.raises(Denied, match="api => db denied"):
                await api.dial("db")  # refused by the client's own replica first
            stranger = await mesh.service("web", foreign.material("web"))
            assert await refused(stranger, "db")
            # A client with no certificate at all, through plain ssl.
            port = (await mesh.resolver.instances("db"))[0].port
            plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            plain.load_verify_locations(cadata=ca.root.cert_pem)
            plain.check_hostname = False
            raw = await trio.open_tcp_stream(HOST, port)
            tls = trio.SSLStream(raw, plain)
            with pytest.raises(trio.BrokenResourceError):
                await tls.send_all(b"x")
                assert await tls.receive_some() == b""
                await tls.send_all(b"x")
            await raw.aclose()
            # The api leaf is valid: the server's own check must refuse it too.
            api.decider = ReplicaAuthorizer(StaticAuthorizer())  # its replica now says yes
            assert await refused(api, "db")
            nursery.cancel_scope.cancel()
    fields = [(r.getMessage(), str(getattr(r, "meshnode_fields", {}))) for r in caplog.records]
    print(fields)
    assert any(m == "inbound denied" and "'api'" in f for m, f in fields)
    refusals = [f for m, f in fields if m == "inbound handshake refused"]
    assert any("certificate" in f for f in refusals), refusals  # none, or an unknown CA
    assert db.stats.denied_total == 1 and db.stats.handshake_failed_total >= 2


async def test_server_ssl_context_takes_each_new_leaf_and_root(ca: TestCA) -> None:
    """A server the application runs itself keeps one context across a root rotation."""
    rotated = TestCA("c1.mesh")
    both = ca.root.cert_pem + rotated.root.cert_pem
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            certs = StaticCertSource(ca.material("db"))
            decider = ReplicaAuthorizer(mesh.authorizer)
            db = Service(
                "db", certs=certs, decider=decider, resolver=mesh.resolver, rng=random.Random(0)
            )
            context = db.server_ssl_context()
            listener = trio.socket.socket()
            await listener.bind((HOST, 0))
            listener.listen()
            port = listener.getsockname()[1]
            mesh.resolver.set("db", [Instance(HOST, port)])

            async def one_server_connection() -> str:
                sock, _ = await listener.accept()
                stream = trio.SSLStream(trio.SocketStream(sock), context, server_side=True)
                await stream.do_handshake()
                source = await db.authorize(stream.getpeercert())
                await stream.aclose()
                return source.service

            for client_ca, roots in [(ca, ca.root.cert_pem), (rotated, both)]:
                certs.set(client_ca.material("db", roots_pem=both))
                web = await mesh.service("web", client_ca.material("web", roots_pem=roots))
                async with trio.open_nursery() as inner:

                    async def dial_and_close(client: Service = web) -> None:
                        await (await client.dial("db")).aclose()

                    inner.start_soon(dial_and_close)
                    assert await one_server_connection() == "web"
            listener.close()
            nursery.cancel_scope.cancel()


def revoke(revoked: RevocationList, material: TlsMaterial) -> None:
    """Put the leaf of `material` on the list, by serial (as an agent would)."""
    serial = cert_from_pem(material.cert_chain_pem).serial_number
    revoked.replace(RevocationSet([Revocation(serial, b"", 0.0, 0.0, "key leaked", "test")]))


async def test_admit_cuts_a_client_whose_leaf_is_revoked_and_refuses_it_after(
    ca: TestCA,
) -> None:
    """A server the application runs itself (`server_ssl_context` + `admit`) checks the list."""
    revoked = RevocationList()
    web_leaf = ca.material("web")
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            db = await mesh.service("db", revocations=revoked)
            web = await mesh.service("web", web_leaf)
            context = db.server_ssl_context()
            listener = socket.create_server((HOST, 0))
            listener.settimeout(_DEADLINE_S)
            mesh.resolver.set("db", [Instance(HOST, listener.getsockname()[1])])

            def accept_one() -> ssl.SSLSocket:
                raw, _ = listener.accept()
                return context.wrap_socket(raw, server_side=True)

            async def connected() -> tuple[MeshStream, ssl.SSLSocket]:
                accepted: list[ssl.SSLSocket] = []

                async def server_side() -> None:
                    accepted.append(await trio.to_thread.run_sync(accept_one))

                async with trio.open_nursery() as pair:
                    pair.start_soon(server_side)
                    stream = await web.dial("db")
                return stream, accepted[0]

            stream, server_sock = await connected()
            assert (await db.admit(server_sock)).service == "web"
            assert db.tracker.counts() == {("web", "db"): 1}
            revoke(revoked, web_leaf)
            assert await stream.receive_some() == b""  # EOF: db shut the socket down
            assert db.tracker.counts() == {}
            await stream.aclose()

            stream, server_sock = await connected()
            with pytest.raises(Denied, match="is revoked \\(by serial: key leaked\\)"):
                await db.admit(server_sock)
            server_sock.close()
            await stream.aclose()
            listener.close()
            nursery.cancel_scope.cancel()


async def test_a_root_leaving_the_bundle_cuts_the_connections_chained_to_it(ca: TestCA) -> None:
    """A client whose chain ends at a pruned root is cut by a native server; others stay."""
    other = TestCA("c1.mesh")
    both = ca.root.cert_pem + other.root.cert_pem
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            mesh = Mesh(nursery, ca)
            db = await mesh.service("db", ca.material("db", roots_pem=both))
            await mesh.serve(db)
            old = await mesh.service("web", other.material("web", roots_pem=both))
            new = await mesh.service("api", ca.material("api", roots_pem=both))
            to_old, to_new = await old.dial("db"), await new.dial("db")
            for stream in (to_old, to_new):
                assert await exchange(stream, b"hello") == b"hello"
            certs = db.certs
            assert isinstance(certs, StaticCertSource)
            certs.set(ca.material("db", roots_pem=ca.root.cert_pem, generation=2))  # pruned
            assert await to_old.receive_some() == b""  # EOF: db cut the pruned chain
            assert await exchange(to_new, b"still") == b"still"
            while not db.stats.cut_total:  # counted as its handler task ends, just after
                await trio.sleep(0.01)
            assert db.stats.cut_total == 1 and len(db.tracker) == 1
            for stream in (to_old, to_new):
                await stream.aclose()
            nursery.cancel_scope.cancel()
