"""`meshnode intention ...`: Consul's intention commands over the agent's HTTP API.

`allow` and `deny` create or replace; `create` refuses to replace unless told
(-replace). `get` and `delete` take an intention ID or SRC DST, as Consul's do;
names may carry Consul's `default/` namespace and partition prefixes.
`check` prints Allowed (exit 0) or Denied (exit 1), and exits 2 on any error,
so scripts can tell "denied" from "could not ask".
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import click

from ..client import AgentClient, ClientError
from ..intentions.rules import IntentionError, plain_name
from .app import EXIT_USAGE, cli
from .dashopts import DashGroup
from .options import format_option, http_addr_option
from .render import format_table

__all__ = ["intention"]

_BASE = "/v1/connect/intentions"
_CONFLICT = 409
_ROLES = {"SRC": "source", "DST": "destination"}


class _CheckError(click.ClickException):
    """`check` could not decide: exit 2, never 1, which means Denied."""

    exit_code = EXIT_USAGE


@cli.group("intention", cls=DashGroup)
def intention() -> None:
    """Allow or deny connections between services (Consul's intentions)."""


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """SRC, DST or NAME checked here, so a typo fails before the agent is asked."""
    role = _ROLES.get(param.human_readable_name, "name")
    try:
        return plain_name(value, role)
    except IntentionError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _target(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> str:
    """`ID` or `SRC DST` (Consul's two forms) as the API path that names the intention."""
    if len(value) == 1:
        intention_id = value[0]
        if not intention_id or "/" in intention_id or "*" in intention_id:
            raise click.BadParameter(
                f"{intention_id[:60]!r} is not an intention ID; give an ID or SRC DST",
                ctx=ctx,
                param=param,
            )
        return f"{_BASE}/{quote(intention_id, safe='')}"
    if len(value) != 2:
        raise click.BadParameter(
            f"give an intention ID or SRC DST, not {len(value)} arguments", ctx=ctx, param=param
        )
    try:
        source, destination = plain_name(value[0], "source"), plain_name(value[1], "destination")
    except IntentionError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return _exact(source, destination)


def _id_or_src_dst(func: Any) -> Any:
    return click.argument("target", metavar="ID|SRC DST", nargs=-1, callback=_target)(func)


def _exact(source: str, destination: str) -> str:
    return f"{_BASE}/exact?" + urlencode({"source": source, "destination": destination})


def _upsert(http_addr: str | None, source: str, destination: str, body: dict[str, Any]) -> None:
    AgentClient.from_flag(http_addr).request("PUT", _exact(source, destination), body)
    click.echo(f"Created: {source} => {destination} ({body['Action']})")


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--meta'")
        meta[key] = value
    return meta


def _src_dst(func: Any) -> Any:
    func = click.argument("destination", metavar="DST", callback=_name)(func)
    return click.argument("source", metavar="SRC", callback=_name)(func)


@intention.command("allow")
@http_addr_option
@_src_dst
def intention_allow(http_addr: str | None, source: str, destination: str) -> None:
    """Allow SRC to connect to DST (creates or replaces the intention)."""
    _upsert(http_addr, source, destination, {"Action": "allow"})


@intention.command("deny")
@http_addr_option
@_src_dst
def intention_deny(http_addr: str | None, source: str, destination: str) -> None:
    """Deny SRC connections to DST (creates or replaces). `deny '*' '*'` makes the default deny."""
    _upsert(http_addr, source, destination, {"Action": "deny"})


@intention.command("create")
@http_addr_option
@click.option("--allow", "allow", is_flag=True, help="Allow the connection (the default).")
@click.option("--deny", "deny", is_flag=True, help="Deny the connection.")
@click.option("--replace", is_flag=True, help="Replace an existing intention for SRC and DST.")
@click.option("--description", default="", metavar="TEXT", help="Free text kept with it.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata (repeatable).")
@_src_dst
def intention_create(
    http_addr: str | None,
    allow: bool,
    deny: bool,
    replace: bool,
    description: str,
    meta: tuple[str, ...],
    source: str,
    destination: str,
) -> None:
    """Create an intention from SRC to DST; fails if one exists, unless -replace."""
    if allow and deny:
        raise click.UsageError("use -allow or -deny, not both")
    body: dict[str, Any] = {"Action": "deny" if deny else "allow"}
    if description:
        body["Description"] = description
    if meta:
        body["Meta"] = _meta(meta)
    if replace:
        _upsert(http_addr, source, destination, body)
        return
    created = {"SourceName": source, "DestinationName": destination, **body}
    try:
        AgentClient.from_flag(http_addr).request("POST", _BASE, created)
    except ClientError as exc:
        if exc.status != _CONFLICT:
            raise
        raise click.ClickException(
            f"an intention from {source} to {destination} already exists; "
            "use -replace to replace it"
        ) from None
    click.echo(f"Created: {source} => {destination} ({body['Action']})")


@intention.command("delete")
@http_addr_option
@_id_or_src_dst
def intention_delete(http_addr: str | None, target: str) -> None:
    """Delete the intention with this ID, or from SRC to DST (done if there is none)."""
    AgentClient.from_flag(http_addr).request("DELETE", target)
    click.echo("Intention deleted.")


@intention.command("get")
@http_addr_option
@_id_or_src_dst
def intention_get(http_addr: str | None, target: str) -> None:
    """Show the intention with this ID, or from SRC to DST."""
    found = AgentClient.from_flag(http_addr).request("GET", target)
    if not isinstance(found, dict):
        raise ClientError("unexpected answer from the agent: not a JSON object")
    rows = [
        ["Source:", str(found.get("SourceName", ""))],
        ["Destination:", str(found.get("DestinationName", ""))],
        ["Action:", str(found.get("Action", ""))],
        ["ID:", str(found.get("ID", ""))],
        ["Precedence:", str(found.get("Precedence", ""))],
    ]
    if found.get("Description"):
        rows.append(["Description:", str(found["Description"])])
    meta = found.get("Meta") or {}
    rows += [[f"Meta[{k}]:", str(v)] for k, v in sorted(meta.items())]
    rows += [["Created At:", str(found.get("CreatedAt", ""))]]
    for line in format_table(rows[0], rows[1:]):
        click.echo(line)


def _listed(http_addr: str | None, path: str) -> list[dict[str, Any]]:
    found = AgentClient.from_flag(http_addr).request("GET", path)
    if not isinstance(found, list):
        raise ClientError(f"unexpected answer from {path}: not a JSON list")
    return [i for i in found if isinstance(i, dict)]


def _line(ixn: dict[str, Any]) -> str:
    return f"{ixn.get('SourceName')} => {ixn.get('DestinationName')} ({ixn.get('Action')})"


@intention.command("list")
@http_addr_option
def intention_list(http_addr: str | None) -> None:
    """List every intention, in evaluation order."""
    found = _listed(http_addr, _BASE)
    if not found:
        click.echo("There are no intentions.")
        return
    header = ["ID", "Source", "Action", "Destination", "Precedence"]
    rows = [
        [str(i.get(k, "")) for k in ("ID", "SourceName", "Action", "DestinationName", "Precedence")]
        for i in found
    ]
    for line in format_table(header, rows):
        click.echo(line)


@intention.command("match")
@http_addr_option
@click.option("--source", "by_source", is_flag=True, help="NAME is a source.")
@click.option("--destination", "by_destination", is_flag=True, help="NAME is a destination.")
@click.argument("name", callback=_name)
def intention_match(
    http_addr: str | None, by_source: bool, by_destination: bool, name: str
) -> None:
    """Intentions that apply to NAME (a destination unless -source), in evaluation order."""
    if by_source and by_destination:
        raise click.UsageError("use -source or -destination, not both")
    by = "source" if by_source else "destination"
    client = AgentClient.from_flag(http_addr)
    found = client.request("GET", f"{_BASE}/match?" + urlencode({"by": by, "name": name}))
    listed = found.get(name) if isinstance(found, dict) else None
    if not isinstance(listed, list):
        raise ClientError("unexpected answer from the agent's match endpoint")
    for ixn in listed:
        if isinstance(ixn, dict):
            click.echo(_line(ixn))


@intention.command("check")
@http_addr_option
@_src_dst
def intention_check(http_addr: str | None, source: str, destination: str) -> int:
    """Print Allowed (exit 0) or Denied (exit 1) for SRC connecting to DST; errors exit 2."""
    path = f"{_BASE}/check?" + urlencode({"source": source, "destination": destination})
    try:
        found = AgentClient.from_flag(http_addr).request("GET", path)
    except ClientError as exc:
        raise _CheckError(str(exc)) from None
    allowed = found.get("Allowed") if isinstance(found, dict) else None
    if not isinstance(allowed, bool):
        raise _CheckError("unexpected answer from the agent's check endpoint")
    click.echo("Allowed" if allowed else "Denied")
    return 0 if allowed else 1


@intention.command("audit")
@http_addr_option
@format_option
@click.option("--denied", is_flag=True, help="Only the refusals.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="How many decisions, newest first.",
)
def intention_audit(http_addr: str | None, output_format: str, denied: bool, limit: int) -> None:
    """The agent's latest intention decisions: connections, cuts and authorize answers."""
    query = {"limit": str(limit), **({"denied": ""} if denied else {})}
    found = _listed(http_addr, "/v1/agent/connect/audit?" + urlencode(query))
    if output_format == "json":
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("No decisions recorded yet.")
        return
    header = ["Time", "Event", "Source", "Destination", "Decision", "Peer", "Reason"]
    rows = [
        [
            str(e.get("Time", "")),
            str(e.get("Event", "")),
            str(e.get("Source", "")),
            str(e.get("Destination", "")),
            "allow" if e.get("Allowed") else "deny",
            str(e.get("Peer", "")) or "-",
            str(e.get("Reason", "")),
        ]
        for e in found
    ]
    for line in format_table(header, rows):
        click.echo(line)
