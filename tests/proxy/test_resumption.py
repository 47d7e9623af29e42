"""TLS session resumption between proxies: it happens, and it never skips a check."""

from __future__ import annotations

import gc
import socket
import ssl
import time

import pytest
import trio

from meshnode.proxy import PeerError, Proxy, build_contexts
from meshnode.proxy.handshake import server_handshake
from meshnode.proxy.openssl import fast_path_error
from meshnode.proxy.pump import handshake
from meshnode.proxy.testing import StaticAuthorizer, StaticCertSource, TestCA
from meshnode.proxy.tls import TlsContexts, close_tls, offers_resumption, verified_peer
from tests.proxy.conftest import Pair, round_trip, running_pair, ticketed_session, tls_connection

_DEADLINE_S = 10.0


async def _settled(*proxies: Proxy) -> None:
    """Wait until the proxies have accounted every finished connection (and kept its session)."""
    while any(
        listener["Active"]
        for proxy in proxies
        for listener in [proxy.snapshot()["Inbound"] or {"Active": 0}]
        + proxy.snapshot()["Upstreams"]
    ):
        await trio.sleep(0.005)


def _resumed(pair: Pair) -> int:
    assert pair.outbound is not None
    resumed: int = pair.outbound.snapshot()["Upstreams"][0]["Resumed"]
    return resumed


async def _connect(pair: Pair, db: Proxy, port: int) -> None:
    assert pair.outbound is not None
    assert await round_trip(port) == b"ping"
    await _settled(pair.outbound, db)


