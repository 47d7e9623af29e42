"""The service catalog and health checks, kept in the replicated store.

Services and checks are owned by the agent that registered them; every agent
holds all of them and answers catalog and health reads from memory.
`definitions` parses Consul's service definitions, `records` their stored
form, `catalog` the replica and its views, `checks`/`probes`/`plan` run the
local checks, and `dns_view` implements `meshnode.dns.DnsCatalog` over it.

Must not import the agent, the API, the CA, the proxy or the sidecars.
"""
