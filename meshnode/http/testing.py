"""Test helpers for the HTTP server: a tiny trio + h11 client, and a server on a thread.

`TestClient` keeps one connection open (keep-alive) and sends requests in
turn; `fetch` is the one-shot form. `serve_in_thread` runs a router in its
own trio run on a daemon thread, for synchronous clients such as py-consul.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import h11
import trio

from .router import Router
from .server import serve_http

__all__ = ["Reply", "TestClient", "fetch", "serve_in_thread"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class TestClient:
    """One keep-alive connection to host:port."""

    __test__ = False  # not a pytest test class

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host = host
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> TestClient:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Any = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> Reply:
        """Send one request and read the whole reply (JSON-encodes non-bytes bodies)."""
        assert self.stream is not None, "use `async with TestClient(port) as client`"
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        if isinstance(body, str):
            payload = body.encode()
        elif isinstance(body, bytes | bytearray):
            payload = bytes(body)
        else:
            payload = json.dumps(body).encode()
        all_headers = [("Host", f"{self.host}:{self.port}"), *(headers or [])]
        all_headers.append(("Content-Length", str(len(payload))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=all_headers))
        if payload:
            data += self.conn.send(h11.Data(data=payload)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        status = 0
        reply_headers: dict[str, str] = {}
        chunks = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                reply_headers = {n.decode().lower(): v.decode() for n, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, reply_headers, bytes(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection before replying")


async def fetch(
    port: int,
    method: str,
    path: str,
    body: bytes | str | Any = b"",
    headers: list[tuple[str, str]] | None = None,
) -> Reply:
    """One request on a fresh connection."""
    async with TestClient(port) as client:
        return await client.request(method, path, body, headers)


@contextmanager
def serve_in_thread(router: Router) -> Iterator[int]:
    """Serve `router` in a trio run on another thread (for synchronous clients); the port."""
    ready: queue.Queue[tuple[int, trio.lowlevel.TrioToken, trio.CancelScope]] = queue.Queue()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))
            ready.put((port, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    port, token, scope = ready.get(timeout=10)
    try:
        yield port
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)
