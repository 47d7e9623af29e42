"""The agent token: when one is configured, writes and secret reads must carry it.

Consul's clients send the token as ``X-Consul-Token``, ``Authorization: Bearer``
or ``?token=``; all three are accepted. A write can make the node deregister
services, flip intentions or leave; a secret read (a route added with
``secret=True``: the gossip keyring, a leaf's private key) hands out what
lets a process join the gossip pool or impersonate a service. Other reads
stay open: the API listens on loopback by default and the catalog, the CA
roots and KV are not secret from local processes. Without a token (dev
mode) everything is open, as in Consul with ACLs off.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from ..http import Guard, HttpError, Request

__all__ = ["READ_METHODS", "request_token", "token_accepted", "token_guard"]

READ_METHODS = frozenset({"GET", "HEAD"})


def request_token(request: Request) -> str | None:
    """The token a request carries, wherever Consul's clients put it."""
    header = request.headers.get("x-consul-token")
    if header:
        return header
    bearer = request.headers.get("authorization", "")
    scheme, _, value = bearer.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_value("token") or None


def token_accepted(given: str, expected: str) -> bool:
    """Whether `given` is the agent's token, compared in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def token_guard(current_token: Callable[[], str | None]) -> Guard:
    """A guard refusing writes and secret reads (403) whose token is not `current_token()`.

    The token is read on every request, so a reload that sets or changes it
    applies at once.
    """

    def guard(request: Request) -> None:
        expected = current_token()
        if expected is None or (request.method in READ_METHODS and not request.secret):
            return
        given = request_token(request)
        if given is None:
            what = "this answer holds a secret" if request.method in READ_METHODS else "a write"
            raise HttpError(
                403, f"Permission denied: {what}; this agent requires a token (X-Consul-Token)"
            )
        if not token_accepted(given, expected):
            raise HttpError(403, "Permission denied: token not accepted")

    return guard
