"""Gossip messages: small frozen dataclasses, one per wire type.

The codec (`codec.py`) maps each to a positional CBOR array whose first item is
`TYPE`. Addresses are `Addr` values; on the wire the IP is 4 or 16 raw bytes.
A UDP packet carries one or more messages (a compound packet); a push/pull
exchange over TCP carries exactly one `PushPull`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True, order=True)
class Addr:
    """A gossip endpoint: IPv4 or IPv6 literal and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class State(enum.IntEnum):
    """Member state. Values are serf's `Status` integers minus nothing: the HTTP
    API reports `ALIVE=1, LEAVING=2, LEFT=3, FAILED=4` like Consul."""

    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    DEAD = 4
    SUSPECT = 5  # reported as alive (1) through Consul's API, as serf does


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = 1
    seq: int
    target: str  # the node we believe we are pinging; a mismatch is dropped
    source: str
    source_addr: Addr


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ping-req: ask a helper to ping `target` for us and relay the ack."""

    TYPE: ClassVar[int] = 2
    seq: int
    target: str
    target_addr: Addr
    source: str
    source_addr: Addr
    want_nack: bool  # Lifeguard: the helper answers Nack when the target is silent


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[int] = 3
    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    TYPE: ClassVar[int] = 4
    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    TYPE: ClassVar[int] = 5
    incarnation: int
    node: str
    addr: Addr
    meta: bytes  # opaque to gossip; the agent encodes its tags and ports in it


@dataclass(frozen=True, slots=True)
class Suspect:
    TYPE: ClassVar[int] = 6
    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`sender == node` means a graceful leave."""

    TYPE: ClassVar[int] = 7
    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class User:
    """An application payload carried by gossip (broadcast) or sent to one node."""

    TYPE: ClassVar[int] = 8
    payload: bytes


@dataclass(frozen=True, slots=True)
class NodeState:
    """One member's entry in a push/pull exchange."""

    node: str
    addr: Addr
    meta: bytes
    incarnation: int
    state: State


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full-state exchange over TCP (request and response share the shape)."""

    TYPE: ClassVar[int] = 9
    join: bool
    nodes: tuple[NodeState, ...]
    user_state: bytes = b""


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | User | PushPull
PacketMessage = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | User
