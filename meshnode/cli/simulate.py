"""`meshnode simulate SCENARIO ...`: the simulator's CLI, from a source checkout.

`simulations/` is a tool of the source tree, never installed (only `meshnode`
is), so this command finds it next to the `meshnode` package and hands every
argument to `simulations.cli.main` unchanged (same flags, same exit codes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import cli

_CHECKOUT = Path(__file__).resolve().parents[2]


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def simulate(args: tuple[str, ...]) -> int:
    """Run a deterministic gossip simulation (source checkout only)."""
    if not (_CHECKOUT / "simulations" / "cli.py").is_file():
        raise click.ClickException(
            "the simulator ships with the source tree only; run it from a meshnode checkout"
        )
    if str(_CHECKOUT) not in sys.path:
        sys.path.insert(0, str(_CHECKOUT))
    from simulations.cli import main

    try:
        return main(list(args), prog="meshnode simulate")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
