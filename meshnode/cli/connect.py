"""`meshnode connect proxy` (a proxy in the foreground) and `meshnode connect ls`.

`connect proxy` runs one proxy against the local agent's HTTP API: the leaf
and roots, the intentions and the upstream instances all come from it by
blocking queries (`meshnode.connect.agent_sources`). ``-listen`` with
``-service-addr`` adds the inbound listener in front of the local service;
``-register`` registers the proxy in the catalog as ``<NAME>-sidecar-proxy``
(kind connect-proxy) while it runs, which is also what lets the agent issue
a leaf for NAME when NAME itself is not registered on this agent. On exit
(Ctrl-C, SIGTERM) it deregisters and prints its counters.

`connect ls` lists the proxies the agent runs (``GET /v1/agent/connect/proxies``).
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click
import trio

from ..addr import AddressError, parse_host_port
from ..client import AgentClient, ClientError
from ..connect.agent_sources import (
    AgentHttp,
    HttpAuthorizer,
    HttpCertSource,
    HttpResolver,
    HttpRevocations,
)
from ..intentions.rules import IntentionError, validate_name
from ..logs import LEVELS, setup_logging
from ..proxy.sidecar import Proxy, ProxyConfig, UpstreamConfig
from .app import cli
from .dashopts import DashGroup
from .options import format_option, http_addr_option
from .render import format_table

__all__ = ["connect", "parse_upstream", "proxy_table"]

_SIDECAR_SUFFIX = "-sidecar-proxy"
# Consul checks a sidecar's public listener every 10 s; the same here.
_CHECK_INTERVAL = "10s"


@cli.group("connect", cls=DashGroup)
def connect() -> None:
    """Service mesh proxies: run one in the foreground, or list the agent's."""


def parse_upstream(text: str) -> UpstreamConfig:
    """``DEST:PORT`` (bound on 127.0.0.1) or ``DEST:IP:PORT``; `click.BadParameter` else."""
    dest, sep, rest = text.partition(":")
    if not sep or dest == "*":
        raise click.BadParameter(f"{text!r} is not DEST:PORT with one destination service")
    try:
        validate_name(dest, "upstream")
        address, port = (
            parse_host_port(rest) if ":" in rest else ("127.0.0.1", int(rest) if rest else -1)
        )
    except (IntentionError, AddressError, ValueError) as exc:
        raise click.BadParameter(f"{text!r}: {exc}") from None
    if not 0 < port < 65536:
        raise click.BadParameter(f"{text!r}: the port must be 1..65535")
    return UpstreamConfig(dest, port, address)


def _address(value: str | None, what: str) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_host_port(value)
    except AddressError as exc:
        raise click.BadParameter(f"{what} {value!r}: {exc}") from None


def _registration(config: ProxyConfig) -> dict[str, Any]:
    proxy_id = config.service + _SIDECAR_SUFFIX
    return {
        "ID": proxy_id,
        "Name": proxy_id,
        "Kind": "connect-proxy",
        "Address": config.listen_address,
        "Port": config.listen_port,
        "Proxy": {
            "DestinationServiceName": config.service,
            "LocalServiceAddress": config.local_service_address,
            "LocalServicePort": config.local_service_port,
            "Upstreams": [
                {
                    "DestinationName": u.destination,
                    "LocalBindAddress": u.local_bind_address,
                    "LocalBindPort": u.local_bind_port,
                }
                for u in config.upstreams
            ],
        },
        "Check": {
            "Name": "Connect Proxy Listening",
            "TCP": f"{config.listen_address}:{config.listen_port}",
            "Interval": _CHECK_INTERVAL,
        },
    }


