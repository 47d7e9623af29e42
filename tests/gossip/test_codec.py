"""Codec laws (round trips) and its contract on hostile input: DecodeError only."""

from __future__ import annotations

import contextlib
import ipaddress
import tracemalloc
from dataclasses import fields
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.gossip.codec import (
    META_MAX_BYTES,
    NAME_MAX_CHARS,
    WIRE_VERSION,
    decode_packet,
    decode_push_pull,
    encode_message,
    encode_packet,
    encode_push_pull,
    packet_overhead_bytes,
)
from meshnode.gossip.errors import DecodeError, LocalProtocolError
from meshnode.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    NodeState,
    PacketMessage,
    Ping,
    PushPull,
    State,
    Suspect,
    User,
)

PUSH_PULL_MAX_BYTES = 8 * 1024 * 1024

# --- strategies ----------------------------------------------------------------------------------

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
names = st.text(st.characters(exclude_categories=["Cs"]), max_size=NAME_MAX_CHARS)
metas = st.binary(max_size=META_MAX_BYTES)
payloads = st.binary(max_size=2048)
addrs = st.builds(
    Addr,
    host=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    port=st.integers(min_value=1, max_value=65535),
)
packet_messages: st.SearchStrategy[PacketMessage] = st.one_of(
    st.builds(Ping, seq=uint64, target=names, source=names, source_addr=addrs),
    st.builds(
        IndirectPing,
        seq=uint64,
        target=names,
        target_addr=addrs,
        source=names,
        source_addr=addrs,
        want_nack=st.booleans(),
    ),
    st.builds(Ack, seq=uint64, payload=payloads),
    st.builds(Nack, seq=uint64),
    st.builds(Alive, incarnation=uint64, node=names, addr=addrs, meta=metas),
    st.builds(Suspect, incarnation=uint64, node=names, sender=names),
    st.builds(Dead, incarnation=uint64, node=names, sender=names),
    st.builds(User, payload=payloads),
)
node_states = st.builds(
    NodeState,
    node=names,
    addr=addrs,
    meta=metas,
    incarnation=uint64,
    state=st.sampled_from(State),
)
push_pulls = st.builds(
    PushPull,
    join=st.booleans(),
    nodes=st.lists(node_states, max_size=20).map(tuple),
    user_state=payloads,
)


def pack(msgs: list[PacketMessage]) -> bytes:
    return encode_packet([encode_message(m) for m in msgs])


def reference_cbor(msg: Any) -> Any:
    """The message as plain Python values, for cbor2's own encoder to compare against."""

    def plain(value: Any) -> Any:
        if isinstance(value, Addr):
            return [ipaddress.ip_address(value.host).packed, value.port]
        if isinstance(value, NodeState):
            return [plain(getattr(value, f.name)) for f in fields(value)]
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, State):
            return int(value)
        return value

    return [type(msg).TYPE, *(plain(getattr(msg, f.name)) for f in fields(msg))]


# --- round trips ---------------------------------------------------------------------------------


@given(packet_messages)
def test_every_message_round_trips_alone(msg: PacketMessage) -> None:
    assert decode_packet(pack([msg])) == [msg]


@given(st.lists(packet_messages, min_size=1, max_size=30))
def test_packets_of_several_messages_round_trip(msgs: list[PacketMessage]) -> None:
    assert decode_packet(pack(msgs)) == msgs


@given(packet_messages)
def test_hand_encoder_matches_cbor2_byte_for_byte(msg: PacketMessage) -> None:
    assert encode_message(msg) == cbor2.dumps(reference_cbor(msg))


@given(push_pulls)
def test_push_pull_round_trips(msg: PushPull) -> None:
    data = encode_push_pull(msg)
    assert data[1:] == cbor2.dumps(reference_cbor(msg))
    assert decode_push_pull(data, max_bytes=PUSH_PULL_MAX_BYTES) == msg


@pytest.mark.parametrize("n_messages", [1, 23, 24, 255, 256, 65535, 65536])
def test_packet_overhead_is_exact(n_messages: int) -> None:
    item = encode_message(Nack(1))
    packet = encode_packet([item] * n_messages)
    assert len(packet) == packet_overhead_bytes(n_messages) + n_messages * len(item)
    assert decode_packet(packet, max_bytes=len(packet)) == [Nack(1)] * n_messages


