"""The intention endpoints on a real socket: Consul's shapes, py-consul, bad input, the CLI."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

import consul
import pytest
import trio
from click.testing import CliRunner, Result

import meshnode.cli.intention  # noqa: F401  (registers `meshnode intention` on `cli`)
from meshnode.api.intention_endpoints import register_intention_routes
from meshnode.cli import cli
from meshnode.http import Router, serve_http
from meshnode.http.testing import Reply, fetch
from meshnode.intentions.replica import IntentionState
from meshnode.store.state import LocalState
from tests.meshnode.conftest import assert_one_line_error

EXACT = "/v1/connect/intentions/exact"
AUTHORIZE = "/v1/agent/connect/authorize"
WEB_URI = "spiffe://c1.mesh/ns/default/dc/dc1/svc/web"


@dataclass
class Agent:
    port: int
    local: LocalState
    intentions: IntentionState

    async def call(self, method: str, path: str, body: Any = b"", **query: str) -> Reply:
        target = f"{path}?{urlencode(query)}" if query else path
        return await fetch(self.port, method, target, body)

    async def cli(self, *args: str) -> Result:
        """`meshnode ARGS` against this agent, from a thread (the CLI blocks)."""
        argv = [*args, "-http-addr", f"127.0.0.1:{self.port}"]
        invoke = partial(CliRunner().invoke, cli, argv)
        return await trio.to_thread.run_sync(invoke)


@pytest.fixture
async def agent(nursery: trio.Nursery) -> AsyncIterator[Agent]:
    local = LocalState("n1", wall_clock=lambda: 1_700_000_000.5)
    intentions = IntentionState(local, wall_clock=lambda: 1_700_000_000.5)
    router = Router()
    register_intention_routes(router, intentions)
    port: int = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))
    yield Agent(port, local, intentions)


async def test_upsert_read_list_and_delete_in_consul_shape(agent: Agent) -> None:
    put = await agent.call(
        "PUT", EXACT, {"Action": "deny", "Description": "no", "Meta": {"team": "db"}},
        source="web", destination="db",
    )  # fmt: skip
    assert (put.status, put.json()) == (200, True)
    got = await agent.call("GET", EXACT, source="web", destination="db")
    assert got.status == 200
    body = got.json()
    record = agent.intentions.get("web", "db")
    assert record is not None
    assert body == {
        "ID": record.id,
        "Description": "no",
        "SourceNS": "default",
        "SourceName": "web",
        "DestinationNS": "default",
        "DestinationName": "db",
        "SourceType": "consul",
        "Action": "deny",
        "Precedence": 9,
        "Meta": {"team": "db"},
        "CreatedAt": "2023-11-14T22:13:20.500000Z",
        "UpdatedAt": "2023-11-14T22:13:20.500000Z",
        "CreateIndex": 2,
        "ModifyIndex": 2,
    }
    assert got.headers["x-consul-index"] == "2"
    await agent.call("PUT", EXACT, {"Action": "allow"}, source="*", destination="*")
    listed = await agent.call("GET", "/v1/connect/intentions")
    assert [(i["SourceName"], i["Precedence"]) for i in listed.json()] == [("web", 9), ("*", 5)]
    assert listed.headers["x-consul-index"] == "3"
    deleted = await agent.call("DELETE", EXACT, source="web", destination="db")
    assert (deleted.status, deleted.json()) == (200, True)
    missing = await agent.call("GET", EXACT, source="web", destination="db")
    assert missing.status == 404
    assert missing.json() == {"error": "no intention from 'web' to 'db'"}
    again = await agent.call("DELETE", EXACT, source="web", destination="db")
    assert (again.status, again.json()) == (200, True)  # Consul: the pair has none, as asked


async def test_check_match_and_the_default_policy_flip(agent: Agent) -> None:
    async def allowed(src: str, dst: str) -> bool:
        reply = await agent.call("GET", "/v1/connect/intentions/check", source=src, destination=dst)
        assert reply.status == 200
        answer: bool = reply.json()["Allowed"]
        return answer

    assert await allowed("web", "db")
    await agent.call("PUT", EXACT, {"Action": "deny"}, source="*", destination="*")
    assert not await allowed("web", "db")
    await agent.call("PUT", EXACT, {"Action": "allow"}, source="web", destination="db")
    assert await allowed("web", "db")
    assert not await allowed("api", "db")
    match = await agent.call("GET", "/v1/connect/intentions/match", by="destination", name="db")
    found = {
        k: [(i["SourceName"], i["DestinationName"]) for i in v] for k, v in match.json().items()
    }
    assert found == {"db": [("web", "db"), ("*", "*")]}


async def test_legacy_create_answers_an_id_and_refuses_duplicates(agent: Agent) -> None:
    body = {"SourceName": "web", "DestinationName": "db", "SourceType": "consul", "Action": "deny"}
    created = await agent.call("POST", "/v1/connect/intentions", body)
    assert created.status == 200
    record = agent.intentions.get("web", "db")
    assert record is not None and created.json() == {"ID": record.id}
    duplicate = await agent.call("POST", "/v1/connect/intentions", body)
    assert duplicate.status == 409
    assert duplicate.json() == {"error": "intention web => db (deny) already exists"}


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_authorize_names_the_rule_or_the_default(agent: Agent, method: str) -> None:
    body = {"Target": "db", "ClientCertURI": WEB_URI, "ClientCertSerial": "01:02"}
    first = await agent.call(method, AUTHORIZE, body)
    assert first.json() == {
        "Authorized": True,
        "Reason": "no intention matched; the default policy allows",
    }
    agent.intentions.upsert("*", "*", "deny")
    denied = await agent.call(method, AUTHORIZE, body)
    assert denied.json() == {
        "Authorized": False,
        "Reason": "denied by intention * => * (deny) with precedence 5, the default policy",
    }
    agent.intentions.upsert("web", "db", "allow")
    allowed = await agent.call(method, AUTHORIZE, body)
    assert allowed.json() == {
        "Authorized": True,
        "Reason": "allowed by intention web => db (allow) with precedence 9",
    }


@pytest.mark.parametrize("other_writes", [0, 1])
async def test_list_is_a_blocking_query(agent: Agent, other_writes: int) -> None:
    for i in range(other_writes):
        agent.local.put("kv", f"k{i}", b"v")  # an agent's index is rarely 0
    start = int((await agent.call("GET", "/v1/connect/intentions")).headers["x-consul-index"])
    assert start == 1

    async def write_later() -> None:
        await trio.sleep(0.05)
        agent.intentions.upsert("web", "db", "deny")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_later)
        with trio.fail_after(10):
            reply = await agent.call("GET", "/v1/connect/intentions", index=str(start), wait="30s")
    assert [i["SourceName"] for i in reply.json()] == ["web"]
    now = int(reply.headers["x-consul-index"])
    assert now > start  # even the first write on an empty agent moves the index past 1
    with trio.fail_after(10):
        quiet = await agent.call("GET", "/v1/connect/intentions", index=str(now), wait="50ms")
    assert quiet.headers["x-consul-index"] == str(now)


E = {"source": "web", "destination": "db"}


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "status", "fragment"),
    [
        ("PUT", EXACT, E, b"{nope", 400, "not valid JSON"),
        ("PUT", EXACT, E, b"", 400, "body is empty"),
        ("PUT", EXACT, E, [], 400, "must be a JSON object"),
        ("PUT", EXACT, E, {"Action": 1}, 400, "'Action' must be a string"),
        ("PUT", EXACT, E, {"Action": "maybe"}, 400, "use 'allow' or 'deny'"),
        ("PUT", EXACT, E, {"Action": "deny", "Bogus": 1}, 400, "unknown field 'Bogus'"),
        ("PUT", EXACT, E, {"Description": "x"}, 400, "missing field 'Action'"),
        ("PUT", EXACT, E, {"Action": "deny", "Description": 3}, 400, "'Description' must be"),
        ("PUT", EXACT, E, {"Action": "deny", "Meta": []}, 400, "'Meta' must be an object"),
        ("PUT", EXACT, E, {"Action": "deny", "Meta": {"k": 1}}, 400, "'Meta' must be an object"),
        ("PUT", EXACT, E, {"Action": "deny", "Meta": {"k": "v" * 600}}, 400, "meta value"),
        ("PUT", EXACT, E, {"Action": "deny", "Description": "d" * 513}, 400, "limit is 512"),
        ("PUT", EXACT, E, {"Action": "deny", "SourceType": "external-uri"}, 400, "'consul'"),
        ("PUT", EXACT, E, {"Action": "deny", "Permissions": [{}]}, 400, "L7 Permissions"),
        ("PUT", EXACT, E, b" " * 70_000, 413, "the limit is 65536"),
        ("PUT", EXACT, {"source": "db*", "destination": "web"}, {"Action": "deny"}, 400,
         "wildcard '*' must be the whole name"),
        ("PUT", EXACT, {"source": "web"}, {"Action": "deny"}, 400, "missing query parameter"),
        ("GET", EXACT, {"source": "web", "destination": "d b"}, b"", 400, "invalid destination"),
        ("DELETE", EXACT, {"destination": "db"}, b"", 400, "?source="),
        ("GET", "/v1/connect/intentions/check", {"source": "w*", "destination": "db"}, b"", 400,
         "invalid source"),
        ("GET", "/v1/connect/intentions/check", {**E, "source-type": "x"}, b"", 400,
         "source-type"),
        ("GET", "/v1/connect/intentions/match", {"by": "both", "name": "db"}, b"", 400,
         "use 'source' or 'destination'"),
        ("GET", "/v1/connect/intentions/match", {"by": "source"}, b"", 400, "?name="),
        ("GET", "/v1/connect/intentions", {"index": "x"}, b"", 400, "invalid index"),
        ("GET", "/v1/connect/intentions", {"index": "1", "wait": "soon"}, b"", 400,
         "invalid wait"),
        ("POST", "/v1/connect/intentions", {}, {"SourceName": "web", "Action": "deny"}, 400,
         "missing field 'DestinationName'"),
        ("POST", "/v1/connect/intentions", {},
         {"SourceName": "web", "DestinationName": "db", "Action": "deny", "SourceNS": "ops"},
         400, "'SourceNS' must be 'default'"),
        ("POST", "/v1/connect/intentions", {},
         {"SourceName": "web", "DestinationName": 5, "Action": "deny"}, 400,
         "'DestinationName' must be a string"),
        ("POST", AUTHORIZE, {}, {"Target": "db"}, 400, "missing field 'ClientCertURI'"),
        ("POST", AUTHORIZE, {}, {"Target": "db", "ClientCertURI": WEB_URI, "X": 1}, 400,
         "unknown field 'X'"),
        ("POST", AUTHORIZE, {}, {"Target": "db", "ClientCertURI": "https://web"}, 400,
         "not a spiffe:// ID"),
        ("POST", AUTHORIZE, {}, {"Target": "db*", "ClientCertURI": WEB_URI}, 400,
         "invalid target"),
        ("POST", AUTHORIZE, {},
         {"Target": "db", "ClientCertURI": WEB_URI, "ClientCertSerial": 7}, 400,
         "'ClientCertSerial' must be a string"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_one_line_error_and_writes_nothing(
    agent: Agent,
    method: str,
    path: str,
    query: dict[str, str],
    body: Any,
    status: int,
    fragment: str,
) -> None:
    reply = await agent.call(method, path, body, **query)
    assert reply.status == status, reply.body
    message = reply.json()["error"]
    assert fragment in message
    assert "\n" not in message
    assert len(agent.local.store) == 0


async def test_py_consul_creates_reads_checks_and_authorizes(agent: Agent) -> None:
    client = consul.Consul(port=agent.port)
    ixns = client.connect.intentions

    def use_it() -> None:
        assert ixns.check("web", "db") is True
        assert ixns.upsert("web", "db", action="deny", description="py-consul") is True
        assert ixns.check("web", "db") is False
        read = ixns.read("web", "db")
        assert (read["SourceName"], read["Action"], read["Description"]) == (
            "web",
            "deny",
            "py-consul",
        )
        assert [i["DestinationName"] for i in ixns.list()] == ["db"]
        assert [i["SourceName"] for i in ixns.match("destination", "db")["db"]] == ["web"]
        answer = client.agent.connect.authorize("db", WEB_URI, "01")
        assert answer == {
            "Authorized": False,
            "Reason": "denied by intention web => db (deny) with precedence 9",
        }
        assert ixns.delete("web", "db") is True
        assert ixns.check("web", "db") is True

    await trio.to_thread.run_sync(use_it)


# --- the CLI against the same server ------------------------------------------------------


async def test_cli_allow_deny_get_list_match_delete(agent: Agent) -> None:
    denied = await agent.cli("intention", "deny", "web", "socat")
    assert (denied.exit_code, denied.stdout) == (0, "Created: web => socat (deny)\n")
    allowed = await agent.cli("intention", "allow", "*", "socat")
    assert allowed.stdout == "Created: * => socat (allow)\n"
    got = await agent.cli("intention", "get", "web", "socat")
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    assert lines[:3] == ["Source:       web", "Destination:  socat", "Action:       deny"]
    assert "Precedence:   9" in lines
    listed = await agent.cli("intention", "list")
    assert [line.split()[1:] for line in listed.stdout.splitlines()] == [
        ["Source", "Action", "Destination", "Precedence"],
        ["web", "deny", "socat", "9"],
        ["*", "allow", "socat", "8"],
    ]
    match = await agent.cli("intention", "match", "-destination", "socat")
    assert match.stdout == "web => socat (deny)\n* => socat (allow)\n"
    by_source = await agent.cli("intention", "match", "-source", "api")
    assert by_source.stdout == "* => socat (allow)\n"
    deleted = await agent.cli("intention", "delete", "web", "socat")
    assert (deleted.exit_code, deleted.stdout) == (0, "Intention deleted.\n")
    assert agent.intentions.get("web", "socat") is None
    gone = await agent.cli("intention", "delete", "web", "socat")
    assert (gone.exit_code, gone.stdout) == (0, "Intention deleted.\n")  # as Consul's CLI


async def test_cli_create_refuses_to_replace_unless_told(agent: Agent) -> None:
    first = await agent.cli("intention", "create", "-deny", "-description", "nope", "web", "db")
    assert (first.exit_code, first.stdout) == (0, "Created: web => db (deny)\n")
    again = await agent.cli("intention", "create", "-allow", "web", "db")
    assert_one_line_error(again, 1, "already exists; use -replace")
    replaced = await agent.cli("intention", "create", "-replace", "-meta", "team=db", "web", "db")
    assert (replaced.exit_code, replaced.stdout) == (0, "Created: web => db (allow)\n")
    record = agent.intentions.get("web", "db")
    assert record is not None
    assert (record.intention.action, dict(record.meta)) == ("allow", {"team": "db"})
    both = await agent.cli("intention", "create", "-allow", "-deny", "web", "db")
    assert_one_line_error(both, 2, "not both")


async def test_cli_check_exit_codes_and_the_default_policy_flip(agent: Agent) -> None:
    first = await agent.cli("intention", "check", "web", "db")
    assert (first.exit_code, first.stdout) == (0, "Allowed\n")
    flip = await agent.cli("intention", "create", "-deny", "*", "*")
    assert flip.stdout == "Created: * => * (deny)\n"
    denied = await agent.cli("intention", "check", "web", "db")
    assert (denied.exit_code, denied.stdout) == (1, "Denied\n")
    bad = await agent.cli("intention", "check", "web", "db*")
    assert_one_line_error(bad, 2, "wildcard '*' must be the whole name")


async def test_cli_errors_write_nothing(agent: Agent) -> None:
    bad_name = await agent.cli("intention", "deny", "db*", "web")
    assert_one_line_error(bad_name, 2, "invalid source 'db*'")
    bad_meta = await agent.cli("intention", "create", "-meta", "novalue", "web", "db")
    assert_one_line_error(bad_meta, 2, "is not KEY=VALUE")
    assert len(agent.local.store) == 0


def test_cli_check_exits_2_when_the_agent_cannot_be_reached() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: refused
        result = CliRunner().invoke(
            cli, ["intention", "check", "web", "db", "-http-addr", f"127.0.0.1:{port}"]
        )
    assert_one_line_error(result, 2, "connection refused")
