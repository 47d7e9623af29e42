"""The blocking wrapper: plain threads and sockets against one real agent, no trio in sight."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.connect import BlockingService, ConnectError, Denied
from meshnode.testutil import AgentProc, Cluster
from tests.connect.conftest import READY_S, free_port, start_agents

_CUT_S = 3.0


def register(agent: AgentProc, tmp_path: Path, definition: dict[str, object]) -> None:
    path = tmp_path / f"{definition['name']}.json"
    path.write_text(json.dumps({"service": definition}))
    agent.cli("services", "register", str(path))


class ThreadedServer:
    """A blocking TLS echo server on `server_ssl_context`, admitting each client."""

    def __init__(self, service: BlockingService, ip: str, port: int) -> None:
        self.service = service
        self.listener = socket.create_server((ip, port))
        self.listener.settimeout(0.2)
        self.refusals: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        context = self.service.server_ssl_context()
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(context, raw), daemon=True).start()

    def _one(self, context: ssl.SSLContext, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                try:
                    self.service.admit(tls)
                except Denied as exc:
                    self.refusals.append(str(exc))
                    return
                while data := tls.recv(65536):
                    tls.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            self.refusals.append(str(exc))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def agent(cluster: Cluster) -> Iterator[AgentProc]:
    [one] = start_agents(cluster, 1)
    yield one


def test_blocking_dial_serve_and_cut_on_deny(agent: AgentProc, tmp_path: Path) -> None:
    port = free_port(agent.ip)
    register(
        agent,
        tmp_path,
        {"name": "db", "address": agent.ip, "port": port, "connect": {"native": True}},
    )
    register(agent, tmp_path, {"name": "web", "connect": {"native": True}})
    with (
        BlockingService("db", http_addr=agent.http, first_leaf_timeout_s=READY_S) as db,
        BlockingService("web", http_addr=agent.http, first_leaf_timeout_s=READY_S) as web,
    ):
        server = ThreadedServer(db, agent.ip, port)
        try:
            sock = web.dial("db", timeout_s=5.0)
            with sock:
                assert sock.version() == "TLSv1.3"
                assert sock.gettimeout() is None  # an ordinary blocking socket
                sock.sendall(b"hello")
                assert sock.recv(5) == b"hello"
                sock.settimeout(_CUT_S + 1)
                agent.cli("intention", "deny", "web", "db")
                denied_at = time.monotonic()
                # A thread blocked in recv wakes with EOF when the deny lands (or finds
                # the socket closed already: the CLI returns after the cut, at times).
                try:
                    got = sock.recv(100)
                except OSError:
                    got = b""
                assert got == b""
                assert time.monotonic() - denied_at < _CUT_S
            with pytest.raises(Denied, match="web => db denied"):
                web.dial("db")
            # The server side refuses a new client too (its own check, not the client's).
            agent.cli("intention", "allow", "web", "db")
            with web.dial("db", timeout_s=5.0) as again:
                again.sendall(b"x")
                assert again.recv(1) == b"x"
        finally:
            server.close()
    with pytest.raises(ConnectError, match="closed"):
        web.dial("db")


def test_an_unregistered_service_fails_to_open_with_the_reason(agent: AgentProc) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectError, match="'ghost' has no certificate from the agent"):
        BlockingService("ghost", http_addr=agent.http, first_leaf_timeout_s=3.0)
    assert time.monotonic() - started < 3.0 + 6.0


def test_no_agent_is_a_clear_error() -> None:
    with pytest.raises(ConnectError, match="cannot reach the agent"):
        BlockingService("web", http_addr=f"127.0.0.1:{free_port()}", first_leaf_timeout_s=1.0)