@pytest.mark.parametrize(
    "host", ["::1", "FE80::0001", "fe80::1%eth0", "::ffff:10.0.0.1", "0.0.0.0", "2001:db8::1"]
)
def test_hosts_come_back_in_pythons_canonical_text(host: str) -> None:
    """Only 4 or 16 bytes travel: case, zero padding and scope ids are not kept, and
    the text of IPv4-mapped IPv6 depends on the Python version (3.13 prints it dotted)."""
    (decoded,) = decode_packet(pack([Alive(1, "n", Addr(host, 7946), b"")]))
    assert isinstance(decoded, Alive)
    assert decoded.addr.host == str(ipaddress.ip_address(host.split("%")[0]))


# --- local misuse is a LocalProtocolError --------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        Nack(-1),
        Nack(2**64),
        Suspect(1, "x" * (NAME_MAX_CHARS + 1), "s"),
        Suspect(1, "\ud800", "s"),
        Alive(1, "n", Addr("10.0.0.1", 1), b"m" * (META_MAX_BYTES + 1)),
        Alive(1, "n", Addr("not-an-ip", 1), b""),
        Alive(1, "n", Addr("10.0.0.1", 0), b""),
        Alive(1, "n", Addr("10.0.0.1", 65536), b""),
    ],
    ids=repr,
)
def test_encoding_what_peers_would_refuse_is_a_local_error(msg: PacketMessage) -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(msg)


def test_empty_packet_and_push_pull_in_packet_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encode_packet([])
    with pytest.raises(LocalProtocolError):
        encode_message(PushPull(False, ()))  # type: ignore[arg-type]


# --- hostile input: table of specific defects ----------------------------------------------------

V = bytes([WIRE_VERSION])
IPV4 = b"\x0a\x00\x00\x01"


def raw(*messages: Any) -> bytes:
    """A packet whose messages are arbitrary Python values, encoded by cbor2 as given."""
    return V + cbor2.dumps(list(messages))


def alive(**override: Any) -> list[Any]:
    fields = {"inc": 1, "node": "n", "addr": [IPV4, 7946], "meta": b""}
    fields.update(override)
    return [Alive.TYPE, *fields.values()]


def huge_header(major: int, length: int) -> bytes:
    return bytes([major | 27]) + length.to_bytes(8, "big")


def nested_arrays(depth: int) -> bytes:
    return V + b"\x81" * depth + b"\x00"


