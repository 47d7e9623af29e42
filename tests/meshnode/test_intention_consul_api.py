"""Consul's intention HTTP shapes as its own clients send them, on a real socket.

The bodies are what Go's `api.Intention` marshals to (every field, read-only
ones included), Consul's UI's ``default/`` prefixed names and the ID-based
calls of the Go client; the answers are Consul's (agent/intentions_endpoint.go
behaviour: exact DELETE of nothing is ``true``, an update by ID answers
``{"ID"}``, an unknown ID is 404). py-consul and the `meshnode` CLI drive the
same server, and a real agent process shows the IDs are stable across agents.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import consul
import pytest
from click.testing import CliRunner, Result

import meshnode.cli.intention  # noqa: F401  (registers `meshnode intention` on `cli`)
from meshnode.api.intention_endpoints import register_intention_routes
from meshnode.cli import cli
from meshnode.http import Router
from meshnode.http.testing import serve_in_thread
from meshnode.intentions.replica import IntentionState
from meshnode.store.state import LocalState
from meshnode.testutil import MESHNODE, AgentProc, Cluster, wait_for

BASE = "/v1/connect/intentions"
EXACT = f"{BASE}/exact"
_TIMEOUT_S = 5.0


def go_intention(**fields: Any) -> dict[str, Any]:
    """An `api.Intention` as Go's encoding/json writes a mostly zero struct: every field."""
    body: dict[str, Any] = {
        "ID": "",
        "Description": "",
        "SourcePeer": "",
        "SourceNS": "",
        "SourceName": "",
        "SourcePartition": "",
        "SourceSamenessGroup": "",
        "DestinationNS": "",
        "DestinationName": "",
        "DestinationPartition": "",
        "SourceType": "consul",
        "Action": "allow",
        "Permissions": None,
        "Meta": None,
        "Precedence": 0,
        "CreatedAt": "0001-01-01T00:00:00Z",
        "UpdatedAt": "0001-01-01T00:00:00Z",
        "Hash": None,
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }
    return {**body, **fields}


@dataclass
class Server:
    port: int
    local: LocalState
    intentions: IntentionState

    def call(self, method: str, path: str, body: Any = None, **query: str) -> tuple[int, Any]:
        """(status, decoded JSON or None) of one request."""
        target = f"{path}?{urlencode(query)}" if query else path
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_TIMEOUT_S)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, target, body=payload)
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        return reply.status, json.loads(data) if data else None

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli, [*args, "-http-addr", f"127.0.0.1:{self.port}"])


@pytest.fixture
def server() -> Iterator[Server]:
    local = LocalState("n1")
    intentions = IntentionState(local)
    router = Router()
    register_intention_routes(router, intentions)
    with serve_in_thread(router) as port:
        yield Server(port, local, intentions)


# --- whole api.Intention bodies -------------------------------------------------------------


def test_go_client_bodies_with_read_only_fields_are_accepted_and_ignored(server: Server) -> None:
    status, created = server.call(
        "POST", BASE, go_intention(SourceName="web", DestinationName="db", Action="deny")
    )
    assert status == 200, created
    intention_id = created["ID"]
    assert uuid.UUID(intention_id).version == 4
    # A read-modify-write of what the agent answered (the UI's and Terraform's way).
    status, shown = server.call("GET", EXACT, source="web", destination="db")
    assert status == 200
    created_at, create_index = shown["CreatedAt"], shown["CreateIndex"]
    shown.update(Description="edited", Precedence=1, CreateIndex=999, ModifyIndex=999)
    shown.update(ID="ignored-by-exact", Hash="c29tZWhhc2g=", CreatedAt="2001-01-01T00:00:00Z")
    assert server.call("PUT", EXACT, shown, source="web", destination="db") == (200, True)
    status, after = server.call("GET", EXACT, source="web", destination="db")
    assert (after["ID"], after["Description"], after["Precedence"]) == (intention_id, "edited", 9)
    assert after["CreatedAt"] == created_at != "2001-01-01T00:00:00Z"
    assert after["CreateIndex"] == create_index < after["ModifyIndex"] < 999


