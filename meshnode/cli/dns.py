"""`meshnode dns`: where the local agent answers DNS, and queries to try there.

The address comes from the agent itself (`GET /v1/agent/self` ->
`Config.DNSAddr`), so the examples are right for an agent started with
`--dns-addr`; an agent that does not report it is assumed on Consul's default.
"""

from __future__ import annotations

from typing import Any

import click

from ..addr import AddressError, parse_host_port
from ..client import AgentClient
from .app import cli
from .options import http_addr_option

__all__ = ["dns_info"]

DEFAULT_DNS_ADDR = "127.0.0.1:8600"

_EXAMPLES = [
    ("web.service.{d}", "addresses of the healthy instances of web"),
    ("web.service.{d} SRV", "their ports and targets, addresses in ADDITIONAL"),
    ("primary.web.service.{d}", "only the instances tagged primary"),
    ("_web._tcp.service.{d} SRV", "the RFC 2782 form"),
    ("{node}.node.{d}", "a node's address (TXT: its metadata)"),
    ("web.connect.{d} SRV", "web's sidecar proxies"),
    ("-x {ip}", "PTR: the node or service at an address"),
]


def _config(info: dict[str, Any]) -> dict[str, Any]:
    config = info.get("Config")
    return config if isinstance(config, dict) else {}


@cli.command("dns")
@http_addr_option
def dns_info(http_addr: str | None) -> None:
    """Print the agent's DNS address and example dig queries."""
    config = _config(AgentClient.from_flag(http_addr).request("GET", "/v1/agent/self") or {})
    addr = config.get("DNSAddr")
    note = None
    if not isinstance(addr, str) or not addr:
        addr, note = DEFAULT_DNS_ADDR, "the agent does not report its DNS address"
    try:
        host, port = parse_host_port(addr)
    except AddressError:
        note = f"the agent reports an unusable DNS address {addr!r}"
        host, port = parse_host_port(DEFAULT_DNS_ADDR)
    if note:
        click.echo(f"Note: {note}; assuming the default {DEFAULT_DNS_ADDR}.", err=True)
    domain = str(config.get("DNSDomain") or "mesh.").strip(".")
    node = str(config.get("NodeName") or "NODE")
    server = f"@{host}" + ("" if port == 53 else f" -p {port}")
    click.echo(f"DNS: {host}:{port} (UDP and TCP), domain {domain}.")
    click.echo("")
    width = max(len(q.format(d=domain, node=node, ip=host)) for q, _ in _EXAMPLES)
    for question, meaning in _EXAMPLES:
        text = question.format(d=domain, node=node, ip=host)
        click.echo(f"  dig {server} {text:<{width}}  # {meaning}")
