"""`meshnode catalog services|nodes` and `meshnode services register|deregister`.

Consul's commands over the agent's HTTP API. `services register` checks the
file here first, so a mistake is reported with the file's name and field
before anything is sent, then registers each service through
``PUT /v1/agent/service/register`` (the agent accepts the file's snake_case).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from ..catalog.definitions import DefinitionError, ServiceDefinition, parse_file_definitions
from ..client import AgentClient, ClientError
from .app import cli
from .dashopts import DashGroup
from .options import http_addr_option
from .render import format_table

__all__ = ["catalog", "services"]

# A definition file is a few KiB; a bigger one is the wrong file.
DEFINITION_FILE_MAX_BYTES = 1024 * 1024


@cli.group("catalog", cls=DashGroup)
def catalog() -> None:
    """List the services and nodes of the cluster's catalog."""


@catalog.command("services")
@http_addr_option
@click.option("--tags", is_flag=True, help="Show each service's tags beside it.")
def catalog_services(http_addr: str | None, tags: bool) -> None:
    """Print every registered service name (with -tags, its tags too)."""
    found = AgentClient.from_flag(http_addr).request("GET", "/v1/catalog/services")
    if not isinstance(found, dict):
        raise ClientError("unexpected answer from /v1/catalog/services: not a JSON object")
    width = max((len(name) for name in found), default=0)
    for name in sorted(found):
        line = f"{name.ljust(width)}  {','.join(found[name] or [])}" if tags else name
        click.echo(line.rstrip())


@catalog.command("nodes")
@http_addr_option
def catalog_nodes(http_addr: str | None) -> None:
    """Print every node of the catalog: name, ID, address and datacenter."""
    found = AgentClient.from_flag(http_addr).request("GET", "/v1/catalog/nodes")
    if not isinstance(found, list):
        raise ClientError("unexpected answer from /v1/catalog/nodes: not a JSON list")
    rows = [
        [
            str(n.get("Node", "")),
            str(n.get("ID", ""))[:8],
            str(n.get("Address", "")),
            str(n.get("Datacenter", "")),
        ]
        for n in found
        if isinstance(n, dict)
    ]
    for line in format_table(["Node", "ID", "Address", "DC"], rows):
        click.echo(line)


@cli.group("services", cls=DashGroup)
def services() -> None:
    """Register and deregister services on the local agent."""


def _read_definitions(path: Path) -> list[tuple[dict[str, Any], ServiceDefinition]]:
    """The file's service objects, each with its validated form; one-line errors."""
    try:
        raw = path.read_bytes()[: DEFINITION_FILE_MAX_BYTES + 1]
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > DEFINITION_FILE_MAX_BYTES:
        raise click.ClickException(f"{path} is over {DEFINITION_FILE_MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path} is not valid JSON: {exc}") from None
    try:
        parsed = parse_file_definitions(data, str(path))
    except DefinitionError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    raw_services: list[dict[str, Any]] = []
    for key, value in data.items():  # the keys and order parse_file_definitions accepted
        raw_services += [value] if key == "service" else value
    return list(zip(raw_services, parsed, strict=True))


@services.command("register")
@http_addr_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def services_register(http_addr: str | None, file: Path) -> None:
    """Register the services of a definition FILE (Consul's JSON: "service" or "services")."""
    client = AgentClient.from_flag(http_addr)
    for raw, parsed in _read_definitions(file):
        client.request("PUT", "/v1/agent/service/register", raw)
        click.echo(f"Registered service: {parsed.name}")


@services.command("deregister")
@http_addr_option
@click.argument("service_id", metavar="ID")
def services_deregister(http_addr: str | None, service_id: str) -> None:
    """Remove the local service ID (with its checks and sidecar)."""
    client = AgentClient.from_flag(http_addr)
    client.request("PUT", f"/v1/agent/service/deregister/{quote(service_id, safe='')}")
    click.echo(f"Deregistered service: {service_id}")
