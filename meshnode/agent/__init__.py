"""The agent: one trio program that wires the subsystems together.

`core.Agent` builds and starts the parts; `lifecycle.run_agent` is the
process (signals, exit code). Each behaviour has its module: `membership`,
`known_peers`, `gossip_events`, `keyring_service` (with `keyring_ops` and
`keys`), `kv`, `status`, `http_routes`, `reload`, `ca_wiring`, `members`
(the member list as the catalog and API see it), `inputs` (the injected
clock and rng). It may import every other room of `meshnode`. Only the CLI
imports the agent, except `agent.keys` (the user-facing gossip key format),
which `config`, the API and the CLI read.

Nothing is imported here: `config` reads `agent.keys`, and importing the
wiring from this package would make that a cycle. Use `agent.core`.
"""
