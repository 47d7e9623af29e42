"""Managed sidecars from catalog records, the proxies endpoint and `meshnode connect`."""

from __future__ import annotations

import random
import socket
from typing import Any

import click
import pytest
import trio
from click.testing import CliRunner

import meshnode.cli.connect as connect_cli
from meshnode.api.proxy_endpoints import register_proxy_routes
from meshnode.catalog.checks import CheckSpec, Report
from meshnode.catalog.definitions import parse_service
from meshnode.catalog.probes import probe_tcp
from meshnode.catalog.records import ServiceRecord
from meshnode.cli import cli
from meshnode.http import Router
from meshnode.http.testing import serve_in_thread
from meshnode.proxy import Instance, Limits, Proxy, ProxyConfig, UpstreamConfig
from meshnode.proxy.testing import (
    StaticAuthorizer,
    StaticCertSource,
    StaticResolver,
    TestCA,
    echo,
)
from meshnode.sidecars.manager import SidecarManager, sidecar_configs
from tests.proxy.conftest import HOST, read_all, round_trip, serve


class FakeRunner:
    """The catalog's check runner, doing nothing (the tests set no checks)."""

    def __init__(self, report: Report) -> None:
        self.report = report

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def set(self, specs: list[CheckSpec]) -> None:
        pass

    def update(self, changed: list[CheckSpec], removed: list[str]) -> None:
        pass

    def ttl_update(self, check_id: str, status: str, output: str) -> None:
        pass


def sidecar_record(port: int, app_port: int, upstreams: list[dict[str, Any]]) -> ServiceRecord:
    definition = parse_service(
        {
            "Name": "db-sidecar-proxy",
            "Kind": "connect-proxy",
            "Port": port,
            "Address": HOST,
            "Proxy": {
                "DestinationServiceName": "db",
                "LocalServicePort": app_port,
                "Upstreams": upstreams,
            },
        }
    )
    return ServiceRecord("n1", definition, sidecar_of="db")


def test_sidecar_configs_take_connect_proxies_only() -> None:
    plain = ServiceRecord("n1", parse_service({"Name": "db", "Port": 5432}))
    record = sidecar_record(21000, 5432, [{"DestinationName": "cache", "LocalBindPort": 9191}])
    configs = sidecar_configs([plain, record], default_address="10.0.0.1", limits=Limits())
    assert configs == {
        "db-sidecar-proxy": ProxyConfig(
            proxy_id="db-sidecar-proxy",
            service="db",
            listen_address=HOST,
            listen_port=21000,
            listen_port_range=(21000, 21255),  # an automatic port may move in the range
            local_service_address="127.0.0.1",
            local_service_port=5432,
            upstreams=(UpstreamConfig("cache", 9191),),
        )
    }


async def test_manager_starts_and_stops_sidecars_closing_their_connections(ca: TestCA) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            app_port = await serve(nursery, echo)
            with trio.socket.socket() as probe:
                await probe.bind((HOST, 0))
                sidecar_port = probe.getsockname()[1]
            resolver = StaticResolver({"db": [Instance(HOST, sidecar_port)]})
            manager = SidecarManager(
                certs_for=lambda service: StaticCertSource(ca.material(service)),
                authorizer=StaticAuthorizer(),
                resolver=resolver,
                default_address=HOST,
            )
            manager.update([sidecar_record(sidecar_port, app_port, [])])  # before run: kept
            await nursery.start(manager.run)
            # A client proxy for "web", outside the manager, dials the managed sidecar.
            web = Proxy(
                ProxyConfig("web-sidecar-proxy", "web", upstreams=(UpstreamConfig("db", 0),)),
                certs=StaticCertSource(ca.material("web")),
                authorizer=StaticAuthorizer(),
                resolver=resolver,
                rng=random.Random(0),
            )
            await nursery.start(web.run)
            port = web.upstream_ports["db"]
            with trio.fail_after(3):
                while await round_trip(port) != b"ping":
                    await trio.sleep(0.05)
            live = await trio.open_tcp_stream(HOST, port)
            async with live:
                await live.send_all(b"x")
                assert await live.receive_some(1) == b"x"
                assert [p["ID"] for p in manager.snapshot()] == ["db-sidecar-proxy"]
                manager.update([])  # the service was deregistered
                with trio.fail_after(3):
                    assert await read_all(live) == b""
            assert manager.snapshot() == []
            assert await round_trip(port) == b""
            nursery.cancel_scope.cancel()


