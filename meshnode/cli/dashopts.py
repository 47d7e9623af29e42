"""Consul-style single-dash long options (``-node web1``, ``-http-addr=...``) for click.

click reads ``-node`` as the short options ``-n -o -d -e``. Before parsing, our
command classes rewrite a single-dash word ``-foo`` or ``-foo=bar`` into
``--foo`` / ``--foo=bar`` when ``--foo`` is one of the command's options. Values
of options are left alone (``--tag -x`` keeps ``-x``), and so is everything
after ``--``; a group stops at its subcommand, which rewrites its own options.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import click

__all__ = ["DashCommand", "DashGroup", "rewrite_single_dash"]

_SINGLE_DASH = re.compile(r"^-([A-Za-z][A-Za-z0-9_-]+)(=.*)?$", re.DOTALL)


def _option_names(params: Iterable[click.Parameter]) -> tuple[set[str], set[str]]:
    """(every option spelling, the spellings that consume the next argument)."""
    names: set[str] = set()
    with_value: set[str] = set()
    for param in params:
        if not isinstance(param, click.Option):
            continue
        spellings = [*param.opts, *param.secondary_opts]
        names.update(spellings)
        if not param.is_flag and not param.count:
            with_value.update(param.opts)
    return names, with_value


def rewrite_single_dash(
    args: list[str], names: set[str], with_value: set[str], *, stop_at_positional: bool = False
) -> list[str]:
    """`args` with ``-foo[=x]`` turned into ``--foo[=x]`` where ``--foo`` is in `names`."""
    out: list[str] = []
    expect_value = False
    for index, arg in enumerate(args):
        if expect_value:
            out.append(arg)
            expect_value = False
            continue
        if arg == "--":
            out.extend(args[index:])
            break
        found = _SINGLE_DASH.match(arg)
        if found and f"--{found.group(1)}" in names:
            arg = f"--{found.group(1)}{found.group(2) or ''}"
        if arg in with_value:
            expect_value = True
        elif stop_at_positional and not arg.startswith("-"):
            out.extend(args[index:])
            break
        out.append(arg)
    return out


class DashCommand(click.Command):
    """A click command that also accepts ``-long-option`` spellings."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names, with_value = _option_names(self.get_params(ctx))
        return super().parse_args(ctx, rewrite_single_dash(args, names, with_value))


class DashGroup(click.Group):
    """A click group whose own options and subcommands accept ``-long-option``."""

    command_class = DashCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names, with_value = _option_names(self.get_params(ctx))
        rewritten = rewrite_single_dash(args, names, with_value, stop_at_positional=True)
        return super().parse_args(ctx, rewritten)
