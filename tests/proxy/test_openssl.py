"""Offering a session without CPython's copy: it resumes, it is shared safely, it falls back."""

from __future__ import annotations

import gc
import socket
import ssl

import pytest

from meshnode.proxy import build_contexts
from meshnode.proxy import openssl as openssl_module
from meshnode.proxy.openssl import fast_path_error, offer_session
from meshnode.proxy.testing import TestCA
from meshnode.proxy.tls import TlsContexts, close_tls
from tests.proxy.conftest import drive_handshake, ticketed_session


def _pair(
    web: TlsContexts, db: TlsContexts, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    client = web.client.wrap_socket(a, do_handshake_on_connect=False)
    if session is not None:
        offer_session(client, session)
    db.server.num_tickets = 0 if session is not None else 1
    server = db.server.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    drive_handshake(client, server)
    server.send(b"x")
    assert client.recv(1) == b"x"  # the ticket arrives with the first bytes
    return client, server


def test_a_shared_session_resumes_on_concurrent_connections(ca: TestCA) -> None:
    web, db = build_contexts(ca.material("web")), build_contexts(ca.material("db"))
    session = ticketed_session(web, db)
    live = [_pair(web, db, session) for _ in range(3)]  # three at once, one session
    for client, server in live:
        assert client.session_reused and server.session_reused
        assert client.getpeercert() is not None
    for client, server in live:
        for end in (client, server):
            close_tls(end)
    again, server = _pair(web, db, session)
    assert again.session_reused
    for end in (again, server):
        close_tls(end)
    assert fast_path_error() == ""


def test_without_the_direct_path_the_stdlib_setter_still_resumes(
    ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openssl_module._State, "lib", None)
    monkeypatch.setattr(openssl_module._State, "error", "layout not checked")
    web, db = build_contexts(ca.material("web")), build_contexts(ca.material("db"))
    session = ticketed_session(web, db)
    client, server = _pair(web, db, session)
    assert client.session_reused and server.session_reused
    for end in (client, server):
        close_tls(end)
    assert fast_path_error() == "layout not checked"


def test_a_session_of_a_broken_connection_is_not_offered_again(ca: TestCA) -> None:
    """A client freed without close_notify spoils the shared session: a full handshake, no error."""
    web, db = build_contexts(ca.material("web")), build_contexts(ca.material("db"))
    session = ticketed_session(web, db)
    client, server = _pair(web, db, session)
    client.close()  # no SSL_shutdown: OpenSSL takes the connection for a broken one
    del client
    gc.collect()
    fresh, server2 = _pair(web, db, session)
    assert not fresh.session_reused
    assert fresh.getpeercert() is not None  # a full, verified handshake instead
    for end in (server, fresh, server2):
        close_tls(end)
