"""`meshnode ca ...`: the cluster CA through the local agent's HTTP API.

`roots` lists the trusted roots, `rotate` makes a new cross-signed root
active, `signers` prints the active signers one per line (``--all``: every
node that asks to sign or is approved, with its status and key
fingerprint), `signers approve NODE` / `signers revoke NODE` grant and
withdraw signer approval (sent to an approved signer), and `leaf SERVICE`
fetches the leaf of a service registered on this agent (with ``--out DIR``
it writes cert.pem, key.pem (0600), chain.pem and roots.pem for other tools).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from ..ca.pem import PemError, cert_to_pem, certs_from_pem
from ..client import AgentClient, ClientError
from .app import cli
from .dashopts import DashGroup
from .options import http_addr_option
from .render import format_table

__all__ = ["ca"]


@cli.group("ca", cls=DashGroup)
def ca() -> None:
    """The cluster's certificate authority: roots, rotation, signers, leaves."""


def _roots(client: AgentClient) -> dict[str, Any]:
    found = client.request("GET", "/v1/agent/connect/ca/roots")
    if not isinstance(found, dict) or not isinstance(found.get("Roots"), list):
        raise ClientError("unexpected answer from /v1/agent/connect/ca/roots")
    return found


@ca.command("roots")
@http_addr_option
@click.option("--pem", is_flag=True, help="Print the trust bundle as PEM instead of a table.")
def ca_roots(http_addr: str | None, pem: bool) -> None:
    """List the trusted root certificates; the active one is marked."""
    client = AgentClient.from_flag(http_addr)
    found = _roots(client)
    if not found["Roots"]:
        raise ClientError("the cluster has no CA yet (start an agent with -signer)")
    if pem:
        click.echo("".join(r["RootCert"] for r in found["Roots"]), nl=False)
        return
    click.echo(f"Trust domain: {found['TrustDomain']}")
    rows = [
        # The whole ID: it is what the API, the logs and `ActiveRootID` show.
        [r["ID"], "yes" if r["Active"] else "", r["NotBefore"], r["NotAfter"]]
        for r in found["Roots"]
    ]
    click.echo("\n".join(format_table(["ID", "Active", "NotBefore", "NotAfter"], rows)))


@ca.command("rotate")
@http_addr_option
def ca_rotate(http_addr: str | None) -> None:
    """Make a new root, cross-signed by the current one, and make it active.

    Leaves are re-issued under it within the re-issue window (30 s); the old
    root stays trusted until every leaf it signed has expired (2 x leaf TTL).
    """
    client = AgentClient.from_flag(http_addr)
    body = {"Provider": "meshnode", "Config": {"RotateRoot": True}}
    client.request("PUT", "/v1/connect/ca/configuration", body)
    found = _roots(client)
    click.echo(f"Rotated: the active root is now {found['ActiveRootID']}")


@ca.group("signers", cls=DashGroup, invoke_without_command=True)
@http_addr_option
@click.option("--all", "show_all", is_flag=True, help="Every node asking or approved, as a table.")
@click.pass_context
def ca_signers(ctx: click.Context, http_addr: str | None, show_all: bool) -> None:
    """Print the node names of the active signers, one per line, best first."""
    if ctx.invoked_subcommand is not None:
        return
    client = AgentClient.from_flag(http_addr)
    if not show_all:
        names = client.request("GET", "/v1/connect/ca/signers")
        if not isinstance(names, list):
            raise ClientError("unexpected answer from /v1/connect/ca/signers")
        for name in names:
            click.echo(name)
        return
    rows = client.request("GET", "/v1/connect/ca/signers?all")
    if not isinstance(rows, list):
        raise ClientError("unexpected answer from /v1/connect/ca/signers?all")
    table = [
        [r["Node"], r["Status"], "alive" if r["Alive"] else "-", r["Fingerprint"]] for r in rows
    ]
    click.echo("\n".join(format_table(["Node", "Status", "Member", "Fingerprint"], table)))


