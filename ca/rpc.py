"""Agent-to-agent CA RPC: one request and one reply on a TCP stream of the gossip port.

Rules that live here:

- A stream starts with the type byte `STREAM_CA` (0xA6; the store's
  anti-entropy is 0xA5), then one request frame; the server answers one
  reply frame and closes. Frames are `Wire` frames: a 4-byte length and a
  payload sealed with the cluster's gossip key (AES-256-GCM), so only a
  holder of the key can ask, and nobody else can read a reply. The gossip
  key is not a CA credential: a root key travels sealed to the approved
  requester's identity key (`ca/sealing.py`), so another holder of the
  gossip key who asks, reads or replays gets ciphertext it cannot open.
- Payloads are strict CBOR maps (`load_strict`): ``{"op": ..., ...}``.
  Requests: ``sign`` (node, service, csr), ``root_key`` (node, root_id),
  ``configure`` (node and the settings to change, or ``rotate``).
  Replies: ``signed`` (leaf, chain, root_id), ``root_key`` (root_id, sealed key bytes),
  ``configured`` (active root id), or ``refused`` (code, reason).
- Anything malformed from the network is a `CARpcError` (a
  `RemoteProtocolError`): the server counts it and drops the stream, the
  client treats it like a signer that is down and tries the next one.
- The caller binds its side of the connection to its advertised IP, so the
  server can check that the TCP peer address is the one the claimed node
  gossips (what `CAService` does for every request).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import trio

from ..gossip.driver import DriverCounters
from ..gossip.errors import DecodeError, RemoteProtocolError
from ..gossip.messages import Addr
from ..gossip.strict_cbor import load_strict
from ..gossip.wire import FrameReader, Wire
from ..logs import log

__all__ = [
    "REFUSAL_CODES",
    "STREAM_CA",
    "CARpcError",
    "ConfigureRequest",
    "Configured",
    "Refusal",
    "Reply",
    "Request",
    "RootKey",
    "RootKeyRequest",
    "RpcUnreachable",
    "SignRequest",
    "Signed",
    "call",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "open_tcp",
    "serve_stream",
]

_log = logging.getLogger("meshnode.ca.rpc")

# First byte of a TCP stream on the gossip port that carries one CA RPC.
STREAM_CA = 0xA6
# A CSR is at most 8 KiB and a chain a few KiB; 64 KiB bounds what one
# stream can make us buffer.
_FRAME_MAX_BYTES = 64 * 1024
_READ_CHUNK_BYTES = 16384
_TEXT_MAX_CHARS = 256
_PEM_MAX_CHARS = 16 * 1024
_CHAIN_MAX = 8

# Why a signer said no; the client falls back to the next signer on all of
# them except the ones about the request itself (bad_csr, bad_request).
REFUSAL_CODES = frozenset(
    {
        "not_signer",  # not elected (any more) in the signer's view
        "not_ready",  # elected, but without an intermediate or root key yet
        "not_owner",  # the requesting node does not own the service in the catalog
        "bad_csr",  # validate_csr refused the CSR
        "rate_limited",  # csr_max_per_second spent: retry (HTTP 429's meaning)
        "forbidden",  # the peer is not the node it claims, or not allowed this op
        "no_key",  # this node does not hold that root key
        "no_ca",  # the cluster has no CA yet
        "bad_request",  # a well-formed message asking for something impossible
    }
)


class CARpcError(DecodeError):
    """A CA RPC message from the network is malformed (a remote error)."""


class RpcUnreachable(Exception):
    """The peer could not be asked: refused, timed out, closed, or answered garbage."""


def _refuse(why: str) -> CARpcError:
    return CARpcError(f"malformed CA RPC message: {why}")


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignRequest:
    node: str
    service: str
    csr_pem: str


@dataclass(frozen=True, slots=True)
class RootKeyRequest:
    node: str
    root_id: str


@dataclass(frozen=True, slots=True)
class ConfigureRequest:
    """Change cluster CA settings (None: keep), and/or rotate the root."""

    node: str
    leaf_ttl_s: int | None = None
    csr_max_per_second: float | None = None
    ca_signers: int | None = None
    rotate: bool = False


@dataclass(frozen=True, slots=True)
class Signed:
    leaf_pem: str
    chain_pems: tuple[str, ...]
    root_id: str


@dataclass(frozen=True, slots=True)
class RootKey:
    """A root key (PEM), sealed to the requester's approved identity key."""

    root_id: str
    sealed_key: bytes


