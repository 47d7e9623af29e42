"""Cluster-wide keyring operations, serf's model: ask everyone, count the answers.

An operation (`list`, `install`, `use`, `remove`) is gossiped to every member
inside the encrypted channel, so only holders of a current key can issue one.
Each member applies it to its own keyring, persists it, and answers the
originator directly with the keys it now holds. The originator waits until
every alive member has answered or the timeout passes, and reports per key
how many nodes hold it, like `serf keys -list`.

Rotation without a partition: install the new key everywhere (all nodes can
now decrypt it), `use` it (nodes send with it, everyone can read it), then
remove the old one.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ..gossip.errors import KeyringError as GossipKeyringError
from ..gossip.keyring import Keyring

# First byte of a gossip User payload: which agent protocol it belongs to.
CHANNEL_KEYRING_QUERY = 0x01
CHANNEL_KEYRING_REPLY = 0x02

OPERATIONS = ("list", "install", "use", "remove")
# Remember this many query ids so that retransmitted copies apply only once.
_SEEN_QUERIES_MAX = 1024


class KeyringQueryError(ValueError):
    """A keyring payload from the network is malformed."""


@dataclass(frozen=True, slots=True)
class KeyringQuery:
    query_id: bytes
    op: str
    key: bytes  # empty for list
    origin: str
    origin_host: str
    origin_port: int

    def encode(self) -> bytes:
        body = [self.query_id, self.op, self.key, self.origin, self.origin_host, self.origin_port]
        return bytes([CHANNEL_KEYRING_QUERY]) + cbor2.dumps(body)


@dataclass(frozen=True, slots=True)
class KeyringReply:
    query_id: bytes
    node: str
    error: str  # empty when the operation succeeded
    keys: tuple[bytes, ...]
    primary: bytes

    def encode(self) -> bytes:
        body = [self.query_id, self.node, self.error, list(self.keys), self.primary]
        return bytes([CHANNEL_KEYRING_REPLY]) + cbor2.dumps(body)


def _loads(payload: bytes) -> list[Any]:
    try:
        body = cbor2.loads(payload[1:])
    except Exception as exc:
        raise KeyringQueryError(f"undecodable keyring payload: {exc}") from None
    if not isinstance(body, list):
        raise KeyringQueryError("keyring payload is not an array")
    return body


def decode_query(payload: bytes) -> KeyringQuery:
    body = _loads(payload)
    try:
        qid, op, key, origin, host, port = body
    except ValueError:
        raise KeyringQueryError("keyring query has the wrong number of fields") from None
    if not (
        isinstance(qid, bytes)
        and len(qid) == 16
        and op in OPERATIONS
        and isinstance(key, bytes)
        and isinstance(origin, str)
        and isinstance(host, str)
        and type(port) is int
        and 0 < port < 65536
    ):
        raise KeyringQueryError("keyring query has a field of the wrong type")
    return KeyringQuery(qid, op, key, origin, host, port)


def decode_reply(payload: bytes) -> KeyringReply:
    body = _loads(payload)
    try:
        qid, node, error, keys, primary = body
    except ValueError:
        raise KeyringQueryError("keyring reply has the wrong number of fields") from None
    if not (
        isinstance(qid, bytes)
        and isinstance(node, str)
        and isinstance(error, str)
        and isinstance(keys, list)
        and all(isinstance(k, bytes) for k in keys)
        and isinstance(primary, bytes)
    ):
        raise KeyringQueryError("keyring reply has a field of the wrong type")
    return KeyringReply(qid, node, error, tuple(keys), primary)


def new_query_id() -> bytes:
    """A nonce, not a decision: it must differ across agents even when two run on one
    seed (tests do), or one agent's query would be taken for a copy of another's."""
    return os.urandom(16)


def apply_operation(keyring: Keyring, op: str, key: bytes) -> str:
    """Apply `op` to our keyring; the error text, or "" on success."""
    try:
        if op == "install":
            keyring.install(key)
        elif op == "use":
            keyring.use(key)
        elif op == "remove":
            keyring.remove(key)
    except GossipKeyringError as exc:
        return str(exc)
    return ""


class SeenQueries:
    """Bounded memory of query ids, so a retransmitted query applies once."""

    def __init__(self, max_entries: int = _SEEN_QUERIES_MAX) -> None:
        self._ids: OrderedDict[bytes, None] = OrderedDict()
        self._max = max_entries

    def first_time(self, query_id: bytes) -> bool:
        if query_id in self._ids:
            return False
        self._ids[query_id] = None
        if len(self._ids) > self._max:
            self._ids.popitem(last=False)
        return True


@dataclass
class Tally:
    """Replies gathered for one query."""

    replies: dict[str, KeyringReply] = field(default_factory=dict)

    def add(self, reply: KeyringReply) -> None:
        self.replies[reply.node] = reply

    def keys_count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replies.values():
            for k in r.keys:
                b64 = base64.b64encode(k).decode()
                out[b64] = out.get(b64, 0) + 1
        return out

    def primary_count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replies.values():
            if r.primary:
                b64 = base64.b64encode(r.primary).decode()
                out[b64] = out.get(b64, 0) + 1
        return out

    def errors(self) -> dict[str, str]:
        return {node: r.error for node, r in self.replies.items() if r.error}
