"""`meshnode dns` against a stand-in for the agent's /v1/agent/self."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner

import meshnode.cli.dns  # noqa: F401  (registers `dns` on `cli`)
from meshnode.cli import cli


class _Agent:
    """Serves one JSON body for GET /v1/agent/self on a free port."""

    def __init__(self, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 200 if self.path == "/v1/agent/self" else 404
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def agent_with(request: pytest.FixtureRequest) -> Iterator[str]:
    agent = _Agent(request.param)
    thread = threading.Thread(target=agent.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield agent.addr
    finally:
        agent.server.shutdown()
        agent.server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    "agent_with",
    [{"Config": {"DNSAddr": "127.0.0.2:8653", "DNSDomain": "corp.", "NodeName": "web1"}}],
    indirect=True,
)
def test_prints_the_agents_dns_address_and_queries(agent_with: str) -> None:
    result = CliRunner().invoke(cli, ["dns", "-http-addr", agent_with])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "DNS: 127.0.0.2:8653 (UDP and TCP), domain corp."
    assert any(line.startswith("  dig @127.0.0.2 -p 8653 web.service.corp ") for line in lines)
    assert any("web1.node.corp" in line for line in lines)
    assert any("-x 127.0.0.2" in line for line in lines)
    assert result.stderr == ""


@pytest.mark.parametrize("agent_with", [{"Config": {"NodeName": "web1"}}], indirect=True)
def test_falls_back_to_the_default_with_a_note(agent_with: str) -> None:
    result = CliRunner().invoke(cli, ["dns", "--http-addr", agent_with])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "DNS: 127.0.0.1:8600 (UDP and TCP), domain mesh."
    assert "does not report its DNS address" in result.stderr


def test_an_unreachable_agent_is_a_one_line_error() -> None:
    result = CliRunner().invoke(cli, ["dns", "--http-addr", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the agent")