@pytest.mark.parametrize(
    ("path", "query", "body", "fragment"),
    [
        (EXACT, {"source": "web", "destination": "db"}, go_intention(Bogus=1),
         "unknown field 'Bogus'"),
        (BASE, {}, go_intention(SourceName="web", DestinationName="db", Sourcename="x"),
         "unknown field 'Sourcename'"),
        (BASE, {}, go_intention(SourceName="web", DestinationName="db", ID=str(uuid.uuid4())),
         "'ID' must be empty when creating"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(CreateIndex="1"),
         "'CreateIndex' must be a non-negative integer"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(Precedence=True),
         "'Precedence' must be a non-negative integer"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(Hash=[1]),
         "'Hash' must be a string"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(SourcePartition="eu"),
         "'SourcePartition' must be 'default'"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(DestinationNS="ops"),
         "'DestinationNS' must be 'default'"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(SourcePeer="dc2"),
         "peering is not supported"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(SourceSamenessGroup="g"),
         "sameness groups are not supported"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(SourceName="api"),
         "'SourceName' is 'api' but ?source= is 'web'"),
        (EXACT, {"source": "web", "destination": "db"},
         go_intention(Permissions=[{"Action": "deny", "HTTP": {"PathPrefix": "/"}}]),
         "L7 Permissions"),
        (EXACT, {"source": "web", "destination": "db"}, go_intention(Description="d" * 513),
         "description is 513 characters, the limit is 512"),
        (EXACT, {"source": "ops/web", "destination": "db"}, go_intention(),
         "namespace 'ops' does not exist"),
        (EXACT, {"source": "web", "destination": "eu/default/db"}, go_intention(),
         "partition 'eu' does not exist"),
        (EXACT, {"source": "a/b/c/web", "destination": "db"}, go_intention(),
         "PARTITION/NAMESPACE/NAME"),
    ],
)  # fmt: skip
def test_bad_fields_are_refused_by_name_and_write_nothing(
    server: Server, path: str, query: dict[str, str], body: dict[str, Any], fragment: str
) -> None:
    method = "POST" if path == BASE else "PUT"
    status, reply = server.call(method, path, body, **query)
    assert status == 400, reply
    assert fragment in reply["error"]
    assert "\n" not in reply["error"]
    assert len(server.local.store) == 0


def test_a_description_of_512_characters_is_kept_whole(server: Server) -> None:
    body = go_intention(Description="d" * 512)
    assert server.call("PUT", EXACT, body, source="web", destination="db") == (200, True)
    _, shown = server.call("GET", EXACT, source="web", destination="db")
    assert shown["Description"] == "d" * 512


# --- names as Consul's UI writes them ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination"),
    [("default/web", "db"), ("web", "default/default/db"), ("default/default/web", "default/db")],
)
def test_default_namespace_and_partition_prefixes_are_the_plain_name(
    server: Server, source: str, destination: str
) -> None:
    put = server.call(
        "PUT", EXACT, go_intention(Action="deny"), source=source, destination=destination
    )
    assert put == (200, True)
    assert server.intentions.get("web", "db") is not None
    _, got = server.call("GET", EXACT, source=source, destination=destination)
    assert (got["SourceName"], got["DestinationName"], got["SourceNS"]) == ("web", "db", "default")
    assert server.call("GET", f"{BASE}/check", source=source, destination=destination) == (
        200,
        {"Allowed": False},
    )
    _, matched = server.call("GET", f"{BASE}/match", by="destination", name=destination)
    assert [i["SourceName"] for i in matched[destination]] == ["web"]
    assert server.call("DELETE", EXACT, source=source, destination=destination) == (200, True)
    assert server.intentions.get("web", "db") is None


