"""The agent's replicated state: the view subsystems write to, SQLite, and the replication driver.

`state` is what catalog, intentions, KV and the CA see (`ReplicatedState`,
`ChangeTracker`); `persist` is SQLite in the data dir; `replication` drives
the sans-IO replication rules of `meshnode.gossip` with trio and SQLite. Must
not import the catalog, intentions, CA, DNS or proxies: they import it.
"""
