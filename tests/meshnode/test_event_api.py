"""/v1/event through a real HTTP server, and `meshnode event` / `meshnode watch` against it."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result

import meshnode.cli.event as event_cli
from meshnode.api import build_router
from meshnode.api.event_endpoints import register_event_routes
from meshnode.api.testing import FakeAgent
from meshnode.cli import cli
from meshnode.client import AgentClient
from meshnode.events.user_events import UserEvents
from meshnode.http import Router, serve_http
from meshnode.http.testing import fetch, serve_in_thread


def services() -> list[tuple[str, list[str]]]:
    return [("api", ["v1"])]


@pytest.fixture
def events() -> UserEvents:
    return UserEvents("web1", lambda _payload: None, local_services=services)


def router_for(events: UserEvents, agent: FakeAgent) -> Router:
    router = build_router(agent)
    register_event_routes(router, events)
    return router


@pytest.fixture
async def port(
    nursery: trio.Nursery, events: UserEvents, fake_agent: FakeAgent
) -> AsyncIterator[int]:
    bound: int = await nursery.start(
        partial(serve_http, router_for(events, fake_agent), host="127.0.0.1", port=0)
    )
    yield bound


@pytest.fixture
def thread_port(events: UserEvents, fake_agent: FakeAgent) -> Iterator[int]:
    with serve_in_thread(router_for(events, fake_agent)) as bound:
        yield bound


# ---------------------------------------------------------------- HTTP


async def test_fire_answers_consul_event_json(port: int, events: UserEvents) -> None:
    reply = await fetch(port, "PUT", "/v1/event/fire/deploy?service=api&tag=v1", b"v2")
    assert reply.status == 200
    body = reply.json()
    assert body == {
        "ID": events.events()[0].id,
        "Name": "deploy",
        "Payload": base64.b64encode(b"v2").decode(),
        "NodeFilter": "",
        "ServiceFilter": "api",
        "TagFilter": "v1",
        "Version": 1,
        "LTime": 0,
    }
    empty = (await fetch(port, "PUT", "/v1/event/fire/ping")).json()
    assert (empty["Payload"], empty["LTime"]) == (None, 1)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/event/fire/big", b"x" * 513, 413, "limit is 512"),
        ("/v1/event/fire/" + "n" * 129, b"", 400, "limit is 128"),
        ("/v1/event/fire/x?node=(", b"", 400, "not a regular expression"),
        ("/v1/event/fire/x?tag=v1", b"", 400, "needs a service filter"),
    ],
)
async def test_fire_refuses_bad_input_with_one_line(
    port: int, path: str, body: bytes, status: int, message: str
) -> None:
    reply = await fetch(port, "PUT", path, body)
    assert reply.status == status
    assert message in reply.json()["error"]


async def test_list_filters_by_name_with_index(port: int) -> None:
    first = await fetch(port, "GET", "/v1/event/list")
    assert (first.json(), first.headers["x-consul-index"]) == ([], "1")
    for name in ("a", "b", "a"):
        await fetch(port, "PUT", f"/v1/event/fire/{name}")
    listed = await fetch(port, "GET", "/v1/event/list?name=a")
    assert [e["Name"] for e in listed.json()] == ["a", "a"]
    assert listed.headers["x-consul-index"] == "4"


async def test_list_blocks_until_an_event_arrives(port: int) -> None:
    got: list[Any] = []

    async def block() -> None:
        got.append(await fetch(port, "GET", "/v1/event/list?index=1&wait=30s"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(block)
            await trio.sleep(0.1)
            assert got == []
            await fetch(port, "PUT", "/v1/event/fire/wake", b"up")
    assert [e["Name"] for e in got[0].json()] == ["wake"]
    assert got[0].headers["x-consul-index"] == "2"


async def test_list_wait_times_out_and_bad_index_is_400(port: int) -> None:
    with trio.fail_after(10):
        reply = await fetch(port, "GET", "/v1/event/list?index=1&wait=100ms")
    assert (reply.status, reply.json()) == (200, [])
    assert (await fetch(port, "GET", "/v1/event/list?index=x")).status == 400


# ---------------------------------------------------------------- CLI


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_event_command_prints_the_id(thread_port: int, events: UserEvents) -> None:
    result = run(
        "event",
        "-name",
        "deploy",
        "-service",
        "api",
        "-http-addr",
        f"127.0.0.1:{thread_port}",
        "v3",
    )
    assert result.exit_code == 0, result.output
    fired = events.events()[0]
    assert result.output == f"Event ID: {fired.id}\n"
    assert (fired.payload, fired.service_filter) == (b"v3", "api")


def test_event_command_errors_in_one_line(thread_port: int) -> None:
    result = run("event", "-name", "x", "-http-addr", f"127.0.0.1:{thread_port}", "y" * 600)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the agent answered 413: payload is 600 bytes, the limit is 512"
    ]


def test_watch_rejects_other_types() -> None:
    result = run("watch", "-type", "services")
    assert result.exit_code == 2
    assert "supports -type event and -type key" in result.output


def _put(port: int, path: str, body: bytes = b"") -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as r:
        r.read()


def _stop_after(
    monkeypatch: pytest.MonkeyPatch, polls: int, before: dict[int, tuple[str, bytes]], port: int
) -> list[str]:
    """Make `_poll` do a write before chosen polls and press Ctrl-C at poll `polls`."""
    real = event_cli._poll
    paths: list[str] = []

    def poll(client: AgentClient, path: str) -> tuple[int, Any, int]:
        paths.append(path)
        if len(paths) == polls:
            raise KeyboardInterrupt
        if len(paths) in before:
            _put(port, *before[len(paths)])
        return real(client, path)

    monkeypatch.setattr(event_cli, "_poll", poll)
    # A test that polls once too often costs seconds, not the 5-minute default.
    monkeypatch.setattr(event_cli, "WATCH_WAIT_S", 5)
    return paths


def test_watch_prints_new_events_then_exits_on_ctrl_c(
    thread_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put(thread_port, "/v1/event/fire/old", b"1")
    paths = _stop_after(monkeypatch, 3, {2: ("/v1/event/fire/new", b"2")}, thread_port)
    result = run("watch", "-type", "event", "-http-addr", f"127.0.0.1:{thread_port}")
    assert result.exit_code == 0, result.output
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(result.output)
    second, _ = decoder.raw_decode(result.output[end:].lstrip())
    assert [e["Name"] for e in first] == ["old"]
    assert [e["Name"] for e in second] == ["new"]
    assert paths[1] == "/v1/event/list?index=2&wait=5s"


def test_watch_runs_a_handler_with_the_json(
    thread_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _stop_after(monkeypatch, 3, {2: ("/v1/event/fire/deploy", b"go")}, thread_port)
    result = run(
        "watch",
        "-type",
        "event",
        "-name",
        "deploy",
        "-http-addr",
        f"127.0.0.1:{thread_port}",
        f"cat >> {out}",
    )
    assert result.exit_code == 0, result.output
    assert result.output == ""
    [event] = json.loads(out.read_text())
    assert (event["Name"], base64.b64decode(event["Payload"])) == ("deploy", b"go")


def test_watch_key(thread_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty KV and a KV after its first write both answer index 1: start past it.
    _put(thread_port, "/v1/kv/app/other", b"x")
    _stop_after(monkeypatch, 3, {2: ("/v1/kv/app/color", b"blue")}, thread_port)
    result = run(
        "watch", "-type", "key", "-key", "app/color", "-http-addr", f"127.0.0.1:{thread_port}"
    )
    assert result.exit_code == 0, result.output
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(result.output)
    second, _ = decoder.raw_decode(result.output[end:].lstrip())
    assert first is None
    assert base64.b64decode(second["Value"]) == b"blue"


def test_watch_unreachable_agent_fails_at_once() -> None:
    result = run("watch", "-type", "event", "-http-addr", "127.0.0.1:1")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot talk to the agent at 127.0.0.1:1")