def test_create_with_namespace_fields_and_prefixed_names(server: Server) -> None:
    body = go_intention(
        SourceName="default/web", SourceNS="default", SourcePartition="default",
        DestinationName="db", DestinationNS="default", DestinationPartition="default",
    )  # fmt: skip
    status, created = server.call("POST", BASE, body)
    assert status == 200, created
    record = server.intentions.get("web", "db")
    assert record is not None and record.id == created["ID"]


# --- IDs -------------------------------------------------------------------------------------


def test_get_update_and_delete_by_id(server: Server) -> None:
    _, created = server.call("POST", BASE, go_intention(SourceName="web", DestinationName="db"))
    path = f"{BASE}/{created['ID']}"
    status, got = server.call("GET", path)
    assert status == 200
    assert (got["ID"], got["SourceName"], got["DestinationName"], got["Action"]) == (
        created["ID"], "web", "db", "allow",
    )  # fmt: skip
    # IntentionUpdate: the whole struct back, with the ID; Consul answers {"ID"}.
    got.update(Action="deny", Description="by id")
    assert server.call("PUT", path, got) == (200, {"ID": created["ID"]})
    assert server.call("GET", f"{BASE}/check", source="web", destination="db")[1] == {
        "Allowed": False
    }
    # Renaming keeps the ID and moves the rule.
    got.update(SourceName="api")
    assert server.call("PUT", path, got) == (200, {"ID": created["ID"]})
    assert server.intentions.get("web", "db") is None
    moved = server.intentions.get("api", "db")
    assert moved is not None and moved.id == created["ID"]
    assert server.call("DELETE", path) == (200, True)
    assert server.intentions.get("api", "db") is None
    status, missing = server.call("GET", path)
    assert (status, missing) == (404, {"error": f"no intention with ID {created['ID']!r}"})
    assert server.call("DELETE", path)[0] == 404
    assert server.call("PUT", path, got)[0] == 404


def test_an_update_by_id_cannot_take_another_intentions_pair(server: Server) -> None:
    _, first = server.call("POST", BASE, go_intention(SourceName="web", DestinationName="db"))
    server.call("POST", BASE, go_intention(SourceName="api", DestinationName="db"))
    body = go_intention(SourceName="api", DestinationName="db", Action="deny")
    status, reply = server.call("PUT", f"{BASE}/{first['ID']}", body)
    assert (status, reply) == (409, {"error": "intention api => db (allow) already exists"})
    other = go_intention(ID=str(uuid.uuid4()), Action="deny")
    status, reply = server.call("PUT", f"{BASE}/{first['ID']}", other)
    assert (status, reply["error"]) == (
        400, f"field 'ID' is {other['ID']!r} but the ID in the URL is {first['ID']!r}",
    )  # fmt: skip
    record = server.intentions.get("web", "db")
    assert record is not None and record.intention.action == "allow"


def test_deleting_a_pair_that_has_no_intention_is_true(server: Server) -> None:
    assert server.call("DELETE", EXACT, source="web", destination="db") == (200, True)
    assert server.call("DELETE", EXACT, source="web", destination="d b")[0] == 400


def test_filter_keeps_the_matching_intentions(server: Server) -> None:
    for source, action in (("web", "allow"), ("api", "deny")):
        assert (
            server.call("PUT", EXACT, go_intention(Action=action), source=source, destination="db")[
                0
            ]
            == 200
        )
    status, reply = server.call("GET", BASE, filter='SourceName == "web"')
    assert (status, [i["SourceName"] for i in reply]) == (200, ["web"])
    status, reply = server.call("GET", BASE, filter="Action == deny and Precedence == 9")
    assert (status, [i["SourceName"] for i in reply]) == (200, ["api"])
    status, reply = server.call("GET", BASE, filter="Source == web")
    assert (status, reply["error"]) == (400, "filter: unknown field 'Source'")


# --- py-consul and the CLI on the same server ------------------------------------------------


