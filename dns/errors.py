"""The DNS subsystem's error types.

A remote client's mistake (`RemoteQueryError`) is answered or dropped and
counted, never raised out of the server. A local mistake (bad config, a port
already taken) is a `DnsConfigError` or `DnsBindError` whose message is one
line for the operator.
"""

from __future__ import annotations

__all__ = ["DnsBindError", "DnsConfigError", "DnsError", "RemoteQueryError"]


class DnsError(Exception):
    """Base of every error the DNS subsystem raises."""


class DnsConfigError(DnsError, ValueError):
    """A DNS setting is invalid; the message is one line naming it."""


class DnsBindError(DnsError):
    """The DNS listener could not bind its address; one line for the operator."""


class RemoteQueryError(DnsError):
    """A client sent a packet we reject.

    `rcode` is the response code to answer with (FORMERR, NOTIMP), or None when
    the packet must be dropped unanswered (too short to carry an ID, or a
    response rather than a query: answering those invites reflection loops).
    """

    def __init__(self, message: str, *, rcode: int | None, query_id: int = 0, flags: int = 0):
        super().__init__(message)
        self.rcode = rcode
        self.query_id = query_id
        self.flags = flags
