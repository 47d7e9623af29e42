"""Consul-style single-dash long options (``-node web1``, ``-http-addr=...``) for click.

click reads ``-node`` as the short options ``-n -o -d -e``. Before parsing, our
command classes rewrite a single-dash word ``-foo`` or ``-foo=bar`` into
``--foo`` / ``--foo=bar`` when ``--foo`` is one of the command's options. Values
of options are left alone (``--tag -x`` keeps ``-x``), and so is everything
after ``--``; a group stops at its subcommand, which rewrites its own options.

A single-dash word that names no option is reported whole (``-wan``: "No such
option '-wan'"), not by its first letter as click's short-option parser would;
unless it is a valid run of the command's short options (none of ours has
more than ``-h``), which click then reads as it always has.
"""

from __future__ import annotations

import difflib
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
        elif found and not _short_options(found.group(1), names, with_value):
            raise _no_such_option(f"-{found.group(1)}", names)
        if arg in with_value:
            expect_value = True
        elif stop_at_positional and not arg.startswith("-"):
            out.extend(args[index:])
            break
        out.append(arg)
    return out


def _short_options(letters: str, names: set[str], with_value: set[str]) -> bool:
    """True when ``-<letters>`` is short options click can read (``-ab``, ``-ovalue``)."""
    for letter in letters:
        option = f"-{letter}"
        if option not in names:
            return False
        if option in with_value:
            return True  # the rest of the word is its value
    return True


def _no_such_option(word: str, names: set[str]) -> click.NoSuchOption:
    """click's own error for `word`, with its "Did you mean" from the long names."""
    long_names = sorted(n for n in names if n.startswith("--"))
    close = difflib.get_close_matches(f"-{word}", long_names)
    return click.NoSuchOption(word, possibilities=[n[1:] for n in close])


def _rewrite(
    ctx: click.Context, params: list[click.Parameter], args: list[str], *, group: bool
) -> list[str]:
    names, with_value = _option_names(params)
    try:
        return rewrite_single_dash(args, names, with_value, stop_at_positional=group)
    except click.NoSuchOption as exc:
        exc.ctx = ctx  # so the message can say which command's --help to read
        raise


class DashCommand(click.Command):
    """A click command that also accepts ``-long-option`` spellings."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _rewrite(ctx, self.get_params(ctx), args, group=False))


class DashGroup(click.Group):
    """A click group whose own options and subcommands accept ``-long-option``."""

    command_class = DashCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _rewrite(ctx, self.get_params(ctx), args, group=True))
