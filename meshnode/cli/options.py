"""Options shared by the client commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from ..client import DEFAULT_HTTP_ADDR, ENV_HTTP_ADDR, ClientError, resolve_http_addr

__all__ = ["format_option", "http_addr_option"]

F = TypeVar("F", bound=Callable[..., object])


def _check_http_addr(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        resolve_http_addr(value)
    except ClientError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def http_addr_option(func: F) -> F:
    """``--http-addr IP:PORT`` (env MESHNODE_HTTP_ADDR): where the local agent's API is."""
    decorated = click.option(
        "--http-addr",
        envvar=ENV_HTTP_ADDR,
        metavar="IP:PORT",
        default=None,
        callback=_check_http_addr,
        help=f"Address of the agent's HTTP API [env {ENV_HTTP_ADDR}; default {DEFAULT_HTTP_ADDR}].",
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