@dataclass(frozen=True, slots=True)
class Configured:
    active_root_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    reason: str


Request = SignRequest | RootKeyRequest | ConfigureRequest
Reply = Signed | RootKey | Configured | Refusal


def _dump(value: dict[str, Any]) -> bytes:
    return cbor2.dumps(value, canonical=True)


def encode_request(request: Request) -> bytes:
    match request:
        case SignRequest(node, service, csr_pem):
            return _dump({"op": "sign", "node": node, "service": service, "csr": csr_pem})
        case RootKeyRequest(node, root_id):
            return _dump({"op": "root_key", "node": node, "root_id": root_id})
        case ConfigureRequest():
            value: dict[str, Any] = {
                "op": "configure",
                "node": request.node,
                "rotate": request.rotate,
            }
            if request.leaf_ttl_s is not None:
                value["leaf_ttl_s"] = request.leaf_ttl_s
            if request.csr_max_per_second is not None:
                value["csr_max_per_second"] = float(request.csr_max_per_second)
            if request.ca_signers is not None:
                value["ca_signers"] = request.ca_signers
            return _dump(value)


def encode_reply(reply: Reply) -> bytes:
    match reply:
        case Signed(leaf_pem, chain_pems, root_id):
            return _dump(
                {"op": "signed", "leaf": leaf_pem, "chain": list(chain_pems), "root_id": root_id}
            )
        case RootKey(root_id, sealed_key):
            return _dump({"op": "root_key", "root_id": root_id, "sealed_key": sealed_key})
        case Configured(active_root_id):
            return _dump({"op": "configured", "active_root_id": active_root_id})
        case Refusal(code, reason):
            return _dump({"op": "refused", "code": code, "reason": reason})


def _map(data: bytes) -> dict[str, Any]:
    value = load_strict(data, max_depth=2, refuse=_refuse)
    if not isinstance(value, dict) or not isinstance(value.get("op"), str):
        raise _refuse("not a map with an 'op'")
    return value


def _text(value: dict[str, Any], name: str, max_chars: int = _TEXT_MAX_CHARS) -> str:
    found = value.get(name)
    if not isinstance(found, str) or not 0 < len(found) <= max_chars:
        raise _refuse(f"{name} is not text of 1..{max_chars} characters")
    return found


def _optional_int(value: dict[str, Any], name: str) -> int | None:
    found = value.get(name)
    if found is None:
        return None
    if type(found) is not int or not 0 < found < 2**31:
        raise _refuse(f"{name} is not a positive integer")
    return found


def _optional_number(value: dict[str, Any], name: str) -> float | None:
    found = value.get(name)
    if found is None:
        return None
    if not (type(found) is int or type(found) is float) or not math.isfinite(found) or found <= 0:
        raise _refuse(f"{name} is not a positive number")
    return float(found)


def decode_request(data: bytes) -> Request:
    value = _map(data)
    op = value["op"]
    if op == "sign":
        return SignRequest(
            _text(value, "node"), _text(value, "service"), _text(value, "csr", _PEM_MAX_CHARS)
        )
    if op == "root_key":
        return RootKeyRequest(_text(value, "node"), _text(value, "root_id"))
    if op == "configure":
        rotate = value.get("rotate", False)
        if not isinstance(rotate, bool):
            raise _refuse("rotate is not a boolean")
        return ConfigureRequest(
            _text(value, "node"),
            leaf_ttl_s=_optional_int(value, "leaf_ttl_s"),
            csr_max_per_second=_optional_number(value, "csr_max_per_second"),
            ca_signers=_optional_int(value, "ca_signers"),
            rotate=rotate,
        )
    raise _refuse(f"unknown request op {op[:40]!r}")