VALID = raw(alive())
BAD_PACKETS: dict[str, bytes] = {
    "empty": b"",
    "version only": V,
    "wrong version": bytes([WIRE_VERSION + 1]) + VALID[1:],
    "version zero": b"\x00" + VALID[1:],
    "truncated": VALID[:-1],
    "truncated header": V + b"\x9a\x00",
    "trailing byte": VALID + b"\x00",
    "trailing item": VALID + cbor2.dumps(alive()),
    "trailing in a big packet": raw(*[alive(meta=b"m" * 500)] * 20) + b"\xf6",
    "no messages": V + b"\x80",
    "top level not an array": V + cbor2.dumps(5),
    "top level map": V + cbor2.dumps({"a": 1}),
    "message not an array": raw(5),
    "empty message": raw([]),
    "unknown type": raw([99, 1]),
    "type zero": raw([0]),
    "type is bool": raw([True, 1]),
    "type is negative": raw([-5, 1, "n", "s"]),
    "type is text": raw(["5", 1, "n", [IPV4, 1], b""]),
    "too few fields": raw([Nack.TYPE]),
    "too many fields": raw([Nack.TYPE, 1, 2]),
    "push/pull inside a packet": raw([PushPull.TYPE, False, [], b""]),
    "uint is bool": raw(alive(inc=True)),
    "uint is negative": raw(alive(inc=-1)),
    "uint is float": raw(alive(inc=1.0)),
    "uint is null": raw(alive(inc=None)),
    "uint is most negative": V
    + b"\x81\x85\x05\x3b"
    + b"\xff" * 8
    + b"\x61n\x82\x44"
    + IPV4
    + b"\x01\x40",
    "uint is a bignum": raw(alive(inc=2**64)),
    "name too long": raw(alive(node="x" * (NAME_MAX_CHARS + 1))),
    "name is bytes": raw(alive(node=b"n")),
    "name is bad utf-8": V + b"\x81\x85\x05\x01\x62\xff\xfe\x82\x44" + IPV4 + b"\x01\x40",
    "name is an utf-8 surrogate": V
    + b"\x81\x85\x05\x01\x63\xed\xa0\x80\x82\x44"
    + IPV4
    + b"\x01\x40",
    "meta too long": raw(alive(meta=b"m" * (META_MAX_BYTES + 1))),
    "meta is text": raw(alive(meta="m")),
    "ip of 5 bytes": raw(alive(addr=[b"\x01" * 5, 1])),
    "ip of 0 bytes": raw(alive(addr=[b"", 1])),
    "ip as text": raw(alive(addr=["10.0.0.1", 1])),
    "port zero": raw(alive(addr=[IPV4, 0])),
    "port too big": raw(alive(addr=[IPV4, 65536])),
    "port is bool": raw(alive(addr=[IPV4, True])),
    "addr of 3 items": raw(alive(addr=[IPV4, 1, 2])),
    "addr is a map": raw(alive(addr={"ip": IPV4, "port": 1})),
    "want_nack is int": raw([IndirectPing.TYPE, 1, "t", [IPV4, 1], "s", [IPV4, 2], 1]),
    "float field": raw([Nack.TYPE, 1.5]),
    "undefined": raw([Nack.TYPE, cbor2.undefined]),
    "simple value": V + b"\x81\x82\x04\xf0",
    "break alone": V + b"\xff",
    "reserved additional info": V + b"\x1c",
    "indefinite array": V + b"\x9f\x82\x04\x01\xff",
    "indefinite bytes": V + b"\x81\x82\x08\x5f\x41a\xff",
    "indefinite text": V + b"\x81\x85\x06\x01\x7f\x61a\xff\x61s",
    "map with int keys": raw({1: 2, 3: 4}),
    "huge bytes length": V + b"\x81\x82\x08" + huge_header(0x40, 2**63),
    "max bytes length": V + b"\x81\x82\x08" + huge_header(0x40, 2**64 - 1),
    "huge text length": V + b"\x81\x85\x06\x01" + huge_header(0x60, 2**63),
    "huge array length": V + huge_header(0x80, 2**63),
    "4G array length": V + b"\x9a\xff\xff\xff\xff",
    "huge map length": V + huge_header(0xA0, 2**63),
    "depth bomb": nested_arrays(60_000),
    "one level too deep": raw(alive(addr=[[IPV4], 1])),
    "tag 0 datetime text": raw(alive(inc=cbor2.CBORTag(0, "2020-01-01T00:00:00Z"))),
    "tag 1 epoch": raw(alive(inc=cbor2.CBORTag(1, 0))),
    "tag 2 small bignum": raw(alive(inc=cbor2.CBORTag(2, b"\x01"))),
    "tag 3 negative bignum": raw(alive(inc=cbor2.CBORTag(3, b"\x01"))),
    "tag 4 decimal": raw(alive(inc=cbor2.CBORTag(4, [1, 2]))),
    "tag 24 embedded cbor": raw(alive(meta=cbor2.CBORTag(24, b"\x01"))),
    "tag 28 shareable": raw(alive(meta=cbor2.CBORTag(28, b"m"))),
    "tag 28/29 cycle": V + b"\xd8\x1c\x81\xd8\x1d\x00",
    "tag 35 regex": raw(alive(node=cbor2.CBORTag(35, "(a+)+$"))),
    "tag 36 mime": raw(alive(node=cbor2.CBORTag(36, "Subject: x\n\nbody"))),
    "tag 256 string refs": raw(cbor2.CBORTag(256, alive())),
    "tag 258 set": raw(alive(addr=cbor2.CBORTag(258, [1]))),
    "tag 55799 self-describe": V + b"\xd9\xd9\xf7" + cbor2.dumps([alive()]),
    "unknown tag": raw(alive(inc=cbor2.CBORTag(99999, 1))),
    "largest tag": V + b"\xdb" + b"\xff" * 8 + b"\x00",
    "over max_bytes": raw(alive(meta=b"m" * 400)) + b"\x00" * 65507,
}


