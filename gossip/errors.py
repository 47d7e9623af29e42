"""Error types of the gossip layer.

A *remote* error is a peer's mistake (or an attacker's bytes): the driver logs
it, counts it and drops the input. A *local* error is a misuse by our own code
or our own user and is allowed to propagate.
"""

from __future__ import annotations


class GossipError(Exception):
    """Base of every error raised by `meshnode.gossip`."""


class RemoteProtocolError(GossipError):
    """Input from the network was rejected; never fatal to the agent."""


class DecodeError(RemoteProtocolError):
    """Bytes are malformed, truncated, oversized or of an unknown type/version."""


class AuthError(RemoteProtocolError):
    """A packet failed authentication under every key of the keyring."""


class LabelError(RemoteProtocolError):
    """A packet or frame carries another cluster's label (or none where we have one)."""


class ReplayError(RemoteProtocolError):
    """An authenticated packet was seen before (same nonce within the window)."""


class LocalProtocolError(GossipError):
    """Our own caller asked for something impossible (a bug or bad user input)."""


class KeyringError(LocalProtocolError):
    """A keyring operation was refused (bad key, removing the primary key, ...)."""