async def test_the_second_connection_resumes(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        db, port = await pair.serve_db()
        await _connect(pair, db, port)
        assert _resumed(pair) == 0
        await _connect(pair, db, port)
        await _connect(pair, db, port)
        assert _resumed(pair) == 2
        assert db.snapshot()["Inbound"]["Resumed"] == 2
        assert db.snapshot()["Connections"] == []


async def test_new_material_on_either_side_forces_a_full_handshake(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        db_certs = StaticCertSource(ca.material("db"))
        db, port = await pair.serve_db(certs=db_certs)
        await _connect(pair, db, port)
        await _connect(pair, db, port)
        assert _resumed(pair) == 1
        # The server's bundle changes: its new context has new ticket keys,
        # so the client's ticket is refused and the handshake is a full one
        # (with no ticket: the client offered one); the client drops the
        # session, and the next full handshake brings a ticket.
        bundle = ca.root.cert_pem + TestCA("c1.mesh").root.cert_pem
        db_certs.set(ca.material("db", roots_pem=bundle))
        await _connect(pair, db, port)
        await _connect(pair, db, port)
        assert _resumed(pair) == 1
        await _connect(pair, db, port)
        assert _resumed(pair) == 2
        # The client's material changes: it drops its sessions.
        pair.web_certs.set(ca.material("web", roots_pem=bundle))
        await _connect(pair, db, port)
        assert _resumed(pair) == 2
        await _connect(pair, db, port)
        assert _resumed(pair) == 3
        assert db.snapshot()["Inbound"]["Resumed"] == 3
        assert db.snapshot()["Inbound"]["HandshakeFailed"] == 0


async def test_a_denied_intention_refuses_a_resumedtls_connection(ca: TestCA) -> None:
    authorizer = StaticAuthorizer()
    async with running_pair(ca, authorizer=authorizer, deadline_s=_DEADLINE_S) as pair:
        db, port = await pair.serve_db()
        await _connect(pair, db, port)
        authorizer.set("web", "db", False)
        assert await round_trip(port) == b""
        assert pair.outbound is not None
        await _settled(pair.outbound, db)
        inbound = db.snapshot()["Inbound"]
        assert inbound["Resumed"] == 1  # the handshake resumed, the intention still said no
        assert inbound["Denied"] == 1
        authorizer.set("web", "db", True)
        await _connect(pair, db, port)


def test_a_resumed_session_of_an_expired_certificate_is_refused(ca: TestCA) -> None:
    web = build_contexts(ca.material("web"))
    db = build_contexts(ca.material("db"))
    client, server = tls_connection(web.client, db.server, None)
    server.send(b"x")
    assert client.recv(1) == b"x"  # the ticket arrives with the first bytes
    session = client.session
    assert session is not None and session.has_ticket
    cert = client.getpeercert()
    assert cert is not None and isinstance(cert["notAfter"], str)
    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    for end in (client, server):
        close_tls(end)

    client, server = tls_connection(web.client, db.server, session)
    try:
        assert client.session_reused and server.session_reused
        # The certificates are in the resumed session on both sides.
        assert verified_peer(client, "c1.mesh", not_after - 1).service == "db"
        assert verified_peer(server, "c1.mesh", not_after - 1).service == "web"
        with pytest.raises(PeerError, match="expired"):
            verified_peer(client, "c1.mesh", not_after + 1)
        with pytest.raises(PeerError, match="expired"):
            verified_peer(server, "c1.mesh", not_after + 1)
    finally:
        for end in (client, server):
            close_tls(end)


def test_a_client_keeps_one_session_until_half_its_lifetime_or_a_refused_offer(
    ca: TestCA,
) -> None:
    web = build_contexts(ca.material("web"))
    db = build_contexts(ca.material("db"))
    peer = ("127.0.0.1", 1)

    def dial(server_ctx: ssl.SSLContext, now_s: float) -> bool:
        client, server = tls_connection(web.client, server_ctx, web.session_for(peer))
        try:
            server.send(b"x")
            assert client.recv(1) == b"x"
            web.remember(peer, client, now_s)
            return bool(client.session_reused)
        finally:
            for end in (client, server):
                close_tls(end)

    now_s = time.time()
    assert not dial(db.server, now_s)
    first = web.session_for(peer)
    assert first is not None
    assert dial(db.server, now_s)
    assert web.session_for(peer) is first  # not read again: the same ticket next time
    assert dial(db.server, now_s + first.timeout / 2)
    assert web.session_for(peer) is None  # half its lifetime: the next dial gets a new one
    assert not dial(db.server, now_s)
    second = web.session_for(peer)
    assert second is not None and second is not first
    rotated = build_contexts(ca.material("db", generation=2))
    # Another ticket key: the offer is refused, and the full handshake's
    # session replaces it (this server issues tickets whatever the offer).
    assert not dial(rotated.server, now_s)
    third = web.session_for(peer)
    assert third is not None and third not in (first, second)
    assert dial(rotated.server, now_s)


def _client_hello(contexts: TlsContexts, session: ssl.SSLSession | None) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = contexts.client.wrap_bio(incoming, outgoing, session=session)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_server_sees_whether_a_client_hello_offers_a_session(ca: TestCA) -> None:
    web = build_contexts(ca.material("web"))
    db = build_contexts(ca.material("db"))
    session = ticketed_session(web, db)
    fresh, resuming = _client_hello(web, None), _client_hello(web, session)
    assert offers_resumption(fresh) is False
    assert offers_resumption(resuming) is True
    # Cannot tell: the caller issues a ticket as before.
    assert offers_resumption(resuming[:300]) is None
    assert offers_resumption(b"") is None
    assert offers_resumption(b"GET / HTTP/1.1\r\n\r\n") is None
    assert offers_resumption(resuming[:5] + b"\x01" + b"\xff" * 60) is None


async def test_a_resumed_connection_brings_no_new_ticket(ca: TestCA) -> None:
    """Our server issues a ticket to a client that offers none, and only then."""
    db = build_contexts(ca.material("db"))
    web = build_contexts(ca.material("web"))
    peer = ("127.0.0.1", 1)

    async def dial() -> ssl.SSLSocket:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        client = web.client.wrap_socket(
            a, do_handshake_on_connect=False, session=web.session_for(peer)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, client)
            server, _ = await server_handshake(b, db, 5.0, wall_clock=time.time)
        server.send(b"x")
        close_tls(server)
        await trio.lowlevel.wait_readable(client)
        assert client.recv(1) == b"x"  # and any ticket before it
        return client

    with trio.fail_after(_DEADLINE_S):
        first = await dial()
        web.remember(peer, first, time.time())
        first.close()
        offered = web.session_for(peer)
        assert offered is not None and offered.has_ticket
        second = await dial()
        assert second.session_reused
        # Still the session offered: a new ticket would have made a new one
        # (as a plain server context with tickets does, see above).
        assert second.session is not None and second.session.id == offered.id
        second.close()
        db.server.num_tickets = 1  # what server_handshake chooses for a client with none
        control, server = tls_connection(web.client, db.server, offered)
        server.send(b"x")
        assert control.recv(1) == b"x"
        assert control.session_reused and control.session is not None
        assert control.session.id != offered.id
        for end in (control, server):
            close_tls(end)


def test_a_server_session_survives_ragged_ends_only_through_close_tls(ca: TestCA) -> None:
    """Stateful tickets: the session lives in the server's cache, which a plain close empties."""
    web = build_contexts(ca.material("web"))
    db = build_contexts(ca.material("db"))
    session = ticketed_session(web, db)
    db.server.num_tickets = 0  # as server_handshake chooses for a client that offers one
    for _ in range(5):
        client, server = tls_connection(web.client, db.server, session)
        assert client.session_reused and server.session_reused
        for end in (client, server):
            # A ragged end, as the pump's half-close: FINs, no close_notify
            # (SSLSocket.shutdown would drop the SSL object first).
            socket.socket.shutdown(end, socket.SHUT_WR)
            close_tls(end)
    # A plain close of a resumed connection's server side: OpenSSL takes it
    # for a broken connection and forgets the session (when the SSL object
    # is freed, which a reference cycle leaves to the collector).
    client, server = tls_connection(web.client, db.server, session)
    assert server.session_reused
    for end in (client, server):
        end.close()
    del client, server
    gc.collect()
    client, server = tls_connection(web.client, db.server, session)
    assert not client.session_reused
    for end in (client, server):
        close_tls(end)


def test_a_full_server_cache_issues_no_more_tickets(
    ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshnode.proxy.tls._SERVER_SESSIONS_MAX", 3)
    web = build_contexts(ca.material("web"))
    db = build_contexts(ca.material("db"))
    fresh = _client_hello(web, None)
    issued = 0
    for _ in range(5):
        db.server.num_tickets = db.tickets_for(fresh)
        issued += db.server.num_tickets
        client, server = tls_connection(web.client, db.server, None)
        server.send(b"x")
        assert client.recv(1) == b"x"
        for end in (client, server):
            close_tls(end)
    assert issued == 3
    assert db.server.session_stats()["number"] == 3


async def test_every_later_connection_resumes_through_frees_and_collections(ca: TestCA) -> None:
    """Sessions survive their connections' ends on both sides (close_tls), collector or not."""
    with trio.fail_after(_DEADLINE_S * 3):
        async with trio.open_nursery() as nursery:
            pair = Pair(nursery, ca)
            db, port = await pair.serve_db()
            for i in range(40):
                await _connect(pair, db, port)
                if i % 8 == 0:
                    gc.collect()  # frees every SSL object a cycle kept alive
            assert _resumed(pair) == 39
            assert db.snapshot()["Inbound"]["Resumed"] == 39
            nursery.cancel_scope.cancel()
    # The session was offered without CPython's DER copy (see openssl.py).
    assert fast_path_error() == ""
