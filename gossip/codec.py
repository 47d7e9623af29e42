"""Wire codec: gossip messages <-> CBOR bytes.

Rules that live here:

- A message is a positional CBOR array `[TYPE, field1, field2, ...]` in the
  dataclass's field order, never a map: arrays are about half the size and
  twice as fast to handle (see bench/codec_size.py).
- An `Addr` is `[ip, port]` with the IP as 4 or 16 raw bytes; a `State` is its int.
- A UDP packet is `WIRE_VERSION` (one byte), a CBOR array header, then the
  pre-encoded messages. Callers encode each message once, measure it, and pack
  as many as fit under the MTU (`packet_overhead_bytes`).
- A push/pull stream payload is `WIRE_VERSION` then one `PushPull` array.
- Decoding trusts nothing: every field is type- and range-checked (a bool is
  not an int), CBOR tags, maps of non-string keys, indefinite lengths, trailing
  bytes and nesting deeper than our own shapes are refused. Any bad input
  raises `DecodeError` and nothing else.
"""

from __future__ import annotations

import functools
import io
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import cbor2

from .errors import DecodeError, LocalProtocolError
from .messages import (
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

WIRE_VERSION: int = 1
_VERSION_BYTE = bytes([WIRE_VERSION])

UDP_MAX_BYTES = 65507  # the largest IPv4 UDP payload
NAME_MAX_CHARS = 128  # node names; a DNS label is 63, this leaves room for FQDN-like names
META_MAX_BYTES = 512  # memberlist's MetaMaxSize; GossipConfig.meta_max_bytes must not exceed it
_UINT64_MAX = 2**64 - 1
_PORT_MAX = 65535

# Nesting of our own shapes: packet > message > addr, and push/pull > nodes > node > addr.
# cbor2 counts containers, so anything deeper fails before we look at it.
_PACKET_MAX_DEPTH = 3
_PUSH_PULL_MAX_DEPTH = 4


# --- encoding ----------------------------------------------------------------------------------
# A hand-written encoder for the few CBOR types we emit: cbor2.dumps costs about
# 2.4 us per message, this about half, and the output is byte-identical (tested).


def _bad_local(what: str, why: str) -> NoReturn:
    raise LocalProtocolError(f"cannot encode {what}: {why}")


# Every one-byte head, so the commonest case allocates nothing.
_ONE_BYTE = tuple(bytes((i,)) for i in range(256))
# Caches of interned, immutable wire pieces: a cluster has about as many names
# and addresses as members, and sharing them keeps one copy per process rather
# than one per message (or per member list, in a simulation of many nodes).
_CACHE_ENTRIES_MAX = 1 << 16


def _head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form (RFC 8949 section 3)."""
    if n < 24:
        return _ONE_BYTE[major | n]
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


_MAJOR_UINT, _MAJOR_BYTES, _MAJOR_TEXT, _MAJOR_ARRAY = 0x00, 0x40, 0x60, 0x80
_TRUE, _FALSE = b"\xf5", b"\xf4"


def _e_u64(value: int, what: str) -> bytes:
    if not 0 <= value <= _UINT64_MAX:
        _bad_local(what, f"{value} does not fit in a uint64")
    return _head(_MAJOR_UINT, value)


@functools.lru_cache(maxsize=_CACHE_ENTRIES_MAX)
def _name_item(value: str) -> bytes | None:
    """A valid name's encoded item (cached: names repeat in every message), else None."""
    if len(value) > NAME_MAX_CHARS:
        return None
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        return None
    return _head(_MAJOR_TEXT, len(raw)) + raw


def _e_name(value: str, what: str) -> bytes:
    item = _name_item(value)
    if item is not None:
        return item
    if len(value) > NAME_MAX_CHARS:
        _bad_local(what, f"longer than {NAME_MAX_CHARS} characters")
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        _bad_local(what, "not encodable as UTF-8 (lone surrogate)")
    return _head(_MAJOR_TEXT, len(raw)) + raw


def _e_bytes(value: bytes, what: str, max_bytes: int | None = None) -> bytes:
    if max_bytes is not None and len(value) > max_bytes:
        _bad_local(what, f"longer than {max_bytes} bytes")
    return _head(_MAJOR_BYTES, len(value)) + value


@functools.lru_cache(maxsize=_CACHE_ENTRIES_MAX)
def _e_addr(addr: Addr) -> bytes:
    """`[ip, port]`; cached because a cluster has few addresses."""
    try:
        packed = ipaddress.ip_address(addr.host).packed
    except ValueError:
        _bad_local("Addr.host", f"{addr.host!r:.60} is not an IPv4 or IPv6 literal")
    if not 0 < addr.port <= _PORT_MAX:
        _bad_local("Addr.port", f"{addr.port} is not in 1..{_PORT_MAX}")
    return b"\x82" + _head(_MAJOR_BYTES, len(packed)) + packed + _head(_MAJOR_UINT, addr.port)


def _e_node_state(n: NodeState) -> bytes:
    meta = n.meta
    if len(meta) > META_MAX_BYTES:
        _bad_local("NodeState.meta", f"longer than {META_MAX_BYTES} bytes")
    return b"".join(
        (
            b"\x85",
            _e_name(n.node, "NodeState.node"),
            _e_addr(n.addr),
            _head(_MAJOR_BYTES, len(meta)),
            meta,
            _e_u64(n.incarnation, "NodeState.incarnation"),
            _ONE_BYTE[int(n.state)],  # _MAJOR_UINT | state: every State is < 24
        )
    )


def _e_ping(m: Ping) -> tuple[bytes, ...]:
    return (
        _e_u64(m.seq, "Ping.seq"),
        _e_name(m.target, "Ping.target"),
        _e_name(m.source, "Ping.source"),
        _e_addr(m.source_addr),
    )


def _e_indirect_ping(m: IndirectPing) -> tuple[bytes, ...]:
    return (
        _e_u64(m.seq, "IndirectPing.seq"),
        _e_name(m.target, "IndirectPing.target"),
        _e_addr(m.target_addr),
        _e_name(m.source, "IndirectPing.source"),
        _e_addr(m.source_addr),
        _TRUE if m.want_nack else _FALSE,
    )


def _e_alive(m: Alive) -> tuple[bytes, ...]:
    return (
        _e_u64(m.incarnation, "Alive.incarnation"),
        _e_name(m.node, "Alive.node"),
        _e_addr(m.addr),
        _e_bytes(m.meta, "Alive.meta", META_MAX_BYTES),
    )


def _e_suspect(m: Suspect | Dead) -> tuple[bytes, ...]:
    kind = type(m).__name__
    return (
        _e_u64(m.incarnation, f"{kind}.incarnation"),
        _e_name(m.node, f"{kind}.node"),
        _e_name(m.sender, f"{kind}.sender"),
    )


# Encoded entries by the identity of their NodeState, which the cache keeps
# alive (so an id is never reused while cached): a core's member records are
# shared objects, sent unchanged in every push/pull (10^4 entries each at
# 10,000 nodes). Emptied when full, like the decoder's.
_ENCODED_NODES: dict[int, tuple[NodeState, bytes]] = {}


def _e_node_state_cached(n: NodeState) -> bytes:
    hit = _ENCODED_NODES.get(id(n))
    if hit is not None and hit[0] is n:
        return hit[1]
    data = _e_node_state(n)
    if len(_ENCODED_NODES) >= _CACHE_ENTRIES_MAX:
        _ENCODED_NODES.clear()
    _ENCODED_NODES[id(n)] = (n, data)
    return data


def _e_push_pull(m: PushPull) -> tuple[bytes, ...]:
    return (
        _TRUE if m.join else _FALSE,
        _head(_MAJOR_ARRAY, len(m.nodes)) + b"".join(map(_e_node_state_cached, m.nodes)),
        _e_bytes(m.user_state, "PushPull.user_state"),
    )


# type -> fields after TYPE, as encoded items.
_ENCODERS: dict[type, Callable[[Any], tuple[bytes, ...]]] = {
    Ping: _e_ping,
    IndirectPing: _e_indirect_ping,
    Ack: lambda m: (_e_u64(m.seq, "Ack.seq"), _e_bytes(m.payload, "Ack.payload")),
    Nack: lambda m: (_e_u64(m.seq, "Nack.seq"),),
    Alive: _e_alive,
    Suspect: _e_suspect,
    Dead: _e_suspect,
    User: lambda m: (_e_bytes(m.payload, "User.payload"),),
    PushPull: _e_push_pull,
}


def _encode(msg: Any) -> bytes:
    fields = _ENCODERS[type(msg)](msg)
    return b"".join((_head(_MAJOR_ARRAY, len(fields) + 1), _head(_MAJOR_UINT, msg.TYPE), *fields))


def encode_message(msg: PacketMessage) -> bytes:
    """One message as a CBOR array, ready to be measured and packed by `encode_packet`."""
    if isinstance(msg, PushPull):
        _bad_local("PushPull", "it travels over TCP with encode_push_pull, not in a packet")
    return _encode(msg)


def packet_overhead_bytes(n_messages: int) -> int:
    """Bytes `encode_packet` adds around `n_messages` items: the version and the array header."""
    return len(_VERSION_BYTE) + len(_head(_MAJOR_ARRAY, n_messages))


def encode_packet(encoded: Sequence[bytes]) -> bytes:
    """A compound packet from messages already encoded with `encode_message`."""
    if not encoded:
        raise LocalProtocolError("cannot encode a packet with no messages")
    return b"".join((_VERSION_BYTE, _head(_MAJOR_ARRAY, len(encoded)), *encoded))


def encode_push_pull(msg: PushPull) -> bytes:
    """The payload of one push/pull exchange (framed and sealed by the wire)."""
    return _VERSION_BYTE + _encode(msg)


# --- decoding ----------------------------------------------------------------------------------


def _bad(what: str, why: str) -> NoReturn:
    raise DecodeError(f"{what}: {why}")


def _type_name(value: object) -> str:
    return type(value).__name__


def _d_u64(value: object, what: str) -> int:
    # `type(...) is int` on purpose: bool and IntEnum subclasses are not wire ints.
    if type(value) is not int:
        _bad(what, f"expected an unsigned integer, got {_type_name(value)}")
    if not 0 <= value <= _UINT64_MAX:
        _bad(what, "integer out of uint64 range")
    return value


def _d_bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        _bad(what, f"expected a bool, got {_type_name(value)}")
    return value


@functools.lru_cache(maxsize=_CACHE_ENTRIES_MAX)
def _shared_name(name: str) -> str:
    """One string object per distinct name, however many messages carried it."""
    return name


def _d_name(value: object, what: str) -> str:
    if type(value) is not str:
        _bad(what, f"expected a text string, got {_type_name(value)}")
    if len(value) > NAME_MAX_CHARS:
        _bad(what, f"longer than {NAME_MAX_CHARS} characters")
    return _shared_name(value)


def _d_bytes(value: object, what: str, max_bytes: int | None = None) -> bytes:
    """`max_bytes=None` for payloads that only the packet's own size limits."""
    if type(value) is not bytes:
        _bad(what, f"expected a byte string, got {_type_name(value)}")
    if max_bytes is not None and len(value) > max_bytes:
        _bad(what, f"longer than {max_bytes} bytes")
    return value


def _d_array(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        _bad(what, f"expected an array, got {_type_name(value)}")
    return value


def _d_addr(value: object, what: str) -> Addr:
    fields = _d_array(value, what)
    if len(fields) != 2:
        _bad(what, f"expected [ip, port], got {len(fields)} items")
    ip, port = fields
    if type(ip) is not bytes or len(ip) not in (4, 16):
        _bad(what, "ip must be 4 or 16 bytes")
    if type(port) is not int or not 0 < port <= _PORT_MAX:
        _bad(what, f"port must be an integer in 1..{_PORT_MAX}")
    return _addr_from_wire(ip, port)


@functools.lru_cache(maxsize=_CACHE_ENTRIES_MAX)
def _addr_from_wire(ip: bytes, port: int) -> Addr:
    """Cached: a cluster has few addresses and `ipaddress` is slow. Addr is immutable."""
    return Addr(str(ipaddress.ip_address(ip)), port)


def _d_state(value: object, what: str) -> State:
    number = _d_u64(value, what)
    try:
        return State(number)
    except ValueError:
        _bad(what, f"unknown member state {number}")


_STATES = {int(s): s for s in State}
# Decoded entries by their wire values: a push/pull mostly repeats what the
# last one said, so its entries are shared objects, not new ones (each
# NodeState costs ~1 us to build). Emptied when full.
_DECODED_NODES: dict[tuple[str, bytes, int, bytes, int, int], NodeState] = {}


def _d_node_state(value: object) -> NodeState:
    # The common, valid entry in one pass (a push/pull carries thousands);
    # anything unusual takes the field-by-field path below for its error.
    if type(value) is list and len(value) == 5:
        node, addr, meta, incarnation, state = value
        if (
            type(node) is str
            and len(node) <= NAME_MAX_CHARS
            and type(meta) is bytes
            and len(meta) <= META_MAX_BYTES
            and type(incarnation) is int
            and 0 <= incarnation <= _UINT64_MAX
            and type(state) is int
            and state in _STATES
            and type(addr) is list
            and len(addr) == 2
        ):
            ip, port = addr
            if (
                type(ip) is bytes
                and len(ip) in (4, 16)
                and type(port) is int
                and 0 < port <= _PORT_MAX
            ):
                key = (node, ip, port, meta, incarnation, state)
                ns = _DECODED_NODES.get(key)
                if ns is None:
                    ns = NodeState(
                        _shared_name(node),
                        _addr_from_wire(ip, port),
                        meta,
                        incarnation,
                        _STATES[state],
                    )
                    if len(_DECODED_NODES) >= _CACHE_ENTRIES_MAX:
                        _DECODED_NODES.clear()
                    _DECODED_NODES[key] = ns
                return ns
    f = _d_array(value, "NodeState")
    if len(f) != 5:
        _bad("NodeState", f"expected 5 fields, got {len(f)}")
    return NodeState(
        node=_d_name(f[0], "NodeState.node"),
        addr=_d_addr(f[1], "NodeState.addr"),
        meta=_d_bytes(f[2], "NodeState.meta", META_MAX_BYTES),
        incarnation=_d_u64(f[3], "NodeState.incarnation"),
        state=_d_state(f[4], "NodeState.state"),
    )


def _d_push_pull(f: list[Any]) -> PushPull:
    return PushPull(
        join=_d_bool(f[1], "PushPull.join"),
        nodes=tuple(_d_node_state(n) for n in _d_array(f[2], "PushPull.nodes")),
        user_state=_d_bytes(f[3], "PushPull.user_state"),
    )


def _d_ping(f: list[Any]) -> Ping:
    return Ping(
        _d_u64(f[1], "Ping.seq"),
        _d_name(f[2], "Ping.target"),
        _d_name(f[3], "Ping.source"),
        _d_addr(f[4], "Ping.source_addr"),
    )


def _d_indirect_ping(f: list[Any]) -> IndirectPing:
    return IndirectPing(
        _d_u64(f[1], "IndirectPing.seq"),
        _d_name(f[2], "IndirectPing.target"),
        _d_addr(f[3], "IndirectPing.target_addr"),
        _d_name(f[4], "IndirectPing.source"),
        _d_addr(f[5], "IndirectPing.source_addr"),
        _d_bool(f[6], "IndirectPing.want_nack"),
    )


def _d_alive(f: list[Any]) -> Alive:
    return Alive(
        _d_u64(f[1], "Alive.incarnation"),
        _d_name(f[2], "Alive.node"),
        _d_addr(f[3], "Alive.addr"),
        _d_bytes(f[4], "Alive.meta", META_MAX_BYTES),
    )


def _d_rumour(kind: type[Suspect] | type[Dead]) -> Callable[[list[Any]], Suspect | Dead]:
    """Suspect and Dead share their fields: (incarnation, node, sender)."""
    what = (f"{kind.__name__}.incarnation", f"{kind.__name__}.node", f"{kind.__name__}.sender")

    def decode(f: list[Any]) -> Suspect | Dead:
        return kind(_d_u64(f[1], what[0]), _d_name(f[2], what[1]), _d_name(f[3], what[2]))

    return decode


# TYPE -> (number of items including TYPE, decoder of the whole array).
_DECODERS: dict[int, tuple[int, Callable[[list[Any]], PacketMessage | PushPull]]] = {
    Ping.TYPE: (5, _d_ping),
    IndirectPing.TYPE: (7, _d_indirect_ping),
    Ack.TYPE: (3, lambda f: Ack(_d_u64(f[1], "Ack.seq"), _d_bytes(f[2], "Ack.payload"))),
    Nack.TYPE: (2, lambda f: Nack(_d_u64(f[1], "Nack.seq"))),
    Alive.TYPE: (5, _d_alive),
    Suspect.TYPE: (4, _d_rumour(Suspect)),
    Dead.TYPE: (4, _d_rumour(Dead)),
    User.TYPE: (2, lambda f: User(_d_bytes(f[1], "User.payload"))),
    PushPull.TYPE: (4, _d_push_pull),
}


def _d_message(value: object, index: int) -> PacketMessage | PushPull:
    """One message array; `index` (its place in the packet) only names it in errors."""
    if type(value) is not list or not value:
        _bad(f"message {index}", f"expected a non-empty array, got {_type_name(value)}")
    kind = value[0]
    if type(kind) is not int:
        _bad(f"message {index}", f"message type must be an integer, got {_type_name(kind)}")
    entry = _DECODERS.get(kind)
    if entry is None:
        _bad(f"message {index}", f"unknown message type {kind}")
    n_items, decode = entry
    if len(value) != n_items:
        _bad(f"message {index}", f"type {kind} needs {n_items} items, got {len(value)}")
    return decode(value)


class _RejectEveryTag(dict[int, Any]):
    """cbor2 looks every tag up here before its built-in decoders: refuse them all.

    Tags would otherwise build datetimes, Decimals, sets, regexes, shared (cyclic)
    references, or silently turn bignums into ints that pass our type checks.
    """

    def __getitem__(self, tag: int) -> NoReturn:
        raise DecodeError(f"CBOR tag {tag} is not allowed")

    def get(self, tag: int, default: object = None) -> NoReturn:
        raise DecodeError(f"CBOR tag {tag} is not allowed")

    def __contains__(self, tag: object) -> bool:
        return True


_REJECT_EVERY_TAG = _RejectEveryTag()


def _reject_tag(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    """Second line of defence, for a cbor2 that would skip `semantic_decoders`."""
    raise DecodeError(f"CBOR tag {tag.tag} is not allowed")


def _load_one(data: bytes, max_bytes: int, max_depth: int) -> Any:
    """Version check, then exactly one CBOR item with no trailing bytes."""
    if len(data) > max_bytes:
        _bad("packet", f"{len(data)} bytes is more than the limit of {max_bytes}")
    if len(data) < 2:
        _bad("packet", "too short")
    if data[0] != WIRE_VERSION:
        _bad("packet", f"unsupported wire version {data[0]}")
    # A decoder over a seekable stream seeks back to the end of the item it read,
    # which is how trailing bytes are noticed (`cbor2.loads` ignores them).
    stream = io.BytesIO(data)
    stream.seek(1)
    try:
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_reject_tag,
            semantic_decoders=_REJECT_EVERY_TAG,
            max_depth=max_depth,
            allow_indefinite=False,
            strict_hashable_types=True,  # map keys of colliding ints would be a hash-flood
        ).decode()
    except Exception as exc:  # cbor2 raises several types; all of them mean bad bytes
        # Our own refusals (tags) arrive wrapped by cbor2: surface their reason.
        reason = exc.__cause__ if isinstance(exc.__cause__, DecodeError) else exc
        raise DecodeError(f"malformed CBOR: {reason}") from exc
    if stream.tell() != len(data):
        _bad("packet", f"{len(data) - stream.tell()} trailing bytes")
    return value


def decode_packet(data: bytes, *, max_bytes: int = UDP_MAX_BYTES) -> list[PacketMessage]:
    """Every message of one compound packet, or `DecodeError` for any defect."""
    items = _d_array(_load_one(data, max_bytes, _PACKET_MAX_DEPTH), "packet")
    if not items:
        _bad("packet", "no messages")
    messages: list[PacketMessage] = []
    for index, item in enumerate(items):
        msg = _d_message(item, index)
        if isinstance(msg, PushPull):
            _bad("PushPull", "only allowed on a push/pull stream")
        messages.append(msg)
    return messages


def decode_push_pull(data: bytes, *, max_bytes: int) -> PushPull:
    """The `PushPull` of one stream payload, or `DecodeError` for any defect."""
    msg = _d_message(_load_one(data, max_bytes, _PUSH_PULL_MAX_DEPTH), 0)
    if not isinstance(msg, PushPull):
        _bad("push/pull", f"expected PushPull, got {type(msg).__name__}")
    return msg
