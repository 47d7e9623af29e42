"""The `meshnode` command line (click); `main` is the console-script entry point."""

from . import agent_cmd, ca, catalog, commands, connect, dns, event, intention, kv, simulate  # noqa: F401  (they register their commands on `cli`)
from .app import cli, main
from .dashopts import DashCommand, DashGroup, rewrite_single_dash

__all__ = ["DashCommand", "DashGroup", "cli", "main", "rewrite_single_dash"]
