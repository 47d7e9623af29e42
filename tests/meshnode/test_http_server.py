"""The HTTP server through real sockets: limits, malformed input, keep-alive, errors."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from meshnode.http import HttpBindError, HttpLimits, Request, Response, Router, serve_http
from meshnode.http.testing import TestClient, fetch

SMALL = HttpLimits(
    max_body_bytes=1024,
    max_header_bytes=2048,
    max_headers=10,
    max_target_bytes=256,
    idle_timeout_s=0.3,
    request_timeout_s=0.3,
    linger_s=0.5,
)


class App:
    """A router with handlers that echo, fail, and wait."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.router = Router()
        self.router.add("POST", "/echo", self.echo)
        self.router.add("GET", "/boom", self.boom)
        self.router.add("GET", "/wait", self.wait)
        self.router.add("GET", "/hello", self.hello)

    async def echo(self, request: Request) -> Response:
        return Response.json({"len": len(request.body), "body": request.json_body()})

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("kaput")

    async def wait(self, request: Request) -> Response:
        await self.release.wait()
        return Response.json("released", headers=[("X-Consul-Index", "42")])

    async def hello(self, request: Request) -> Response:
        return Response.json({"hello": request.query_value("name", "")})


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def port(nursery: trio.Nursery, app: App) -> AsyncIterator[int]:
    bound: int = await nursery.start(
        partial(serve_http, app.router, host="127.0.0.1", port=0, limits=SMALL)
    )
    yield bound


