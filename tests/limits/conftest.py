"""Floods of idle TCP connections from one loopback source address, and a client from another.

The finding (security 7): idle connections from one client locked every
other client out of the HTTP API, a sidecar's public port and DNS over TCP.
Each test floods one port from `FLOOD_SOURCE` and then times a real client
from `CLIENT_SOURCE`; loopback's whole 127.0.0.0/8 is local on Linux.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator

import pytest

from meshnode import testutil

HOST = "127.0.0.1"
FLOOD_SOURCE = "127.0.0.2"
CLIENT_SOURCE = "127.0.0.3"
# The promise: a flood from one source delays another source by at most this.
SERVED_WITHIN_S = 1.0
# How long the server gets to take the flood in before the client is timed.
SETTLE_S = 0.5


def raise_fd_limit(needed: int) -> None:
    """Raise the soft descriptor limit to `needed` (both ends of a flood live in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@contextlib.contextmanager
def idle_flood(
    port: int, count: int, source: str = FLOOD_SOURCE, host: str = HOST
) -> Iterator[list[socket.socket]]:
    """`count` TCP connections from `source` to host:port that never send a byte; closed after."""
    raise_fd_limit(2 * count + 1024)
    with testutil.idle_flood(host, port, count, source) as sockets:
        yield sockets


still_open = testutil.still_open