def test_py_consul_list_with_a_filter(server: Server) -> None:
    ixns = consul.Consul(port=server.port).connect.intentions
    assert ixns.upsert("default/web", "default/default/db", action="deny") is True
    assert [i["SourceName"] for i in ixns.list()] == ["web"]
    assert ixns.list(filter_expr='SourceName == "api"') == []
    assert [i["Action"] for i in ixns.list(filter_expr='DestinationName == "db"')] == ["deny"]
    with pytest.raises(consul.ConsulException, match="filter: unknown field 'Src'"):
        ixns.list(filter_expr='Src == "web"')
    assert ixns.delete("web", "db") is True
    assert ixns.delete("web", "db") is True  # nothing to delete is still done


def test_cli_get_and_delete_by_id(server: Server) -> None:
    created = server.cli("intention", "create", "-deny", "default/web", "db")
    assert (created.exit_code, created.stdout) == (0, "Created: web => db (deny)\n")
    record = server.intentions.get("web", "db")
    assert record is not None
    got = server.cli("intention", "get", record.id)
    assert got.exit_code == 0, got.output
    assert got.stdout.splitlines()[:4] == [
        "Source:       web",
        "Destination:  db",
        "Action:       deny",
        f"ID:           {record.id}",
    ]
    deleted = server.cli("intention", "delete", record.id)
    assert (deleted.exit_code, deleted.stdout) == (0, "Intention deleted.\n")
    assert server.intentions.get("web", "db") is None
    gone = server.cli("intention", "get", record.id)
    assert gone.exit_code == 1
    assert (
        gone.stderr.strip() == f"Error: the agent answered 404: no intention with ID {record.id!r}"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "give an intention ID or SRC DST, not 0 arguments"),
        (("a", "b", "c"), "not 3 arguments"),
        (("db*",), "is not an intention ID"),
        (("ops/web", "db"), "namespace 'ops' does not exist"),
    ],
)
def test_cli_get_refuses_bad_targets_before_asking(
    server: Server, args: tuple[str, ...], fragment: str
) -> None:
    result = server.cli("intention", "get", *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr


# --- a real agent process: IDs are the same on every agent ---------------------------------


@pytest.mark.slow
def test_ids_are_stable_across_agents_updates_and_restarts(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        a1, a2 = cluster.start(2)
        host, port = a1.http.rsplit(":", 1)
        client = consul.Consul(host=host, port=int(port))
        assert client.connect.intentions.upsert("web", "db", action="deny") is True
        intention_id = _read_id(a1)
        assert intention_id is not None
        wait_for(lambda: _read_id(a2) == intention_id, 5.0, "the intention on n2")
        # An update on the other agent keeps the ID; both agents then agree.
        out = a2.cli("intention", "create", "-replace", "-allow", "web", "db")
        assert out.stdout == "Created: web => db (allow)\n"
        assert _read_id(a2) == intention_id
        shown = a2.cli("intention", "get", intention_id)
        assert "Action:       allow" in shown.stdout.splitlines()
        a1.kill9()
        a1.start()
        wait_for(lambda: _action(a1, intention_id) == "allow", 10.0, "n1 caught up")
        deleted = subprocess.run(
            [MESHNODE, "intention", "delete", intention_id, "-http-addr", a1.http],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (deleted.returncode, deleted.stdout) == (0, "Intention deleted.\n")
        wait_for(lambda: a2.api(f"{BASE}/{quote(intention_id)}") is None, 5.0, "delete on n2")
    finally:
        cluster.stop_all()


def _read_id(agent: AgentProc) -> str | None:
    found = agent.api(f"{EXACT}?source=web&destination=db")
    return found.get("ID") if isinstance(found, dict) else None


def _action(agent: AgentProc, intention_id: str) -> str | None:
    found = agent.api(f"{BASE}/{quote(intention_id)}")
    return found.get("Action") if isinstance(found, dict) else None
