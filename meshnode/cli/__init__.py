"""The `meshnode` command line (click); `main` is the console-script entry point.

One module per command group. `agent` runs
`meshnode.agent.lifecycle.run_agent`; `keygen` and `simulate` work offline;
every other command talks to a running agent over HTTP through
`meshnode.client`. docs/cli.md documents every command. Nothing imports the
CLI; it may import any part of meshnode.
"""

from . import agent_cmd, ca, catalog, commands, connect, dns, event, intention, kv, simulate  # noqa: F401  (they register their commands on `cli`)
from .app import cli, main
from .dashopts import DashCommand, DashGroup, rewrite_single_dash

__all__ = ["DashCommand", "DashGroup", "cli", "main", "rewrite_single_dash"]
