"""`meshnode agent`: build an `AgentConfig` from flags and files, then run the agent."""

from __future__ import annotations

import click

from ..config import load_config
from ..logs import LEVELS, setup_logging
from .app import cli


@cli.command()
@click.option("--node", metavar="NAME", help="Node name [default: the host name].")
@click.option(
    "--bind", metavar="IP[:PORT]", help="Gossip address (UDP+TCP) [default: 0.0.0.0:7946]."
)
@click.option("--advertise", metavar="IP[:PORT]", help="Address given to peers [default: bind].")
@click.option("--http-addr", metavar="IP:PORT", help="HTTP API address [default: 127.0.0.1:8500].")
@click.option("--data-dir", metavar="DIR", help="Where state is kept (required unless --dev).")
@click.option("--join", multiple=True, metavar="ADDR", help="Join ADDR at start (repeatable).")
@click.option(
    "--retry-join", multiple=True, metavar="ADDR", help="Join ADDR, retrying until it answers."
)
@click.option("--retry-interval", metavar="DURATION", help="Wait between retries [default: 30s].")
@click.option("--encrypt", metavar="KEY", help="Gossip key from `meshnode keygen`.")
@click.option(
    "--cluster-label",
    metavar="LABEL",
    help="Gossip only with agents of this label (two clusters sharing a key never merge).",
)
@click.option("--config-file", multiple=True, metavar="FILE", help="JSON config file (repeatable).")
@click.option(
    "--config-dir", multiple=True, metavar="DIR", help="Read every *.json in DIR (repeatable)."
)
@click.option("--datacenter", metavar="NAME", help="Datacenter name [default: dc1].")
@click.option("--dns-addr", metavar="IP[:PORT]", help="DNS address [default: 127.0.0.1:8600].")
@click.option("--dns-port", type=int, metavar="PORT", help="DNS port; -1 turns DNS off.")
@click.option("--domain", metavar="DOMAIN", help="DNS domain [default: mesh.].")
@click.option("--alt-domain", metavar="DOMAIN", help="A second DNS domain answered the same.")
@click.option(
    "--recursor", multiple=True, metavar="IP[:PORT]", help="Upstream DNS for other names."
)
@click.option(
    "--api-token",
    metavar="TOKEN",
    help="Require this X-Consul-Token on HTTP writes and secret reads.",
)
@click.option(
    "--event-handler",
    multiple=True,
    metavar="SCRIPT",
    help="Run SCRIPT (sh -c) for each user event, payload on stdin (repeatable).",
)
@click.option(
    "--signer",
    is_flag=True,
    default=None,
    help="Ask to be a CA signer (granted by an approved signer or --signer-token).",
)
@click.option(
    "--signer-token",
    metavar="TOKEN",
    help="Secret for signer hosts: signers holding it approve -signer agents that present it.",
)
@click.option(
    "--ca-root-fingerprint",
    metavar="SHA256",
    help="Trust only this root CA (and roots it cross-signs) instead of trusting on first use.",
)
@click.option("--ca-signers", type=int, metavar="N", help="CA signers to elect [default: 3].")
@click.option(
    "--csr-max-per-second", type=float, metavar="N", help="CSRs a signer accepts per second [50]."
)
@click.option("--leaf-cert-ttl", metavar="DURATION", help="Leaf certificate TTL [default: 72h].")
@click.option(
    "--ca-reissue-jitter",
    metavar="DURATION",
    help="Re-issue leaves within this window after a root rotation [default: 30s].",
)
@click.option(
    "--tombstone-ttl",
    metavar="DURATION",
    help="Keep deletes this long for members that were away [default: 72h].",
)
@click.option(
    "--kv-max-mib",
    type=int,
    metavar="N",
    help="KV's room in the replicated store, MiB; other kinds keep theirs [default: 128].",
)
@click.option(
    "--audit-log",
    metavar="FILE",
    help="Append every intention decision to FILE as JSON lines.",
)
@click.option("--dev", is_flag=True, default=None, help="Loopback, throwaway state, no key.")
@click.option(
    "--log-level",
    type=click.Choice([*LEVELS, "warn", "trace"], case_sensitive=False),
    help="Log verbosity [default: info].",
)
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="Node metadata (repeatable).")
def agent(config_file: tuple[str, ...], config_dir: tuple[str, ...], **flags: object) -> int:
    """Run an agent in the foreground until it leaves (SIGTERM/SIGINT: graceful leave).

    SIGHUP (or `meshnode reload`) reads the config files again and applies
    services, log level, API token and event handlers.
    """
    config = load_config(flags, config_file, config_dirs=config_dir)
    setup_logging(config.log_level)
    try:
        from ..agent.lifecycle import run_agent
    except ImportError as exc:
        raise click.ClickException(f"the agent cannot start: {exc}") from None
    return run_agent(config)
