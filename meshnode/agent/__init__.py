"""The agent: one trio program that wires the subsystems together.

Owns the wiring (`core`), the member list as the catalog sees it, cluster-wide
keyring operations, gossip key parsing, and how the CA parts are built. It may
import every other room of `meshnode`; nothing but the CLI imports it.

Nothing is imported here: `config` reads `agent.keys`, and importing the
wiring from this package would make that a cycle. Use `agent.core`.
"""
