"""Size and speed of one typical gossip packet: a Ping piggybacking 5 Alive updates.

Three rows from the same run: the meshnode codec (positional arrays, every field
validated, dataclasses built), and plain cbor2 round trips of prebuilt Python
values as arrays and as maps, which isolate the wire-shape choice from the cost
of validation. Run: .venv/bin/python bench/codec_size.py
"""

from __future__ import annotations

import ipaddress
import timeit
from collections.abc import Callable
from dataclasses import asdict, astuple
from typing import Any

import cbor2

from meshnode.gossip.codec import decode_packet, encode_message, encode_packet
from meshnode.gossip.messages import Addr, Alive, PacketMessage, Ping

ROUNDS = 20_000


def sample() -> list[PacketMessage]:
    msgs: list[PacketMessage] = [Ping(7, "node-b", "node-a", Addr("10.0.0.1", 7946))]
    for i in range(5):
        msgs.append(Alive(3, f"node-{i:02d}", Addr(f"10.0.0.{i + 10}", 7946), b"role=web,dc=dc1"))
    return msgs


def _plain(value: Any) -> Any:
    """What a reflective codec would put on the wire: IPs packed, the rest as is."""
    if isinstance(value, dict) and set(value) == {"host", "port"}:
        return {"host": ipaddress.ip_address(value["host"]).packed, "port": value["port"]}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return [ipaddress.ip_address(value[0]).packed, value[1]]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def per_round_us(func: Callable[[], object]) -> float:
    return min(timeit.repeat(func, number=ROUNDS, repeat=7)) / ROUNDS * 1e6


def main() -> None:
    msgs = sample()
    packet = encode_packet([encode_message(m) for m in msgs])
    assert decode_packet(packet) == msgs
    arrays = [[type(m).TYPE, *_plain(astuple(m))] for m in msgs]
    maps = [{"type": type(m).TYPE, **_plain(asdict(m))} for m in msgs]
    rows = [
        (
            "meshnode codec (validated)",
            len(packet),
            per_round_us(lambda: decode_packet(encode_packet([encode_message(m) for m in msgs]))),
        ),
        (
            "cbor2 arrays, no checks",
            1 + len(cbor2.dumps(arrays)),
            per_round_us(lambda: cbor2.loads(cbor2.dumps(arrays))),
        ),
        (
            "cbor2 maps, no checks",
            1 + len(cbor2.dumps(maps)),
            per_round_us(lambda: cbor2.loads(cbor2.dumps(maps))),
        ),
    ]
    print("Ping + 5 Alive, one encode + decode round trip")
    for name, size_bytes, time_us in rows:
        print(f"  {name:28} {size_bytes:4d} bytes {time_us:6.1f} us")
    print(
        f"  maps / arrays: size x{rows[2][1] / rows[1][1]:.2f}, time x{rows[2][2] / rows[1][2]:.2f}"
    )


if __name__ == "__main__":
    main()