@pytest.mark.parametrize("data", BAD_PACKETS.values(), ids=BAD_PACKETS.keys())
def test_malformed_packets_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(data)


def test_the_valid_base_of_the_table_decodes() -> None:
    assert decode_packet(VALID) == [Alive(1, "n", Addr("10.0.0.1", 7946), b"")]


def test_max_bytes_is_enforced() -> None:
    data = pack([User(b"x" * 100)])
    assert decode_packet(data, max_bytes=len(data))
    with pytest.raises(DecodeError, match="limit"):
        decode_packet(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    "data",
    [
        BAD_PACKETS["huge bytes length"],
        BAD_PACKETS["huge array length"],
        BAD_PACKETS["huge map length"],
        BAD_PACKETS["depth bomb"],
    ],
    ids=["bytes", "array", "map", "depth"],
)
def test_declared_sizes_do_not_allocate(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode_packet(data, max_bytes=len(data))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1024 * 1024


GOOD_PUSH_PULL = encode_push_pull(
    PushPull(True, (NodeState("a", Addr("10.0.0.1", 1), b"", 1, State.ALIVE),), b"")
)
NODE = ["a", [IPV4, 1], b"", 1, 1]
BAD_PUSH_PULLS: dict[str, bytes] = {
    "empty": b"",
    "wrong version": b"\x07" + GOOD_PUSH_PULL[1:],
    "truncated": GOOD_PUSH_PULL[:-1],
    "trailing": GOOD_PUSH_PULL + b"\x00",
    "a ping": V + encode_message(Ping(1, "a", "b", Addr("10.0.0.1", 1))),
    "join is int": V + cbor2.dumps([9, 1, [], b""]),
    "nodes not array": V + cbor2.dumps([9, False, b"", b""]),
    "state zero": V + cbor2.dumps([9, False, [[*NODE[:4], 0]], b""]),
    "state six": V + cbor2.dumps([9, False, [[*NODE[:4], 6]], b""]),
    "node of 4 fields": V + cbor2.dumps([9, False, [NODE[:4]], b""]),
    "user_state text": V + cbor2.dumps([9, False, [], ""]),
    "too deep": V + cbor2.dumps([9, False, [[NODE[0], [[IPV4], 1], *NODE[2:]]], b""]),
    "over max_bytes": V + cbor2.dumps([9, False, [], b"x" * 2000]),
}


@pytest.mark.parametrize("data", BAD_PUSH_PULLS.values(), ids=BAD_PUSH_PULLS.keys())
def test_malformed_push_pulls_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_push_pull(data, max_bytes=1000)


def test_push_pull_table_base_decodes() -> None:
    assert decode_push_pull(GOOD_PUSH_PULL, max_bytes=1000).join is True


# --- hostile input: fuzz -------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_refuses(data: bytes) -> None:
    """The whole contract on remote bytes: messages out, or DecodeError, nothing else."""
    try:
        msgs = decode_packet(data)
    except DecodeError:
        return
    assert msgs and all(
        type(m) in (Ping, IndirectPing, Ack, Nack, Alive, Suspect, Dead, User) for m in msgs
    )


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_refuses(data)
    decodes_or_refuses(V + data)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_push_pull_bytes(data: bytes) -> None:
    for candidate in (data, V + data):
        with contextlib.suppress(DecodeError):
            decode_push_pull(candidate, max_bytes=PUSH_PULL_MAX_BYTES)


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    data = bytearray(pack(draw(st.lists(packet_messages, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 9))]
        elif kind == "set" and at < len(data):
            data[at] = draw(st.sampled_from([0x00, 0x1B, 0x5B, 0x7B, 0x9B, 0x9F, 0xC1, 0xD8, 0xFF]))
    return bytes(data)


@FUZZ
@given(mutated_packets())
def test_fuzz_mutated_valid_packets(data: bytes) -> None:
    decodes_or_refuses(data)