async def test_apply_looks_only_at_the_changed_services(
    ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog change reconciles its own service IDs, not every local sidecar (issue 6)."""
    import meshnode.sidecars.manager as manager_module

    seen: list[list[str]] = []
    real = manager_module.sidecar_configs

    def counting(records: Any, **kwargs: Any) -> Any:
        records = list(records)
        seen.append([r.service_id for r in records])
        return real(records, **kwargs)

    monkeypatch.setattr(manager_module, "sidecar_configs", counting)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            app_port = await serve(nursery, echo)
            manager = SidecarManager(
                certs_for=lambda service: StaticCertSource(ca.material(service)),
                authorizer=StaticAuthorizer(),
                resolver=StaticResolver(),
                default_address=HOST,
            )
            await nursery.start(manager.run)
            with trio.socket.socket() as probe:
                await probe.bind((HOST, 0))
                sidecar_port = probe.getsockname()[1]
            record = sidecar_record(sidecar_port, app_port, [])
            manager.apply({"db-sidecar-proxy": record})
            [first] = manager.proxies()
            seen.clear()
            plain = ServiceRecord("n1", parse_service({"Name": "cache", "Port": 6379}))
            manager.apply({"cache": plain, "gone": None})
            assert seen == [["cache"]]  # the sidecar's record was not looked at
            assert manager.proxies() == [first]
            moved = sidecar_record(sidecar_port, app_port + 1, [])
            manager.apply({"db-sidecar-proxy": moved})  # changed settings: restarted
            [second] = manager.proxies()
            assert second is not first and second.config.local_service_port == app_port + 1
            manager.apply({"db-sidecar-proxy": None})
            assert manager.proxies() == []
            nursery.cancel_scope.cancel()


def _taken_sidecar_port() -> socket.socket:
    """A listener on a port of the sidecar range: another agent's sidecar on this host."""
    for port in range(21255, 21000, -1):
        blocker = socket.socket()
        try:
            blocker.bind((HOST, port))
        except OSError:
            blocker.close()
            continue
        blocker.listen()
        return blocker
    raise AssertionError("every sidecar port is taken")


async def test_a_taken_port_moves_and_the_check_asks_the_sidecar_not_the_port(
    ca: TestCA,
) -> None:
    with trio.fail_after(10), _taken_sidecar_port() as blocker:
        taken = blocker.getsockname()[1]
        spec = CheckSpec("service:db-sidecar-proxy", "tcp", tcp=f"{HOST}:{taken}")
        async with trio.open_nursery() as nursery:
            app_port = await serve(nursery, echo)
            moves: list[tuple[str, int]] = []
            manager = SidecarManager(
                certs_for=lambda service: StaticCertSource(ca.material(service)),
                authorizer=StaticAuthorizer(),
                resolver=StaticResolver(),
                default_address=HOST,
                move_port=lambda proxy_id, port: moves.append((proxy_id, port)),
            )
            record = sidecar_record(taken, app_port, [])
            manager.update([record])
            # Not started yet: the port answers (the blocker), yet the check is critical.
            assert await probe_tcp(spec.tcp, 2.0) == ("passing", f"TCP connect {spec.tcp}: Success")
            status, output = manager.listening_status(spec) or ("", "")
            assert status == "critical" and "not listening" in output
            await nursery.start(manager.run)
            with trio.fail_after(3):
                while not moves:
                    await trio.sleep(0.01)
            [(proxy_id, moved_to)] = moves
            assert proxy_id == "db-sidecar-proxy" and moved_to != taken
            assert 21000 <= moved_to <= 21255
            [proxy] = manager.proxies()
            assert proxy.inbound_port == moved_to and proxy.listening
            status, output = manager.listening_status(spec) or ("", "")
            assert status == "critical" and f"listens on port {moved_to}" in output
            # The catalog records the move: the same proxy keeps serving, the check passes.
            manager.apply({"db-sidecar-proxy": sidecar_record(moved_to, app_port, [])})
            assert manager.proxies() == [proxy]
            moved_spec = CheckSpec(spec.check_id, "tcp", tcp=f"{HOST}:{moved_to}")
            assert (manager.listening_status(moved_spec) or ("",))[0] == "passing"
            # Checks that are not the sidecar's own are left to the usual probe.
            other = CheckSpec("service:db", "tcp", tcp=f"{HOST}:{moved_to}")
            assert manager.listening_status(other) is None
            manager.update([])
            assert manager.listening_status(moved_spec) is None
            nursery.cancel_scope.cancel()


async def test_a_port_outside_the_range_does_not_move(ca: TestCA) -> None:
    """A port the user chose stays: the sidecar fails to start and its check says so."""
    with trio.fail_after(10), socket.socket() as blocker:
        blocker.bind((HOST, 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        async with trio.open_nursery() as nursery:
            manager = SidecarManager(
                certs_for=lambda service: StaticCertSource(ca.material(service)),
                authorizer=StaticAuthorizer(),
                resolver=StaticResolver(),
                default_address=HOST,
            )
            manager.update([sidecar_record(taken, 1, [])])
            await nursery.start(manager.run)
            with trio.fail_after(3):
                while manager.proxies():
                    await trio.sleep(0.01)
            spec = CheckSpec("service:db-sidecar-proxy", "tcp", tcp=f"{HOST}:{taken}")
            assert (manager.listening_status(spec) or ("",))[0] == "critical"
            nursery.cancel_scope.cancel()


def test_parse_upstream() -> None:
    assert connect_cli.parse_upstream("db:9191") == UpstreamConfig("db", 9191)
    assert connect_cli.parse_upstream("db:127.0.0.2:9191") == UpstreamConfig(
        "db", 9191, "127.0.0.2"
    )
    for bad in ("db", "db:0", "db:x", "*:80", "db:70000"):
        with pytest.raises(click.BadParameter):
            connect_cli.parse_upstream(bad)


class CannedRegistry:
    def __init__(self, snapshot: list[dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> list[dict[str, Any]]:
        return self._snapshot


def test_connect_ls_lists_the_agent_proxies(ca: TestCA) -> None:
    proxy = Proxy(
        ProxyConfig(
            "web-sidecar-proxy",
            "web",
            listen_address=HOST,
            listen_port=21000,
            local_service_port=8080,
            upstreams=(UpstreamConfig("db", 9191),),
        ),
        certs=StaticCertSource(),
        authorizer=StaticAuthorizer(),
        resolver=StaticResolver(),
        rng=random.Random(0),
    )
    router = Router()
    register_proxy_routes(router, CannedRegistry([proxy.snapshot()]))
    runner = CliRunner()
    with serve_in_thread(router) as port:
        result = runner.invoke(cli, ["connect", "ls", "-http-addr", f"{HOST}:{port}"])
        as_json = runner.invoke(
            cli, ["connect", "ls", "--http-addr", f"{HOST}:{port}", "--format", "json"]
        )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "Proxy",
        "Listener",
        "Address",
        "Target",
        "Live",
        "Accepted",
        "Denied",
        "Failed",
    ]
    assert lines[1].split() == [
        "web-sidecar-proxy",
        "inbound",
        "127.0.0.1:21000",
        "127.0.0.1:8080",
        "0",
        "0",
        "0",
        "0",
    ]
    assert lines[2].split()[:4] == ["web-sidecar-proxy", "upstream", "127.0.0.1:9191", "db"]
    assert as_json.exit_code == 0 and '"DestinationName": "db"' in as_json.output


def test_connect_proxy_refuses_bad_flags() -> None:
    runner = CliRunner()
    for args, message in (
        (["-service", "web"], "nothing to do"),
        (["-service", "web", "-listen", "127.0.0.1:21000"], "go together"),
        (["-service", "web", "-upstream", "db:9191", "-register"], "-register needs -listen"),
    ):
        result = runner.invoke(cli, ["connect", "proxy", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_connect_proxy_without_a_leaf_exits_1_with_the_agent_reason() -> None:
    runner = CliRunner()
    with serve_in_thread(Router()) as port:  # an agent that knows nothing: 404 everywhere
        with socket.socket() as probe:
            probe.bind((HOST, 0))  # a free port for the upstream listener
            free = probe.getsockname()[1]
        result = runner.invoke(
            cli,
            [
                *("connect", "proxy", "-http-addr", f"{HOST}:{port}", "-service", "web"),
                *("-upstream", f"db:{free}", "-log-level", "error"),
            ],
        )
    assert result.exit_code == 1, result.output
    assert "no certificate for service 'web'" in result.output
    assert "404" in result.output
