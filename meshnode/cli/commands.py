"""The commands that talk to a running agent, plus `keygen`."""

from __future__ import annotations

import json
import re

import click

from ..addr import AddressError, parse_host_port
from ..agent.keys import KeyFormatError, decode_key, generate_key
from ..client import AgentClient, ClientError
from ..config import DEFAULT_GOSSIP_PORT
from .app import EXIT_FAILURE, cli
from .options import format_option, http_addr_option
from .render import format_table, info_lines, member_row, status_name

# `members` exits 2 when the filter matches nothing, as `consul members` does.
EXIT_NO_MATCH = 2


def _join_address(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    for value in values:
        try:
            parse_host_port(value, default_port=DEFAULT_GOSSIP_PORT, require_ip=False)
        except AddressError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return values


@cli.command()
@http_addr_option
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR...", callback=_join_address)
def join(http_addr: str | None, addresses: tuple[str, ...]) -> int:
    """Ask the agent to join the cluster through ADDR (IP[:PORT] or HOST[:PORT])."""
    client = AgentClient.from_flag(http_addr)
    joined = 0
    for address in addresses:
        try:
            client.join(address)
        except ClientError as exc:
            if exc.status is None:
                raise  # the agent itself is unreachable: one line, not one per address
            click.echo(f"Error: joining {address}: {exc}", err=True)
            continue
        joined += 1
    if joined == 0:
        return EXIT_FAILURE
    click.echo(f"Successfully joined cluster by contacting {joined} nodes.")
    return 0


def _status_regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"{value!r} is not a regular expression: {exc}") from None
    return value


@cli.command()
@http_addr_option
@click.option(
    "--status",
    metavar="REGEX",
    callback=_status_regex,
    help="Only members whose status (alive, leaving, left, failed, suspect) matches.",
)
@click.option("--detailed", is_flag=True, help="Add the fine-grained state and protocol.")
@format_option
def members(http_addr: str | None, status: str | None, detailed: bool, output_format: str) -> int:
    """List the members this agent knows (exit 2 when none matches --status)."""
    found = AgentClient.from_flag(http_addr).members()
    if status is not None:
        pattern = re.compile(status)
        found = [
            m
            for m in found
            if pattern.fullmatch(status_name(m)) or pattern.fullmatch(str(m.get("State", "")))
        ]
    found.sort(key=lambda m: str(m.get("Name", "")))
    if output_format == "json":
        click.echo(json.dumps(found, indent=2))
    elif found:
        header = ["Node", "Address", "Status"]
        header += ["State", "Protocol", "Tags"] if detailed else ["Tags"]
        rows = [member_row(m, detailed=detailed) for m in found]
        for line in format_table(header, rows):
            click.echo(line)
    return 0 if found else EXIT_NO_MATCH


@cli.command()
@http_addr_option
def leave(http_addr: str | None) -> None:
    """Make the agent leave the cluster gracefully and stop."""
    AgentClient.from_flag(http_addr).leave()
    click.echo("Graceful leave complete")


@cli.command()
@http_addr_option
def reload(http_addr: str | None) -> None:
    """Make the agent read its config files again (like SIGHUP): services, log level, token."""
    AgentClient.from_flag(http_addr).request("PUT", "/v1/agent/reload")
    click.echo("Configuration reload triggered")


@cli.command("force-leave")
@http_addr_option
@click.argument("node")
def force_leave(http_addr: str | None, node: str) -> None:
    """Mark a failed NODE as left, so the others stop trying to reach it."""
    AgentClient.from_flag(http_addr).force_leave(node)
    click.echo(f"Force leave of {node} complete")


@cli.command()
def keygen() -> None:
    """Print a new random gossip encryption key (base64, 32 bytes)."""
    click.echo(generate_key())


def _key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            decode_key(value)
        except KeyFormatError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value.strip()
    return value


@cli.command()
@http_addr_option
@click.option("--install", metavar="KEY", callback=_key, help="Add KEY to every keyring.")
@click.option("--use", metavar="KEY", callback=_key, help="Encrypt with KEY (must be installed).")
@click.option("--remove", metavar="KEY", callback=_key, help="Remove KEY from every keyring.")
@click.option(
    "--list", "list_keys", is_flag=True, help="List the keys and how many nodes hold each."
)
def keyring(
    http_addr: str | None,
    install: str | None,
    use: str | None,
    remove: str | None,
    list_keys: bool,
) -> None:
    """Rotate the gossip encryption keys of the whole cluster (one action at a time)."""
    chosen = [
        name
        for name, v in [
            ("--install", install),
            ("--use", use),
            ("--remove", remove),
            ("--list", list_keys),
        ]
        if v
    ]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --install, --use, --remove or --list")
    client = AgentClient.from_flag(http_addr)
    if install:
        click.echo("==> Installing new gossip encryption key...")
        client.keyring_install(install)
    elif use:
        click.echo("==> Changing primary gossip encryption key...")
        client.keyring_use(use)
    elif remove:
        click.echo("==> Removing gossip encryption key...")
        client.keyring_remove(remove)
    else:
        click.echo("==> Gathering installed encryption keys...")
        for entry in client.keyring_list():
            click.echo(f"\n{entry.get('Datacenter', '')} (LAN):")
            total = entry.get("NumNodes", 0)
            primary = entry.get("PrimaryKeys") or {}
            for key, count in sorted((entry.get("Keys") or {}).items()):
                mark = "  (primary)" if key in primary else ""
                click.echo(f"  {key} [{count}/{total}]{mark}")
            for node, message in sorted((entry.get("Messages") or {}).items()):
                click.echo(f"  error from {node}: {message}")


@cli.command()
@http_addr_option
@format_option
def info(http_addr: str | None, output_format: str) -> None:
    """Show the agent's identity, gossip statistics and metrics."""
    client = AgentClient.from_flag(http_addr)
    self_info, metrics = client.self_info(), client.metrics()
    if output_format == "json":
        click.echo(json.dumps({"Self": self_info, "Metrics": metrics}, indent=2))
        return
    for line in info_lines(self_info, metrics):
        click.echo(line)