@ca_signers.command("approve")
@http_addr_option
@click.option(
    "--fingerprint",
    metavar="HEX",
    help="Refuse unless the node asks with this key (its log prints it at start).",
)
@click.argument("node")
def ca_signers_approve(http_addr: str | None, fingerprint: str | None, node: str) -> None:
    """Approve NODE as a signer: run it against an approved signer's agent."""
    path = f"/v1/connect/ca/signers/{quote(node, safe='')}"
    if fingerprint:
        path += f"?fingerprint={quote(fingerprint, safe='')}"
    found = AgentClient.from_flag(http_addr).request("PUT", path)
    if not isinstance(found, dict):
        raise ClientError("unexpected answer from /v1/connect/ca/signers")
    click.echo(f"Approved {found['Node']} (key {found['Fingerprint']})")


@ca_signers.command("revoke")
@http_addr_option
@click.argument("node")
def ca_signers_revoke(http_addr: str | None, node: str) -> None:
    """Withdraw NODE's signer approval (then rotate: it may still hold the root key)."""
    client = AgentClient.from_flag(http_addr)
    client.request("DELETE", f"/v1/connect/ca/signers/{quote(node, safe='')}")
    click.echo(f"Revoked {node}; run `meshnode ca rotate` so the key it held signs nothing")


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.chmod(path, mode)  # an existing file keeps its old mode through O_CREAT


@ca.command("leaf")
@http_addr_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write cert.pem, key.pem (0600), chain.pem and roots.pem into DIR.",
)
@click.argument("service")
def ca_leaf(http_addr: str | None, out: Path | None, service: str) -> None:
    """Get the leaf certificate of SERVICE, which must be registered on this agent."""
    client = AgentClient.from_flag(http_addr)
    leaf = client.request("GET", f"/v1/agent/connect/ca/leaf/{quote(service, safe='')}")
    if not isinstance(leaf, dict) or not isinstance(leaf.get("CertPEM"), str):
        raise ClientError("unexpected answer from /v1/agent/connect/ca/leaf")
    try:
        certs = certs_from_pem(leaf["CertPEM"])
    except PemError as exc:
        raise ClientError(f"the agent sent a bad certificate: {exc}") from None
    if out is None:
        click.echo(f"Service:     {leaf['Service']}")
        click.echo(f"URI:         {leaf['ServiceURI']}")
        click.echo(f"Serial:      {leaf['SerialNumber']}")
        click.echo(f"ValidBefore: {leaf['ValidBefore']}")
        click.echo(leaf["CertPEM"], nl=False)
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        roots = "".join(r["RootCert"] for r in _roots(client)["Roots"])
        _write(out / "cert.pem", cert_to_pem(certs[0]), 0o644)
        _write(out / "key.pem", leaf["PrivateKeyPEM"], 0o600)
        _write(out / "chain.pem", "".join(cert_to_pem(c) for c in certs[1:]), 0o644)
        _write(out / "roots.pem", roots, 0o644)
    except OSError as exc:
        raise ClientError(f"cannot write into {out}: {exc.strerror or exc}") from None
    for name in ("cert.pem", "key.pem", "chain.pem", "roots.pem"):
        click.echo(f"Wrote {out / name}")


# --- revoke ---------------------------------------------------------------------------------


@ca.command("revoke")
@http_addr_option
@click.option("--reason", default="", metavar="TEXT", help="Why, for the logs (256 characters).")
@click.option(
    "--cert",
    "cert_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The leaf in PEM: its public key is revoked at once too.",
)
@click.argument("serial", required=False)
def ca_revoke(
    http_addr: str | None, reason: str, cert_path: Path | None, serial: str | None
) -> None:
    """Revoke the leaf with SERIAL (colon hex, as `ca leaf` prints it) cluster-wide.

    Every proxy refuses it, and any leaf with the same public key, at the next
    handshake, and cuts its live connections within a dissemination round.
    Needs the agent's API token (--token).
    """
    if serial is None and cert_path is None:
        raise click.UsageError("give SERIAL or --cert FILE")
    body: dict[str, str] = {"Reason": reason}
    if serial is not None:
        body["SerialNumber"] = serial
    if cert_path is not None:
        try:
            body["CertPEM"] = cert_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read {cert_path}: {exc}") from None
    found = AgentClient.from_flag(http_addr).request("PUT", "/v1/connect/ca/revoke", body)
    if not isinstance(found, dict) or not isinstance(found.get("SerialNumber"), str):
        raise ClientError("unexpected answer from /v1/connect/ca/revoke")
    how = "serial and public key" if found.get("PublicKeySHA256") else "serial"
    click.echo(f"Revoked {found['SerialNumber']} (by {how}) until {found['NotAfter']}")
