"""The agent token: writes need it (403 otherwise), reads do not; the CLI sends it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

import meshnode.cli  # noqa: F401  (registers the commands)
from meshnode.api import build_router
from meshnode.api.auth import token_guard
from meshnode.api.testing import FakeAgent
from meshnode.cli import cli
from meshnode.client import AgentClient, ClientError
from meshnode.http.testing import serve_in_thread

TOKEN = "s3cret-token"


@pytest.fixture
def guarded() -> Iterator[tuple[FakeAgent, int, list[str | None]]]:
    """A fake agent whose API needs TOKEN on writes; the list holds the live token."""
    agent = FakeAgent(name="web1")
    current: list[str | None] = [TOKEN]
    router = build_router(agent)
    router.add_guard(token_guard(lambda: current[0]))
    with serve_in_thread(router) as port:
        yield agent, port, current


def test_writes_without_or_with_a_wrong_token_get_403_and_change_nothing(
    guarded: tuple[FakeAgent, int, list[str | None]],
) -> None:
    agent, port, _ = guarded
    anonymous = AgentClient("127.0.0.1", port)
    with pytest.raises(ClientError) as missing:
        anonymous.kv_put("a", b"1")
    assert missing.value.status == 403
    assert "requires a token" in str(missing.value)
    with pytest.raises(ClientError) as wrong:
        AgentClient("127.0.0.1", port, token="nope").kv_put("a", b"1")
    assert wrong.value.status == 403
    assert agent.kv == {}
    # Reads stay open.
    assert anonymous.request_raw("GET", "/v1/kv/a")[0] == 404


def test_every_consul_token_spelling_is_accepted(
    guarded: tuple[FakeAgent, int, list[str | None]],
) -> None:
    agent, port, _ = guarded
    client = AgentClient("127.0.0.1", port)
    for path, headers in [
        ("/v1/kv/h", {"X-Consul-Token": TOKEN}),
        ("/v1/kv/b", {"Authorization": f"Bearer {TOKEN}"}),
        (f"/v1/kv/q?token={TOKEN}", {}),
    ]:
        status, _ = client._exchange("PUT", path, b"v", headers)
        assert status == 200, path
    assert sorted(agent.kv) == ["b", "h", "q"]


def test_a_reloaded_token_applies_at_once(
    guarded: tuple[FakeAgent, int, list[str | None]],
) -> None:
    agent, port, current = guarded
    current[0] = "rotated"
    with pytest.raises(ClientError):
        AgentClient("127.0.0.1", port, token=TOKEN).kv_put("a", b"1")
    AgentClient("127.0.0.1", port, token="rotated").kv_put("a", b"1")
    current[0] = None  # no token configured: the API is open again
    AgentClient("127.0.0.1", port).kv_put("b", b"2")
    assert sorted(agent.kv) == ["a", "b"]


def test_cli_sends_the_token_from_the_flag_or_the_environment(
    guarded: tuple[FakeAgent, int, list[str | None]],
) -> None:
    agent, port, _ = guarded
    addr = f"127.0.0.1:{port}"
    runner = CliRunner()
    denied = runner.invoke(cli, ["kv", "put", "-http-addr", addr, "k", "v"])
    assert denied.exit_code == 1
    assert "403" in denied.stderr and "token" in denied.stderr
    ok = runner.invoke(cli, ["kv", "put", "-http-addr", addr, "-token", TOKEN, "k", "v"])
    assert ok.exit_code == 0, ok.output
    env = runner.invoke(
        cli, ["kv", "put", "-http-addr", addr, "k2", "v"], env={"CONSUL_HTTP_TOKEN": TOKEN}
    )
    assert env.exit_code == 0, env.output
    assert sorted(agent.kv) == ["k", "k2"]


def test_reload_command_reaches_the_agent(
    guarded: tuple[FakeAgent, int, list[str | None]],
) -> None:
    agent, port, _ = guarded
    result = CliRunner().invoke(cli, ["reload", "-http-addr", f"127.0.0.1:{port}", "-token", TOKEN])
    assert result.exit_code == 0, result.output
    assert "reload triggered" in result.output
    assert agent.reloads == 1
