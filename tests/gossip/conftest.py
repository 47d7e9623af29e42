"""Helpers for driving one sans-IO `Membership` core by hand: addresses, a core, packets in and out.

No network: `feed` encodes messages into a packet and hands it to
`receive_packet`, `sent` decodes what the core would send.
"""

from __future__ import annotations

import random

from meshnode.gossip import codec
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Addr, PacketMessage

A = Addr("127.0.0.1", 7001)
B = Addr("127.0.0.1", 7002)
C = Addr("127.0.0.1", 7003)


def make(name: str = "a", addr: Addr = A, seed: int = 0) -> Membership:
    """A core at time 0 with metadata b"m", its choices seeded by `seed`."""
    return Membership(name=name, addr=addr, meta=b"m", rng=random.Random(seed), now=0.0)


def feed(m: Membership, *msgs: PacketMessage, src: Addr = B, now: float = 0.0) -> None:
    """`msgs` in one packet from `src`."""
    m.receive_packet(codec.encode_packet([codec.encode_message(x) for x in msgs]), src, now)


def sent(m: Membership) -> list[tuple[Addr, list[PacketMessage]]]:
    """Every packet the core has to send, decoded: (destination, messages)."""
    return [(addr, codec.decode_packet(data)) for addr, data in m.packets_to_send()]
