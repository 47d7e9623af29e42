"""User events (serf's fire-and-forget broadcasts) and the handler scripts they run.

`user_events` is serf's Lamport-clocked event log (sans-IO apart from its
broadcast callback); `handler` runs the configured scripts as processes.

Must not import the agent, the API, the proxies, DNS or the CA.
"""
