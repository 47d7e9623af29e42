"""The HTTP API under a flood of idle connections from one client address (security finding 7)."""

from __future__ import annotations

import http.client
import json
import time
from functools import partial
from pathlib import Path

import consul
import pytest
import trio

from meshnode.config import ConfigError, load_config
from meshnode.http import HttpLimits, Request, Response, Router, serve_http
from meshnode.testutil import Cluster
from tests.integration.conftest import cluster
from tests.limits.conftest import (
    CLIENT_SOURCE,
    FLOOD_SOURCE,
    HOST,
    SERVED_WITHIN_S,
    SETTLE_S,
    idle_flood,
)

__all__ = ["cluster"]  # the real-agent fixture

# The finding's count: more than the old global cap of 512 connections.
_FLOOD = 600


async def _leader(_request: Request) -> Response:
    return Response.json("127.0.0.1:8301")


async def _start(nursery: trio.Nursery, limits: HttpLimits | None = None) -> int:
    router = Router()
    router.add("GET", "/v1/status/leader", _leader)
    port: int = await nursery.start(partial(serve_http, router, host=HOST, port=0, limits=limits))
    return port


def _get(port: int, source: str) -> tuple[int, bytes]:
    """One request with the stdlib's HTTP client, from `source`."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/v1/status/leader")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def _timed_get(port: int, source: str) -> tuple[int, bytes, float]:
    started_s = trio.current_time()
    status, body = await trio.to_thread.run_sync(_get, port, source)
    return status, body, trio.current_time() - started_s


async def test_an_idle_flood_from_one_address_does_not_lock_out_another(
    nursery: trio.Nursery,
) -> None:
    port = await _start(nursery)
    with trio.fail_after(15), idle_flood(port, _FLOOD):
        await trio.sleep(SETTLE_S)
        status, body, took_s = await _timed_get(port, CLIENT_SOURCE)
        assert status == 200 and body == b'"127.0.0.1:8301"'
        assert took_s < SERVED_WITHIN_S, f"served after {took_s:.2f} s"
        # The flooding address itself is over its limit: Consul's answer, 429
        # (once the flood's own over-limit connections have had their wait).
        await trio.sleep(SETTLE_S)
        status, body, took_s = await _timed_get(port, FLOOD_SOURCE)
        assert status == 429, body
        assert b"too many connections" in body
        assert took_s < SERVED_WITHIN_S


async def test_a_connection_that_sends_nothing_is_closed_at_the_first_byte_timeout(
    nursery: trio.Nursery,
) -> None:
    port = await _start(nursery, HttpLimits(first_byte_timeout_s=0.3, idle_timeout_s=60))
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            started_s = trio.current_time()
            assert await stream.receive_some(100) == b""  # closed by the server
            assert trio.current_time() - started_s < 2.0


async def test_the_per_client_limit_is_configurable(nursery: trio.Nursery) -> None:
    port = await _start(nursery, HttpLimits(max_connections_per_client=3))
    with trio.fail_after(10), idle_flood(port, 3, source=CLIENT_SOURCE):
        await trio.sleep(SETTLE_S)
        status, _, _ = await _timed_get(port, CLIENT_SOURCE)
        assert status == 429
        status, _, _ = await _timed_get(port, FLOOD_SOURCE)  # another address: its own 3
        assert status == 200


def test_an_agent_takes_the_limit_from_its_config_file(cluster: Cluster, tmp_path: Path) -> None:
    """`limits.http_max_conns_per_client` in a config file bounds a real agent's HTTP API."""
    config = tmp_path / "limits.json"
    config.write_text(json.dumps({"limits": {"http_max_conns_per_client": 3}}))
    agent = cluster.agent(1).start("-config-file", str(config))
    host, port = agent.http.rsplit(":", 1)
    with idle_flood(int(port), 3, source=CLIENT_SOURCE, host=host):
        time.sleep(SETTLE_S)
        conn = http.client.HTTPConnection(
            host, int(port), timeout=5, source_address=(CLIENT_SOURCE, 0)
        )
        try:
            conn.request("GET", "/v1/status/leader")
            response = conn.getresponse()
            assert response.status == 429
            assert b"limits.http_max_conns_per_client" in response.read()
        finally:
            conn.close()
        # Another address (py-consul's, 127.0.0.1) is served as usual.
        assert consul.Consul(host=host, port=int(port)).agent.self()["Config"]["NodeName"] == "n1"


@pytest.mark.parametrize("value", [0, -1, "200", True])
def test_a_bad_per_client_limit_is_a_one_line_error(tmp_path: Path, value: object) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"limits": {"http_max_conns_per_client": value}}))
    with pytest.raises(ConfigError, match=r"limits\.http_max_conns_per_client.*integer"):
        load_config({"dev": True}, [path])
