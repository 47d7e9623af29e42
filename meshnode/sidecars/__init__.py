"""Sidecars embedded in the agent: the manager that follows the catalog, and in-process sources.

The data plane itself is `meshnode.proxy`; this room adapts it to the agent's
own objects (leaf manager, intention replica, catalog). Must not import the
agent core, DNS or the HTTP API.

`manager` starts and stops one proxy per local connect-proxy record;
`inproc` has the `CertSource`, `Authorizer` and `Resolver` over the agent's
objects.
"""
