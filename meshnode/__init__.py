"""meshnode: a service mesh with no servers; the one installed import name.

Every host runs the same agent (`meshnode.agent`). The subsystem folders at
the repository root are mapped into this package by pyproject.toml
(`gossip/` is `meshnode.gossip`, and likewise `dns`, `ca`, `proxy`,
`connect`), so that no bare `dns` or `proxy` package shadows another
library. docs/architecture.md draws the rooms, what each owns and the
import rules (checked by tests/test_architecture.py).

Modules at this level are shared leaves: `config` (AgentConfig, files and
flags), `durations` (the one duration grammar), `addr` (host:port), `logs`,
`client` (the HTTP client the CLI and native services use), `testutil`.
They must not import the agent's wiring (`meshnode.agent.core`).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
