"""meshnode's gossip layer: SWIM membership, the replicated store, and how bytes travel.

Owns the sans-IO cores — `membership` (SWIM + Lifeguard, with `suspicion`,
`awareness`, `queue`, `formulas`), `store` (versioned LWW entries with
tombstones) and `anti_entropy` (one push/pull round of it) — the `codec`,
the `wire` envelope and its `keyring` (AES-256-GCM), and the trio side:
`transport` (UDP + TCP on one port) and `driver` (one loop around the core).
`testing.MemoryNetwork` is a fake network for anyone's tests; the simulator
in `simulations/` drives the same cores on virtual time.

The bottom layer: must not import any other part of meshnode (agent, store,
catalog, intentions, CA, DNS, proxy, API...). Installed as `meshnode.gossip`.
"""
