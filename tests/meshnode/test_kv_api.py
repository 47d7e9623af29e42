"""/v1/kv against `FakeAgent` through a real socket, the `kv` CLI, and the tail route."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from meshnode.api.kv_endpoints import parse_wait
from meshnode.api.testing import FakeAgent
from meshnode.cli import cli
from meshnode.http import HttpError, Router
from meshnode.http.testing import fetch


def run(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


async def test_put_then_get_in_consul_shape(api_port: int, fake_agent: FakeAgent) -> None:
    reply = await fetch(api_port, "PUT", "/v1/kv/config/db/url", b"postgres://db")
    assert (reply.status, reply.json()) == (200, True)
    reply = await fetch(api_port, "GET", "/v1/kv/config/db/url")
    assert reply.status == 200
    assert reply.json() == [
        {
            "Key": "config/db/url",
            "Value": base64.b64encode(b"postgres://db").decode(),
            "Flags": 0,
            "CreateIndex": 1,
            "ModifyIndex": 1,
            "LockIndex": 0,
            "Session": "",
        }
    ]
    assert reply.headers["x-consul-index"] == "1"
    raw = await fetch(api_port, "GET", "/v1/kv/config/db/url?raw")
    assert raw.body == b"postgres://db"


async def test_missing_key_is_404_with_index(api_port: int) -> None:
    reply = await fetch(api_port, "GET", "/v1/kv/nope")
    assert reply.status == 404
    assert reply.headers["x-consul-index"] == "1"


async def test_recurse_keys_and_delete_recurse(api_port: int, fake_agent: FakeAgent) -> None:
    for key in ("app/a", "app/b/c", "other"):
        assert (await fetch(api_port, "PUT", f"/v1/kv/{key}", b"v")).status == 200
    listed = (await fetch(api_port, "GET", "/v1/kv/app/?recurse")).json()
    assert [e["Key"] for e in listed] == ["app/a", "app/b/c"]
    everything = (await fetch(api_port, "GET", "/v1/kv/?recurse")).json()
    assert len(everything) == 3
    keys = (await fetch(api_port, "GET", "/v1/kv/app/?keys&separator=/")).json()
    assert keys == ["app/a", "app/b/"]
    assert (await fetch(api_port, "DELETE", "/v1/kv/app/?recurse")).json() is True
    assert sorted(fake_agent.kv) == ["other"]
    assert (await fetch(api_port, "DELETE", "/v1/kv/other")).json() is True
    assert fake_agent.kv == {}


@pytest.mark.parametrize(
    ("query", "fragment"),
    [("cas=0", "check-and-set is not supported"), ("acquire=s1", "locks"), ("release=s1", "locks")],
)
async def test_cas_and_locks_are_refused(api_port: int, query: str, fragment: str) -> None:
    reply = await fetch(api_port, "PUT", f"/v1/kv/k?{query}", b"v")
    assert reply.status == 400
    assert fragment in reply.json()["error"]
    assert "last-writer-wins" in reply.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/kv//lead", b"v", 400, "must not start with '/'"),
        ("/v1/kv/" + "k" * 513, b"v", 400, "the limit is 512"),
        ("/v1/kv/big", b"x" * (512 * 1024 + 1), 413, "the limit is 524288"),
    ],
)
async def test_bad_keys_and_values(
    api_port: int, fake_agent: FakeAgent, path: str, body: bytes, status: int, fragment: str
) -> None:
    reply = await fetch(api_port, "PUT", path, body)
    assert reply.status == status
    assert fragment in reply.json()["error"]
    assert fake_agent.kv == {}


async def test_refused_write_is_a_400_with_the_message(
    api_port: int, fake_agent: FakeAgent
) -> None:
    fake_agent.kv_refuse = "store would hold too many bytes"
    reply = await fetch(api_port, "PUT", "/v1/kv/k", b"v")
    assert (reply.status, reply.json()["error"]) == (400, "store would hold too many bytes")


async def test_value_at_the_limit_is_accepted(api_port: int, fake_agent: FakeAgent) -> None:
    reply = await fetch(api_port, "PUT", "/v1/kv/big", b"x" * (512 * 1024))
    assert reply.status == 200
    assert len(fake_agent.kv["big"].value) == 512 * 1024


async def test_blocking_query_wakes_on_a_write_and_times_out(
    api_port: int, fake_agent: FakeAgent
) -> None:
    await fetch(api_port, "PUT", "/v1/kv/k", b"1")
    start = trio.current_time()
    timed_out = await fetch(api_port, "GET", "/v1/kv/k?index=1&wait=200ms")
    assert timed_out.headers["x-consul-index"] == "1"
    assert trio.current_time() - start >= 0.19
    got: list[str] = []

    async def blocked() -> None:
        got.append(
            (await fetch(api_port, "GET", "/v1/kv/k?index=1&wait=30s")).headers["x-consul-index"]
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked)
        await trio.sleep(0.2)
        assert got == []
        await fetch(api_port, "PUT", "/v1/kv/k", b"2")
    assert got == ["2"]


def test_parse_wait() -> None:
    assert parse_wait(None) == 300.0
    assert parse_wait("5s") == 5.0
    assert parse_wait("250ms") == 0.25
    assert parse_wait("2m") == 120.0
    assert parse_wait("1h") == 600.0  # capped
    with pytest.raises(HttpError):
        parse_wait("soon")


async def test_tail_route_takes_the_rest_of_the_path() -> None:
    router = Router()

    async def handler(request: object) -> object:
        raise AssertionError

    router.add("GET", "/v1/kv/{key*}", handler)  # type: ignore[arg-type]
    assert router.resolve("GET", "/v1/kv/a/b%20c/d")[1] == {"key": "a/b c/d"}
    assert router.resolve("GET", "/v1/kv/folder/")[1] == {"key": "folder/"}
    assert router.resolve("GET", "/v1/kv/")[1] == {"key": ""}
    with pytest.raises(HttpError):
        router.resolve("GET", "/v1/other/x")


def test_cli_put_get_delete(threaded_api_port: int, fake_agent: FakeAgent, tmp_path: Path) -> None:
    addr = f"127.0.0.1:{threaded_api_port}"
    out = run("kv", "put", "a/b", "hello", "-http-addr", addr)
    assert out.exit_code == 0, out.output
    assert out.stdout == "Success! Data written to: a/b\n"
    assert run("kv", "get", "a/b", "-http-addr", addr).stdout == "hello\n"
    f = tmp_path / "v.bin"
    f.write_bytes(b"\x00\x01file")
    assert run("kv", "put", "a/f", f"@{f}", "-http-addr", addr).exit_code == 0
    assert fake_agent.kv["a/f"].value == b"\x00\x01file"
    assert run("kv", "put", "a/s", "-", "-http-addr", addr, input=b"from stdin").exit_code == 0
    assert fake_agent.kv["a/s"].value == b"from stdin"
    assert run("kv", "get", "a/", "-keys", "-http-addr", addr).stdout.split() == [
        "a/b",
        "a/f",
        "a/s",
    ]
    assert "a/b:hello" in run("kv", "get", "a/", "-recurse", "-http-addr", addr).stdout
    assert run("kv", "delete", "a/b", "-http-addr", addr).exit_code == 0
    missing = run("kv", "get", "a/b", "-http-addr", addr)
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "Error! No key exists at: a/b"
    assert run("kv", "delete", "a/", "-recurse", "-http-addr", addr).exit_code == 0
    assert fake_agent.kv == {}


def test_cli_put_refused_is_one_line(threaded_api_port: int, fake_agent: FakeAgent) -> None:
    fake_agent.kv_refuse = "the store is full"
    out = run("kv", "put", "k", "v", "-http-addr", f"127.0.0.1:{threaded_api_port}")
    assert out.exit_code == 1
    assert out.stderr.strip() == "Error: the agent answered 400: the store is full"
