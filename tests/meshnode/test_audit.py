"""The audit log of intention decisions: memory ring, JSON-lines file, endpoint, CLI."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import trio
from click.testing import CliRunner

import meshnode.cli.intention  # noqa: F401  (registers `meshnode intention` on `cli`)
from meshnode.api.audit_endpoints import register_audit_routes
from meshnode.api.intention_endpoints import register_intention_routes
from meshnode.cli import cli
from meshnode.http import Router, serve_http
from meshnode.http.testing import fetch
from meshnode.intentions.audit import AuditLog
from meshnode.intentions.replica import IntentionState
from meshnode.store.state import LocalState

AUTHORIZE = "/v1/agent/connect/authorize"


def uri(service: str) -> str:
    return f"spiffe://c1.mesh/ns/default/dc/dc1/svc/{service}"


def test_the_ring_keeps_the_newest_and_the_file_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, capacity=3, clock=lambda: 1_700_000_000.25)
    for i in range(5):
        audit.record("connect", "db-sidecar-proxy", f"web{i}", "db", i % 2 == 0, "why", "1.2.3.4:5")
    newest = audit.entries()
    assert [e.source for e in newest] == ["web4", "web3", "web2"]
    assert [e.source for e in audit.entries(denied_only=True)] == ["web3"]
    assert [e.source for e in audit.entries(limit=1)] == ["web4"]
    assert (audit.recorded_total, audit.denied_total) == (5, 2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["Source"] for line in lines] == [f"web{i}" for i in range(5)]
    assert lines[1] == {
        "Time": "2023-11-14T22:13:20.250Z",
        "Event": "connect",
        "Where": "db-sidecar-proxy",
        "Source": "web1",
        "Destination": "db",
        "Allowed": False,
        "Reason": "why",
        "Peer": "1.2.3.4:5",
    }
    audit.close()


def test_a_file_that_fails_is_dropped_and_recording_goes_on(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    assert audit._file is not None
    audit._file.close()  # as if the disk went away: writes now raise ValueError
    audit.record("cut", "p", "web", "db", False, "deny")
    audit.record("cut", "p", "web", "db", False, "deny")
    assert len(audit.entries()) == 2 and audit._file is None


async def test_authorize_answers_are_recorded_and_served_newest_first(
    nursery: trio.Nursery,
) -> None:
    intentions = IntentionState(LocalState("n1"))
    intentions.upsert("web", "db", "deny")
    audit = AuditLog()
    router = Router()
    register_intention_routes(router, intentions, audit)
    register_audit_routes(router, audit)
    port: int = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))
    for source in ("web", "api"):
        body = {"Target": "db", "ClientCertURI": uri(source)}
        assert (await fetch(port, "POST", AUTHORIZE, body)).status == 200
    bad = await fetch(port, "POST", AUTHORIZE, {"Target": "db*", "ClientCertURI": uri("x")})
    assert bad.status == 400  # refused as input: no decision, nothing recorded

    listed = (await fetch(port, "GET", "/v1/agent/connect/audit")).json()
    assert [(e["Event"], e["Source"], e["Destination"], e["Allowed"]) for e in listed] == [
        ("authorize", "api", "db", True),
        ("authorize", "web", "db", False),
    ]
    assert "web => db" in listed[1]["Reason"] and listed[1]["Peer"].startswith("127.0.0.1:")
    denied = (await fetch(port, "GET", "/v1/agent/connect/audit?denied")).json()
    assert [e["Source"] for e in denied] == ["web"]
    for limit in ("0", "1001", "x"):
        reply = await fetch(port, "GET", f"/v1/agent/connect/audit?limit={limit}")
        assert reply.status == 400 and b"limit" in reply.body

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, [*args, "-http-addr", f"127.0.0.1:{port}"])
        return result.exit_code, result.output

    code, out = await trio.to_thread.run_sync(run, "intention", "audit", "-denied")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:5] == [
        "Time",
        "Event",
        "Source",
        "Destination",
        "Decision",
    ]
    assert lines[1].split()[1:5] == ["authorize", "web", "db", "deny"] and len(lines) == 2
    code, out = await trio.to_thread.run_sync(run, "intention", "audit", "--format", "json")
    assert code == 0 and [e["Source"] for e in json.loads(out)] == ["api", "web"]
