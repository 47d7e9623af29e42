"""`meshnode kv put|get|delete`: Consul's KV commands over the agent's /v1/kv API.

meshnode KV is last-writer-wins with no check-and-set: `put` always writes.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import click

from ..client import AgentClient
from .app import EXIT_FAILURE, cli
from .dashopts import DashGroup
from .options import http_addr_option

__all__ = ["kv"]


@cli.group("kv", cls=DashGroup)
def kv() -> None:
    """Read and write the replicated key/value store (last-writer-wins, no CAS)."""


def _value_bytes(value: str | None) -> bytes:
    """VALUE as given, `@file` for a file's bytes, `-` for stdin, nothing for empty."""
    if value is None:
        return b""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    return value.encode("utf-8")


@kv.command("put")
@http_addr_option
@click.argument("key")
@click.argument("value", required=False)
def kv_put(http_addr: str | None, key: str, value: str | None) -> None:
    """Write VALUE (text, @FILE or - for stdin) at KEY."""
    AgentClient.from_flag(http_addr).kv_put(key, _value_bytes(value))
    click.echo(f"Success! Data written to: {key}")


@kv.command("get")
@http_addr_option
@click.option("--recurse", is_flag=True, help="Every key under the prefix KEY, as KEY:VALUE.")
@click.option("--keys", is_flag=True, help="Only the key names under the prefix KEY.")
@click.option("--separator", default="/", show_default=True, help="Group --keys up to this.")
@click.argument("key", default="")
def kv_get(http_addr: str | None, recurse: bool, keys: bool, separator: str, key: str) -> int:
    """Print the value at KEY (exit 1 when there is none)."""
    client = AgentClient.from_flag(http_addr)
    if keys:
        for name in client.kv_keys(key, separator):
            click.echo(name)
        return 0
    if recurse:
        for entry in client.kv_list(key):
            raw = base64.b64decode(entry.get("Value") or "")
            click.echo(f"{entry.get('Key')}:{raw.decode('utf-8', 'replace')}")
        return 0
    if not key:
        raise click.UsageError("missing KEY")
    value = client.kv_get_raw(key)
    if value is None:
        click.echo(f"Error! No key exists at: {key}", err=True)
        return EXIT_FAILURE
    click.echo(value if value.endswith(b"\n") else value + b"\n", nl=False)
    return 0


@kv.command("delete")
@http_addr_option
@click.option("--recurse", is_flag=True, help="Delete every key under the prefix KEY.")
@click.argument("key", default="")
def kv_delete(http_addr: str | None, recurse: bool, key: str) -> None:
    """Delete KEY (or, with -recurse, every key under it)."""
    if not key and not recurse:
        raise click.UsageError("missing KEY")
    AgentClient.from_flag(http_addr).kv_delete(key, recurse=recurse)
    click.echo(f"Success! Deleted key{'s under' if recurse else ''}: {key}")
