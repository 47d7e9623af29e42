"""The `meshnode` click group and the error policy shared by every command.

Policy: a failure prints ONE line to stderr (``Error: ...``) and exits 1; a
usage mistake prints one line and exits 2; no traceback ever reaches the user.
Commands return their exit code (0 when they return None).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from ..client import ClientError
from ..config import ConfigError
from ..store.persist import PersistenceError
from .dashopts import DashGroup

__all__ = ["MeshnodeGroup", "cli", "main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2

# Errors with a one-line message meant for the user.
_USER_ERRORS = (ClientError, ConfigError, PersistenceError)


class _Failure(click.ClickException):
    exit_code = EXIT_FAILURE


class MeshnodeGroup(DashGroup):
    """Turns user-facing errors into one line and an exit code, in every mode."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            raise _Failure(str(exc)) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = self._run(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        **extra: Any,
    ) -> int:
        try:
            result = super().main(
                args, prog_name or "meshnode", complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `meshnode` alone: the help is the useful answer
            return EXIT_USAGE
        except click.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"Error: {_one_line(exc.format_message())}{where}", err=True)
            return EXIT_USAGE
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            return exc.exit_code
        except click.Abort:
            click.echo("Aborted.", err=True)
            return EXIT_FAILURE
        except BrokenPipeError:
            return EXIT_FAILURE  # `meshnode members | head`: the reader went away
        if isinstance(result, int) and not isinstance(result, bool):
            return result
        return 0


def _version() -> str:
    try:
        return version("meshnode")
    except PackageNotFoundError:
        return "unknown"


def _one_line(text: str) -> str:
    return " ".join(text.split())


@click.group(
    "meshnode", cls=MeshnodeGroup, context_settings={"help_option_names": ["--help", "-h"]}
)
@click.version_option(_version(), prog_name="meshnode")
def cli() -> None:
    """meshnode: a service mesh with no servers.

    Every option also has a Consul-style single-dash spelling (-node, -http-addr).
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the CLI, return the exit code."""
    code: int = cli.main(args=argv, prog_name="meshnode", standalone_mode=False)
    return code
