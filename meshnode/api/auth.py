"""The agent token: when one is configured, HTTP writes must carry it.

Consul's clients send the token as ``X-Consul-Token``, ``Authorization: Bearer``
or ``?token=``; all three are accepted. Reads stay open: the API listens on
loopback by default and the catalog is not secret from local processes,
while a write can make the node deregister services, flip intentions or leave.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from ..http import Guard, HttpError, Request

__all__ = ["READ_METHODS", "request_token", "token_guard"]

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


def token_guard(current_token: Callable[[], str | None]) -> Guard:
    """A guard refusing writes (403) whose token is not `current_token()`.

    The token is read on every request, so a reload that sets or changes it
    applies at once.
    """

    def guard(request: Request) -> None:
        expected = current_token()
        if expected is None or request.method in READ_METHODS:
            return
        given = request_token(request)
        if given is None:
            raise HttpError(403, "Permission denied: this agent requires a token (X-Consul-Token)")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(403, "Permission denied: token not accepted")

    return guard
