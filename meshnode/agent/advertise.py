"""Which address peers should dial when the agent binds a wildcard address."""

from __future__ import annotations

import socket

__all__ = ["advertise_host"]


def advertise_host(bind_host: str) -> str:
    """The address others should use when we bind to a wildcard.

    A UDP `connect` only asks the kernel for a route; no packet is sent.
    """
    if bind_host not in ("0.0.0.0", "::"):
        return bind_host
    family = socket.AF_INET6 if bind_host == "::" else socket.AF_INET
    probe = "fd00::1" if family == socket.AF_INET6 else "10.255.255.255"
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"