async def raw_exchange(port: int, data: bytes, *, read_s: float = 2.0) -> bytes:
    """Send raw bytes, then read until the server closes (or `read_s` passes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(read_s):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return bytes(received)


async def test_json_route_and_headers(port: int) -> None:
    reply = await fetch(port, "GET", "/hello?name=ann")
    assert reply.status == 200
    assert reply.json() == {"hello": "ann"}
    assert reply.headers["content-type"] == "application/json"


async def test_unknown_path_404_and_wrong_method_405(port: int) -> None:
    assert (await fetch(port, "GET", "/nope")).status == 404
    reply = await fetch(port, "DELETE", "/hello")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET"


async def test_keep_alive_serves_many_requests_on_one_connection(port: int) -> None:
    async with TestClient(port) as client:
        for i in range(5):
            reply = await client.request("POST", "/echo", {"n": i})
            assert reply.json() == {"len": len(json.dumps({"n": i})), "body": {"n": i}}
        assert (await client.request("GET", "/nope")).status == 404
        assert (await client.request("GET", "/hello")).status == 200


async def test_keep_alive_with_stdlib_client(port: int) -> None:
    def three_requests() -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        statuses = []
        try:
            for _ in range(3):
                conn.request("GET", "/hello")
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
                sock = conn.sock
            conn.request("GET", "/hello")
            conn.getresponse().read()
            assert conn.sock is sock, "the connection was not kept alive"
        finally:
            conn.close()
        return statuses

    assert await trio.to_thread.run_sync(three_requests) == [200, 200, 200]


async def test_body_over_limit_declared_is_413(port: int) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    reply = await raw_exchange(port, head)
    assert reply.startswith(b"HTTP/1.1 413 ")


async def test_body_over_limit_chunked_is_413(port: int) -> None:
    chunk = b"x" * 800
    data = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"320\r\n"
        + chunk
        + b"\r\n"
        + b"320\r\n"
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    assert (await raw_exchange(port, data)).startswith(b"HTTP/1.1 413 ")


async def test_stdlib_client_sees_413_for_a_big_body(port: int) -> None:
    def post_big() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", "/echo", body=b"x" * 200_000)
            return conn.getresponse().status
        finally:
            conn.close()

    assert await trio.to_thread.run_sync(post_big) == 413


async def test_bad_json_body_is_400(port: int) -> None:
    reply = await fetch(port, "POST", "/echo", b"{not json")
    assert reply.status == 400
    assert "not valid JSON" in reply.json()["error"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\x13garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\r\n\r\n\r\n",
    ],
)
async def test_garbage_gets_400_and_server_keeps_serving(port: int, garbage: bytes) -> None:
    reply = await raw_exchange(port, garbage)
    assert reply.startswith(b"HTTP/1.1 4"), reply[:60]
    assert (await fetch(port, "GET", "/hello")).status == 200


async def test_half_request_then_close_is_harmless(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    await stream.aclose()
    assert (await fetch(port, "GET", "/hello")).status == 200


async def test_header_limits(port: int) -> None:
    too_long_target = b"GET /hello?" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await raw_exchange(port, too_long_target)).startswith(b"HTTP/1.1 414 ")
    many = b"".join(b"X-%d: y\r\n" % i for i in range(20))
    too_many = b"GET /hello HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
    assert (await raw_exchange(port, too_many)).startswith(b"HTTP/1.1 431 ")
    huge = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    assert (await raw_exchange(port, huge)).startswith(b"HTTP/1.1 431 ")


async def test_handler_exception_is_500_and_logged(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("meshnode")
    logger.addHandler(caplog.handler)
    try:
        reply = await fetch(port, "GET", "/boom")
    finally:
        logger.removeHandler(caplog.handler)
    assert reply.status == 500
    assert reply.json() == {"error": "internal error: RuntimeError: kaput"}
    assert any("handler failed" in r.getMessage() for r in caplog.records)
    assert (await fetch(port, "GET", "/hello")).status == 200


async def test_long_poll_does_not_block_other_requests(port: int, app: App) -> None:
    replies: list[int] = []

    async def long_poll() -> None:
        reply = await fetch(port, "GET", "/wait")
        assert reply.headers["x-consul-index"] == "42"
        replies.append(reply.status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_poll)
        await trio.sleep(0.1)
        assert (await fetch(port, "GET", "/hello")).status == 200
        assert replies == []
        app.release.set()
    assert replies == [200]


async def test_idle_connection_is_closed(port: int) -> None:
    async with TestClient(port) as client:
        assert (await client.request("GET", "/hello")).status == 200
        assert client.stream is not None
        with trio.fail_after(2):
            assert await client.stream.receive_some(100) == b""


async def test_slow_request_gets_408(port: int) -> None:
    reply = await raw_exchange(port, b"GET /hello HTTP/1.1\r\nHo")
    assert reply.startswith(b"HTTP/1.1 408 ")


async def test_expect_100_continue(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        with trio.fail_after(2):
            assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"{}")
        with trio.fail_after(2):
            data = await stream.receive_some(1000)
        assert data.startswith(b"HTTP/1.1 200 ")


async def test_connection_limit_queues_extra_clients(nursery: trio.Nursery, app: App) -> None:
    limits = HttpLimits(max_connections=2, idle_timeout_s=5)
    port: int = await nursery.start(
        partial(serve_http, app.router, host="127.0.0.1", port=0, limits=limits)
    )
    first = await trio.open_tcp_stream("127.0.0.1", port)
    second = await trio.open_tcp_stream("127.0.0.1", port)
    await trio.sleep(0.1)  # both accepted: every slot is taken
    with trio.move_on_after(0.3) as waited:
        await fetch(port, "GET", "/hello")
    assert waited.cancelled_caught, "a third connection was served beyond the limit"
    await first.aclose()
    with trio.fail_after(2):
        assert (await fetch(port, "GET", "/hello")).status == 200
    await second.aclose()


async def test_head_has_no_body(port: int) -> None:
    reply = await raw_exchange(port, b"HEAD /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert body == b""


async def test_port_in_use_is_a_bind_error(nursery: trio.Nursery, port: int, app: App) -> None:
    with pytest.raises(HttpBindError, match=f"cannot listen for HTTP on 127.0.0.1:{port}"):
        await nursery.start(partial(serve_http, app.router, host="127.0.0.1", port=port))


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    requests = [
        b"GET /hello?name=a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello?name=b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    reply = await raw_exchange(port, b"".join(requests))
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.index(b'{"hello":"a"}') < reply.index(b'{"hello":"b"}')