async def run_proxy(
    config: ProxyConfig,
    agent: AgentHttp,
    *,
    task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `config` against the agent until cancelled; `ClientError` if no leaf can be had."""
    certs = HttpCertSource(agent, config.service)
    authorizer = HttpAuthorizer(agent)
    revocations = HttpRevocations(agent)
    resolver = HttpResolver(agent)
    async with trio.open_nursery() as nursery:
        await nursery.start(resolver.run)
        await nursery.start(authorizer.run)
        await nursery.start(revocations.run)
        await nursery.start(certs.run)
        if certs.current() is None:
            why = certs.last_error or "the agent has no CA yet"
            raise ClientError(f"no certificate for service {config.service!r}: {why}")
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))  # the process's one seed
        proxy = Proxy(
            config,
            certs=certs,
            authorizer=authorizer,
            resolver=resolver,
            rng=rng,
            revocations=revocations,
        )
        await nursery.start(proxy.run)
        task_status.started(proxy)


def _print_state(proxy: Proxy) -> None:
    for line in proxy_table([proxy.snapshot()]):
        click.echo(line)


@connect.command("proxy")
@http_addr_option
@click.option("--service", "service", required=True, metavar="NAME", help="The local service.")
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="DEST:PORT",
    help="Listen on 127.0.0.1:PORT for DEST (repeatable).",
)
@click.option("--listen", metavar="IP:PORT", help="The inbound (public) mTLS listener.")
@click.option("--service-addr", metavar="IP:PORT", help="Where the local service listens.")
@click.option("--register", is_flag=True, help="Register as <NAME>-sidecar-proxy while running.")
@click.option(
    "--log-level",
    type=click.Choice([*LEVELS, "warn", "trace"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Log level.",
)
def connect_proxy(
    http_addr: str | None,
    service: str,
    upstreams: Sequence[str],
    listen: str | None,
    service_addr: str | None,
    register: bool,
    log_level: str,
) -> None:
    """Run a proxy for service NAME in the foreground, using the local agent."""
    try:
        if validate_name(service, "service") == "*":
            raise IntentionError("-service must name one service, not '*'")
    except IntentionError as exc:
        raise click.BadParameter(str(exc), param_hint="--service") from None
    listen_at = _address(listen, "-listen")
    service_at = _address(service_addr, "-service-addr")
    if (listen_at is None) != (service_at is None):
        raise click.UsageError("-listen and -service-addr go together")
    if register and listen_at is None:
        raise click.UsageError("-register needs -listen (the catalog lists the public listener)")
    if listen_at is None and not upstreams:
        raise click.UsageError("nothing to do: give -upstream, or -listen and -service-addr")
    config = ProxyConfig(
        proxy_id=service + _SIDECAR_SUFFIX,
        service=service,
        listen_address=listen_at[0] if listen_at else "127.0.0.1",
        listen_port=listen_at[1] if listen_at else None,
        local_service_address=service_at[0] if service_at else "127.0.0.1",
        local_service_port=service_at[1] if service_at else 0,
        upstreams=tuple(parse_upstream(u) for u in upstreams),
    )
    setup_logging(log_level)
    client = AgentClient.from_flag(http_addr)
    agent = AgentHttp(client.host, client.port, client.token)
    if register:
        client.request("PUT", "/v1/agent/service/register", _registration(config))
    proxy: Proxy | None = None

    async def main() -> None:
        nonlocal proxy
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(run_proxy, config, agent)
            click.echo(f"Proxy {config.proxy_id} running; Ctrl-C stops it.")
            _print_state(proxy)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was up
        pass
    except BaseExceptionGroup as group:  # raised inside the nursery: one line for the user
        found = _client_error(group)
        if found is None:
            raise
        raise found from None
    finally:
        if register:
            path = f"/v1/agent/service/deregister/{quote(config.proxy_id, safe='')}"
            try:
                client.request("PUT", path)
            except ClientError as exc:
                click.echo(f"Warning: could not deregister {config.proxy_id}: {exc}", err=True)
    if proxy is not None:
        _print_state(proxy)


def _client_error(group: BaseExceptionGroup[BaseException]) -> ClientError | None:
    for exc in group.exceptions:
        if isinstance(exc, ClientError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _client_error(exc)
            if found is not None:
                return found
    return None


def proxy_table(proxies: list[dict[str, Any]]) -> list[str]:
    """One row per listener of each proxy, with its counters."""
    rows: list[list[str]] = []
    for p in proxies:
        inbound = p.get("Inbound")
        if inbound:
            rows.append(
                [
                    str(p["ID"]),
                    "inbound",
                    f"{inbound['Address']}:{inbound['Port']}",
                    f"{inbound['LocalServiceAddress']}:{inbound['LocalServicePort']}",
                    *_counters(inbound),
                ]
            )
        for u in p.get("Upstreams", []):
            rows.append(
                [
                    str(p["ID"]),
                    "upstream",
                    f"{u['LocalBindAddress']}:{u['LocalBindPort']}",
                    str(u["DestinationName"]),
                    *_counters(u),
                ]
            )
    header = ["Proxy", "Listener", "Address", "Target", "Live", "Accepted", "Denied", "Failed"]
    return format_table(header, rows)


def _counters(listener: dict[str, Any]) -> list[str]:
    failed = int(listener.get("Failed", 0)) + int(listener.get("HandshakeFailed", 0))
    return [
        str(listener.get("Active", 0)),
        str(listener.get("Accepted", 0)),
        str(listener.get("Denied", 0)),
        str(failed),
    ]


@connect.command("ls")
@http_addr_option
@format_option
def connect_ls(http_addr: str | None, output_format: str) -> None:
    """List the agent's proxies: listeners, upstreams and live connection counts."""
    found = AgentClient.from_flag(http_addr).request("GET", "/v1/agent/connect/proxies")
    if not isinstance(found, list):
        raise ClientError("unexpected answer from /v1/agent/connect/proxies")
    if output_format == "json":
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("No proxies run on this agent.")
        return
    click.echo("\n".join(proxy_table(found)))
