"""Intentions: the allow/deny rules between services, their replica and their audit log.

`rules` is pure (names, precedence, the decision); `replica` keeps the rules
in the replicated store; `audit` records every decision made with them. Must
not import the agent, the API, the CA, the catalog, the proxies, the
sidecars or DNS (the CA and the sidecars import it).
"""
