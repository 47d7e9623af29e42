"""Options shared by the client commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from ..client import (
    DEFAULT_HTTP_ADDR,
    ENV_HTTP_ADDRS,
    TOKEN_META_KEY,
    ClientError,
    resolve_http_addr,
)

__all__ = ["format_option", "http_addr_option"]

F = TypeVar("F", bound=Callable[..., object])


def _check_http_addr(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        resolve_http_addr(value)
    except ClientError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _keep_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[TOKEN_META_KEY] = value


def http_addr_option(func: F) -> F:
    """``--http-addr IP:PORT`` (env MESHNODE_HTTP_ADDR, CONSUL_HTTP_ADDR): the agent's API.

    Also adds ``--token`` (env MESHNODE_HTTP_TOKEN or CONSUL_HTTP_TOKEN), which
    `AgentClient.from_flag` picks up, so commands need no parameter for it.
    """
    func = click.option(
        "--token",
        metavar="TOKEN",
        default=None,
        expose_value=False,
        callback=_keep_token,
        help=(
            "Token for writes, when the agent has --api-token"
            " [env MESHNODE_HTTP_TOKEN or CONSUL_HTTP_TOKEN]."
        ),
    )(func)
    decorated = click.option(
        "--http-addr",
        envvar=list(ENV_HTTP_ADDRS),
        metavar="IP:PORT",
        default=None,
        callback=_check_http_addr,
        help=(
            f"Address of the agent's HTTP API [env {' or '.join(ENV_HTTP_ADDRS)};"
            f" default {DEFAULT_HTTP_ADDR}]."
        ),
    )(func)
    return decorated


def format_option(func: F) -> F:
    """``--format text|json``: a table for people, the API's JSON for scripts."""
    decorated = click.option(
        "--format",
        "output_format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(func)
    return decorated
