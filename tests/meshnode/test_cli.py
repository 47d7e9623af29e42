"""The CLI: commands against the fake agent's real HTTP API, errors, single-dash options."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from meshnode.api.testing import FakeAgent
from meshnode.cli import cli, main, rewrite_single_dash
from meshnode.config import AgentConfig
from tests.meshnode.conftest import assert_one_line_error

MESHNODE = Path(sys.executable).parent / "meshnode"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_keygen_prints_a_fresh_32_byte_key() -> None:
    first, second = run("keygen"), run("keygen")
    assert first.exit_code == 0
    assert len(base64.b64decode(first.stdout.strip())) == 32
    assert first.stdout != second.stdout


def test_members_table(threaded_api_port: int) -> None:
    result = run("members", "--http-addr", f"127.0.0.1:{threaded_api_port}")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Node  Address         Status  Tags",
        "db1   127.0.0.2:7946  alive   role=db,zone=a",
        "old1  127.0.0.3:7947  failed",
        "web1  127.0.0.1:7946  alive   role=web",
    ]


def test_members_filters_detail_and_json(threaded_api_port: int) -> None:
    env = {"MESHNODE_HTTP_ADDR": f"127.0.0.1:{threaded_api_port}"}
    failed = run("members", "--status", "fail.*", env=env)
    assert failed.exit_code == 0
    assert [line.split()[0] for line in failed.stdout.splitlines()] == ["Node", "old1"]
    detailed = run("members", "--detailed", env=env)
    assert detailed.stdout.splitlines()[0].split() == [
        "Node",
        "Address",
        "Status",
        "State",
        "Protocol",
        "Tags",
    ]
    as_json = run("members", "--format", "json", "--status", "alive", env=env)
    assert [m["Name"] for m in json.loads(as_json.stdout)] == ["db1", "web1"]


def test_members_exit_2_when_nothing_matches(threaded_api_port: int) -> None:
    result = run("members", "-status", "left", "-http-addr", f"127.0.0.1:{threaded_api_port}")
    assert result.exit_code == 2
    assert result.stdout == ""


def test_members_bad_regex_is_usage_error() -> None:
    assert_one_line_error(run("members", "--status", "("), 2, "is not a regular expression")


def test_join_leave_force_leave(threaded_api_port: int, fake_agent: FakeAgent) -> None:
    addr = ["--http-addr", f"127.0.0.1:{threaded_api_port}"]
    result = run("join", *addr, "10.0.0.1", "10.0.0.2:7000")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Successfully joined cluster by contacting 2 nodes."
    assert fake_agent.joined == ["10.0.0.1", "10.0.0.2:7000"]
    fake_agent.unreachable.add("10.0.0.3")
    assert_one_line_error(run("join", *addr, "10.0.0.3"), 1, "joining 10.0.0.3")
    assert_one_line_error(run("join", *addr, "10.0.0.1:x"), 2, "port 'x' is not a number")
    assert run("force-leave", *addr, "old1").exit_code == 0
    assert_one_line_error(
        run("force-leave", *addr, "ghost"), 1, "the agent answered 404: no member named 'ghost'"
    )
    result = run("leave", *addr)
    assert (result.exit_code, result.stdout.strip()) == (0, "Graceful leave complete")
    assert fake_agent.left


def test_keyring_commands(threaded_api_port: int, fake_agent: FakeAgent) -> None:
    addr = ["-http-addr", f"127.0.0.1:{threaded_api_port}"]
    listed = run("keyring", *addr, "-list")
    assert listed.exit_code == 0, listed.output
    key = fake_agent.keys[0]
    assert f"  {key} [3/3]  (primary)" in listed.stdout.splitlines()
    new = run("keygen").stdout.strip()
    assert run("keyring", *addr, "-install", new).exit_code == 0
    assert run("keyring", *addr, f"-use={new}").exit_code == 0
    assert run("keyring", *addr, "--remove", key).exit_code == 0
    assert fake_agent.keys == [new]
    assert_one_line_error(run("keyring", *addr, "--remove", new), 1, "primary key cannot be")
    assert_one_line_error(run("keyring", *addr), 2, "give exactly one of")
    assert_one_line_error(run("keyring", "--list", "--use", new), 2, "give exactly one of")
    assert_one_line_error(run("keyring", "--install", "short"), 2, "not valid base64")


def test_info(threaded_api_port: int) -> None:
    addr = ["--http-addr", f"127.0.0.1:{threaded_api_port}"]
    text = run("info", *addr)
    assert text.exit_code == 0, text.output
    assert "\tnode_name = web1" in text.stdout.splitlines()
    assert "\tmeshnode.members = 3" in text.stdout.splitlines()
    data = json.loads(run("info", *addr, "--format", "json").stdout)
    assert data["Self"]["Config"]["NodeName"] == "web1"
    assert data["Metrics"]["Gauges"][0]["Name"] == "meshnode.members"


def test_agent_unreachable_is_one_line() -> None:
    result = run("members", "--http-addr", f"127.0.0.1:{free_port()}")
    assert_one_line_error(result, 1, "connection refused — is `meshnode agent` running?")


def test_bad_http_addr_is_usage_error() -> None:
    result = run("members", env={"MESHNODE_HTTP_ADDR": "127.0.0.1:http"})
    assert_one_line_error(result, 2, "port 'http' is not a number")


def test_agent_command_builds_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    received: list[AgentConfig] = []

    def run_agent(config: AgentConfig) -> int:
        received.append(config)
        return 3

    fake = types.ModuleType("meshnode.agent.lifecycle")
    fake.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "meshnode.agent.lifecycle", fake)
    levels: list[str] = []
    monkeypatch.setattr("meshnode.cli.agent_cmd.setup_logging", levels.append)
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"node_meta": {"rack": "r1"}, "ports": {"http": 9000}}))
    result = run(
        "agent",
        "-dev",
        "-node",
        "n1",
        "-tag",
        "a=b",
        "-config-file",
        str(config_file),
        "-join",
        "10.0.0.1",
        "-retry-join=10.0.0.2:7000",
        "-log-level",
        "DEBUG",
    )
    assert result.exit_code == 3, result.output
    (config,) = received
    assert config.node_name == "n1"
    assert config.dev
    assert config.tags == {"rack": "r1", "a": "b"}
    assert config.http == ("127.0.0.1", 9000)
    assert config.join == ("10.0.0.1:7946",)
    assert config.retry_join == ("10.0.0.2:7000",)
    assert levels == ["debug"]


def test_agent_config_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run("agent"), 1, "a data directory is required")
    bad = tmp_path / "bad.json"
    bad.write_text('{"ports": {"http": "x"}}')
    assert_one_line_error(
        run("agent", "--dev", "--config-file", str(bad)), 1, f"config file {bad}: field"
    )


def test_main_returns_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    assert main(["no-such-command"]) == 2
    assert main(["members", "--http-addr", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-node", "n1"], ["--node", "n1"]),
        (["-node=n1", "-dev"], ["--node=n1", "--dev"]),
        (["-tag", "-node"], ["--tag", "-node"]),  # a value is never rewritten
        (["-x"], ["-x"]),  # one letter: click's own short option (or its error)
        (["--node", "a", "--", "-node", "-unknown"], ["--node", "a", "--", "-node", "-unknown"]),
        (["-n", "a"], ["-n", "a"]),
        (["-nvalue"], ["-nvalue"]),  # a short option with its value attached, as click reads it
    ],
)
def test_rewrite_single_dash(args: list[str], expected: list[str]) -> None:
    names = {"--node", "--dev", "--tag", "-n"}
    assert rewrite_single_dash(args, names, {"--node", "--tag", "-n"}) == expected


@pytest.mark.parametrize(
    ("args", "reported", "hint"),
    [
        (["-wan"], "-wan", None),  # click alone would say '-w'
        (["-tga", "a"], "-tga", "-tag"),
        (["--dev", "-tgas"], "-tgas", "-tag"),
    ],
)
def test_unknown_single_dash_word_is_reported_whole(
    args: list[str], reported: str, hint: str | None
) -> None:
    names = {"--node", "--dev", "--tag", "-n"}
    with pytest.raises(click.NoSuchOption) as caught:
        rewrite_single_dash(args, names, {"--node", "--tag", "-n"})
    assert caught.value.option_name == reported
    assert caught.value.possibilities == ([hint] if hint else [])


def test_cli_reports_a_whole_unknown_option() -> None:
    """What a Consul user typing `meshnode members -wan` sees: the option, whole, in one line."""
    for args, reported in (
        (["members", "-wan"], "-wan"),
        (["-wan"], "-wan"),
        (["members", "-htp-addr", "x"], "-htp-addr"),
    ):
        proc = subprocess.run(
            [str(MESHNODE), *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1
        assert f"No such option '{reported}'" in proc.stderr
    assert "Did you mean '-http-addr'?" in proc.stderr


def test_console_script_keygen() -> None:
    proc = subprocess.run([str(MESHNODE), "keygen"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert len(base64.b64decode(proc.stdout.strip())) == 32


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["members", "-http-addr", "127.0.0.1:{port}"], 1, "connection refused"),
        (["members", "--bogus"], 2, "No such option"),
        (["agent", "-data-dir", "/nonexistent/x"], 1, "an encryption key is required"),
        (["force-leave"], 2, "Missing argument 'NODE'"),
        (
            ["connect", "proxy", "-service", "web", "-upstream", "db:9191", "-log-level", "bogus"],
            2,
            "Invalid value for '--log-level'",
        ),
    ],
)
def test_console_script_errors_are_one_line(args: list[str], code: int, fragment: str) -> None:
    argv = [a.format(port=free_port()) for a in args]
    proc = subprocess.run([str(MESHNODE), *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]


def test_console_script_against_the_api(threaded_api_port: int) -> None:
    proc = subprocess.run(
        [str(MESHNODE), "members", "-status", "alive"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"MESHNODE_HTTP_ADDR": f"127.0.0.1:{threaded_api_port}", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["Node", "db1", "web1"]


def test_console_script_honours_consul_http_addr(threaded_api_port: int) -> None:
    """A shell set up for Consul's tools (CONSUL_HTTP_ADDR) drives meshnode; ours comes first."""
    good = f"127.0.0.1:{threaded_api_port}"
    dead = f"127.0.0.1:{free_port()}"

    def members(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MESHNODE), "members", "-status", "alive"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", **env},
        )

    consul_only = members({"CONSUL_HTTP_ADDR": f"http://{good}"})
    assert consul_only.returncode == 0, consul_only.stderr
    assert [line.split()[0] for line in consul_only.stdout.splitlines()] == ["Node", "db1", "web1"]
    ours_first = members({"MESHNODE_HTTP_ADDR": dead, "CONSUL_HTTP_ADDR": good})
    assert ours_first.returncode == 1
    assert f"cannot reach the agent at {dead}" in ours_first.stderr
    flag_first = subprocess.run(
        [str(MESHNODE), "members", "-http-addr", good],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CONSUL_HTTP_ADDR": dead},
    )
    assert flag_first.returncode == 0, flag_first.stderr