def decode_reply(data: bytes) -> Reply:
    value = _map(data)
    op = value["op"]
    if op == "signed":
        chain = value.get("chain")
        if (
            not isinstance(chain, list)
            or not 0 < len(chain) <= _CHAIN_MAX
            or not all(isinstance(c, str) and 0 < len(c) <= _PEM_MAX_CHARS for c in chain)
        ):
            raise _refuse(f"chain is not a list of 1..{_CHAIN_MAX} PEM texts")
        return Signed(_text(value, "leaf", _PEM_MAX_CHARS), tuple(chain), _text(value, "root_id"))
    if op == "root_key":
        sealed = value.get("sealed_key")
        if not isinstance(sealed, bytes) or not 0 < len(sealed) <= _PEM_MAX_CHARS:
            raise _refuse(f"sealed_key is not 1..{_PEM_MAX_CHARS} bytes")
        return RootKey(_text(value, "root_id"), sealed)
    if op == "configured":
        return Configured(_text(value, "active_root_id"))
    if op == "refused":
        code = _text(value, "code")
        if code not in REFUSAL_CODES:
            raise _refuse(f"unknown refusal code {code[:40]!r}")
        return Refusal(code, _text(value, "reason", 1024))
    raise _refuse(f"unknown reply op {op[:40]!r}")


# --- one frame each way -----------------------------------------------------------------------


async def _read_frame(stream: trio.abc.Stream, wire: Wire, initial: bytes = b"") -> bytes:
    reader = FrameReader(wire, max_frame_bytes=_FRAME_MAX_BYTES)
    reader.feed(initial)
    while True:
        frame = reader.next_frame(trio.current_time())
        if frame is not None:
            return frame
        chunk = await stream.receive_some(_READ_CHUNK_BYTES)
        if not chunk:
            raise trio.BrokenResourceError("peer closed the CA stream mid-frame")
        reader.feed(chunk)


Handler = Callable[[Request, Addr], Awaitable[Reply]]


async def serve_stream(
    stream: trio.abc.Stream,
    peer: Addr,
    first: bytes,
    *,
    wire: Wire,
    handle: Handler,
    counters: DriverCounters,
    timeout_s: float,
) -> None:
    """Answer one CA request; bad bytes are counted and dropped, never raised."""
    try:
        with trio.fail_after(timeout_s):
            request = decode_request(await _read_frame(stream, wire, first[1:]))
            reply = await handle(request, peer)
            await stream.send_all(wire.frame(encode_reply(reply)))
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        counters.add("ca.rpc.serve_failed")
        log(_log, "debug", "serving a CA stream failed", peer=str(peer), reason=str(exc))
    except RemoteProtocolError as exc:
        counters.add("ca.rpc.rejected")
        log(_log, "warning", "rejected a CA stream", peer=str(peer), reason=str(exc))


Connect = Callable[[Addr, str | None], Awaitable[trio.abc.Stream]]


async def open_tcp(addr: Addr, local_host: str | None) -> trio.abc.Stream:
    return await trio.open_tcp_stream(addr.host, addr.port, local_address=local_host)


async def call(
    addr: Addr,
    request: Request,
    *,
    wire: Wire,
    local_host: str | None,
    timeout_s: float,
    connect: Connect = open_tcp,
) -> Reply:
    """Ask `addr` once; `RpcUnreachable` when it cannot answer sensibly in `timeout_s`."""
    try:
        with trio.fail_after(timeout_s):
            stream = await connect(addr, local_host)
            async with stream:
                await stream.send_all(bytes([STREAM_CA]) + wire.frame(encode_request(request)))
                return decode_reply(await _read_frame(stream, wire))
    except trio.TooSlowError:
        raise RpcUnreachable(f"{addr} did not answer within {timeout_s:g} s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise RpcUnreachable(f"{addr}: {getattr(exc, 'strerror', None) or exc}") from None
    except RemoteProtocolError as exc:
        raise RpcUnreachable(f"{addr} answered garbage: {exc}") from None
