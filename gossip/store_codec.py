"""Wire codec of the replicated store: entries and anti-entropy messages <-> CBOR bytes.

Rules that live here:

- Same framing and hardening as `codec.py`, whose helpers this module calls: a
  `WIRE_VERSION` byte, then one positional CBOR array `[TYPE, ...]`; tags,
  indefinite lengths, trailing bytes and nesting deeper than our shapes are
  refused, and any defect raises `DecodeError` and nothing else.
- Store types are 64..67, apart from membership's, so the agent can carry them
  in `User` payloads and push/pull streams next to its own messages.
- An entry is `[kind, key, value, lamport, node, tombstone, since|null]`; a key
  version is `[kind, key, lamport, node, fingerprint]`; a digest is one byte
  string of `DIGEST_BUCKETS` big-endian uint64s (2 KiB).
- Decoding checks what `Store` would: kind/key/value sizes against the given
  `StoreLimits`, a non-empty kind, Lamport 1..2^64-1, a tombstone has an empty
  value and a finite `since`, a live entry has none.
- Encoders of lists split them into messages of at most `max_bytes` each and
  always return at least one (possibly empty) message. Each message stands on
  its own: a `BucketVersions` chunk lists whole buckets only.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .codec import (
    _FALSE,
    _MAJOR_ARRAY,
    _MAJOR_TEXT,
    _MAJOR_UINT,
    _TRUE,
    _VERSION_BYTE,
    _bad,
    _bad_local,
    _d_array,
    _d_bool,
    _d_bytes,
    _d_name,
    _d_u64,
    _e_bytes,
    _e_name,
    _e_u64,
    _head,
    _load_one,
    _type_name,
)
from .store import (
    DEFAULT_LIMITS,
    DIGEST_BUCKETS,
    BucketVersions,
    Digest,
    Entry,
    KeyVersion,
    StoreLimits,
    Version,
    bucket_of,
)

# A push/pull frame's limit (GossipConfig.push_pull_max_bytes): a step of the
# exchange is as many messages of this size as it needs.
STORE_MESSAGE_MAX_BYTES = 8 * 1024 * 1024
_MAX_DEPTH = 3  # message > list > entry
_NULL = b"\xf6"
_FLOAT64 = struct.Struct(">d")
_DIGEST = struct.Struct(f">{DIGEST_BUCKETS}Q")
# Version byte, message array head, TYPE (two bytes from 24 up), one array head
# of up to 9 bytes; a BucketVersions chunk also has its bucket ids.
_OVERHEAD_BYTES = 1 + 1 + 2 + 9
_BUCKET_IDS_HEAD_BYTES = 3  # the array of ids; each id is then at most 2 bytes


@dataclass(frozen=True, slots=True)
class Entries:
    """Entries to merge: a gossip broadcast, a push, or the answer to a `Want`."""

    TYPE: ClassVar[int] = 64
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Want:
    """Keys whose entries the sender asks for (`Store.wanted`)."""

    TYPE: ClassVar[int] = 67
    keys: tuple[tuple[str, str], ...]


DIGEST_TYPE = 65
BUCKET_VERSIONS_TYPE = 66
StoreMessage = Entries | Digest | BucketVersions | Want


# --- encoding ----------------------------------------------------------------------------------


def _e_text(value: str, what: str, max_bytes: int) -> bytes:
    raw = value.encode()  # the store already refused lone surrogates
    if len(raw) > max_bytes:
        _bad_local(what, f"longer than {max_bytes} bytes")
    return _head(_MAJOR_TEXT, len(raw)) + raw


def _e_entry(e: Entry, limits: StoreLimits) -> bytes:
    since = _NULL if e.tombstone_since_s is None else b"\xfb" + _FLOAT64.pack(e.tombstone_since_s)
    return b"".join(
        (
            b"\x87",
            _e_text(e.kind, "Entry.kind", limits.kind_max_bytes),
            _e_text(e.key, "Entry.key", limits.key_max_bytes),
            _e_bytes(e.value, "Entry.value", limits.value_max_bytes),
            _e_u64(e.version.lamport, "Entry.version.lamport"),
            _e_name(e.version.node, "Entry.version.node"),
            _TRUE if e.tombstone else _FALSE,
            since,
        )
    )


def _e_key(kind: str, key: str, limits: StoreLimits) -> bytes:
    return _e_text(kind, "kind", limits.kind_max_bytes) + _e_text(key, "key", limits.key_max_bytes)


def _e_key_version(v: KeyVersion, limits: StoreLimits) -> bytes:
    return b"".join(
        (
            b"\x85",
            _e_key(v.kind, v.key, limits),
            _e_u64(v.version.lamport, "KeyVersion.version.lamport"),
            _e_name(v.version.node, "KeyVersion.version.node"),
            _e_u64(v.fingerprint, "KeyVersion.fingerprint"),
        )
    )


def _message(type_: int, *fields: bytes) -> bytes:
    return b"".join(
        (_VERSION_BYTE, _head(_MAJOR_ARRAY, len(fields) + 1), _head(_MAJOR_UINT, type_), *fields)
    )


def _array(items: Sequence[bytes]) -> bytes:
    return _head(_MAJOR_ARRAY, len(items)) + b"".join(items)


def _chunks(sizes: Sequence[int], budget: int, what: str) -> list[range]:
    """Greedy split of items (by encoded size) into runs that fit `budget`; at least one run."""
    runs: list[range] = []
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if size > budget:
            _bad_local(what, f"one item of {size} bytes does not fit in a message")
        if used + size > budget and i > start:
            runs.append(range(start, i))
            start, used = i, 0
        used += size
    runs.append(range(start, len(sizes)))
    return runs


def encode_entry(entry: Entry, *, limits: StoreLimits = DEFAULT_LIMITS) -> bytes:
    """One entry as an `Entries` message, for a gossip broadcast (its size decides if it fits)."""
    return _message(Entries.TYPE, _array([_e_entry(entry, limits)]))


def encode_entries(
    entries: Sequence[Entry],
    *,
    max_bytes: int = STORE_MESSAGE_MAX_BYTES,
    limits: StoreLimits = DEFAULT_LIMITS,
) -> list[bytes]:
    """`Entries` messages of at most `max_bytes` each."""
    items = [_e_entry(e, limits) for e in entries]
    runs = _chunks([len(i) for i in items], max_bytes - _OVERHEAD_BYTES, "Entries")
    return [_message(Entries.TYPE, _array(items[r.start : r.stop])) for r in runs]


def encode_want(
    keys: Sequence[tuple[str, str]],
    *,
    max_bytes: int = STORE_MESSAGE_MAX_BYTES,
    limits: StoreLimits = DEFAULT_LIMITS,
) -> list[bytes]:
    """`Want` messages of at most `max_bytes` each."""
    items = [b"\x82" + _e_key(kind, key, limits) for kind, key in keys]
    runs = _chunks([len(i) for i in items], max_bytes - _OVERHEAD_BYTES, "Want")
    return [_message(Want.TYPE, _array(items[r.start : r.stop])) for r in runs]


def encode_digest(digest: Digest) -> bytes:
    if len(digest.buckets) != DIGEST_BUCKETS:
        _bad_local("Digest", f"has {len(digest.buckets)} buckets, expected {DIGEST_BUCKETS}")
    return _message(DIGEST_TYPE, _e_bytes(_DIGEST.pack(*digest.buckets), "Digest"))


def encode_bucket_versions(
    bv: BucketVersions,
    *,
    max_bytes: int = STORE_MESSAGE_MAX_BYTES,
    limits: StoreLimits = DEFAULT_LIMITS,
) -> list[bytes]:
    """`BucketVersions` messages of at most `max_bytes`, each listing whole buckets."""
    groups: dict[int, list[bytes]] = {b: [] for b in bv.buckets}
    for v in bv.versions:
        groups.setdefault(bucket_of(v.kind, v.key), []).append(_e_key_version(v, limits))
    ids = sorted(groups)
    blobs = [b"".join(groups[b]) for b in ids]
    counts = [len(groups[b]) for b in ids]
    budget = max_bytes - _OVERHEAD_BYTES - _BUCKET_IDS_HEAD_BYTES
    out = []
    for r in _chunks([2 + len(b) for b in blobs], budget, "BucketVersions bucket"):
        chunk_ids = ids[r.start : r.stop]
        out.append(
            _message(
                BUCKET_VERSIONS_TYPE,
                _array([_head(_MAJOR_UINT, b) for b in chunk_ids]),
                _head(_MAJOR_ARRAY, sum(counts[r.start : r.stop]))
                + b"".join(blobs[r.start : r.stop]),
            )
        )
    return out


# --- decoding ----------------------------------------------------------------------------------


def _d_text(value: object, what: str, max_bytes: int) -> str:
    if type(value) is not str:
        _bad(what, f"expected a text string, got {_type_name(value)}")
    # A character is at most 4 bytes of UTF-8: only long strings need measuring.
    if len(value) * 4 > max_bytes and len(value.encode()) > max_bytes:
        _bad(what, f"longer than {max_bytes} bytes")
    return value


def _d_kind(value: object, limits: StoreLimits) -> str:
    kind = _d_text(value, "kind", limits.kind_max_bytes)
    if not kind:
        _bad("kind", "must not be empty")
    return kind


def _d_version(lamport: object, node: object, what: str) -> Version:
    time = _d_u64(lamport, f"{what}.lamport")
    if time == 0:
        _bad(f"{what}.lamport", "must be at least 1")
    name = _d_name(node, f"{what}.node")
    if not name:
        _bad(f"{what}.node", "must not be empty")
    return Version(time, name)


def _d_fields(value: object, what: str, n: int) -> list[Any]:
    fields = _d_array(value, what)
    if len(fields) != n:
        _bad(what, f"expected {n} items, got {len(fields)}")
    return fields


def _d_entry(value: object, limits: StoreLimits) -> Entry:
    f = _d_fields(value, "Entry", 7)
    entry_value = _d_bytes(f[2], "Entry.value", limits.value_max_bytes)
    tombstone = _d_bool(f[5], "Entry.tombstone")
    since = f[6]
    if tombstone:
        if entry_value:
            _bad("Entry", "a tombstone has an empty value")
        if type(since) is not float or not math.isfinite(since):
            _bad("Entry.tombstone_since_s", f"expected a finite float, got {_type_name(since)}")
    elif since is not None:
        _bad("Entry.tombstone_since_s", "a live entry has none")
    return Entry(
        kind=_d_kind(f[0], limits),
        key=_d_text(f[1], "Entry.key", limits.key_max_bytes),
        value=entry_value,
        version=_d_version(f[3], f[4], "Entry.version"),
        tombstone=tombstone,
        tombstone_since_s=since,
    )


def _d_key_version(value: object, limits: StoreLimits) -> KeyVersion:
    f = _d_fields(value, "KeyVersion", 5)
    return KeyVersion(
        kind=_d_kind(f[0], limits),
        key=_d_text(f[1], "KeyVersion.key", limits.key_max_bytes),
        version=_d_version(f[2], f[3], "KeyVersion.version"),
        fingerprint=_d_u64(f[4], "KeyVersion.fingerprint"),
    )


def _d_want_key(value: object, limits: StoreLimits) -> tuple[str, str]:
    f = _d_fields(value, "Want key", 2)
    return _d_kind(f[0], limits), _d_text(f[1], "Want key", limits.key_max_bytes)


def _d_bucket(value: object) -> int:
    bucket = _d_u64(value, "bucket")
    if bucket >= DIGEST_BUCKETS:
        _bad("bucket", f"{bucket} is not in 0..{DIGEST_BUCKETS - 1}")
    return bucket


def _d_digest(value: object) -> Digest:
    raw = _d_bytes(value, "Digest", _DIGEST.size)
    if len(raw) != _DIGEST.size:
        _bad("Digest", f"expected {_DIGEST.size} bytes, got {len(raw)}")
    return Digest(_DIGEST.unpack(raw))


def decode_store_message(
    data: bytes,
    *,
    max_bytes: int = STORE_MESSAGE_MAX_BYTES,
    limits: StoreLimits = DEFAULT_LIMITS,
) -> StoreMessage:
    """One store message, or `DecodeError` for any defect."""
    f = _d_array(_load_one(data, max_bytes, _MAX_DEPTH), "store message")
    if not f or type(f[0]) is not int:
        _bad("store message", "expected [TYPE, ...] with an integer TYPE")
    kind, n = f[0], len(f)
    if kind == Entries.TYPE and n == 2:
        return Entries(tuple(_d_entry(e, limits) for e in _d_array(f[1], "Entries")))
    if kind == DIGEST_TYPE and n == 2:
        return _d_digest(f[1])
    if kind == BUCKET_VERSIONS_TYPE and n == 3:
        return BucketVersions(
            buckets=tuple(_d_bucket(b) for b in _d_array(f[1], "BucketVersions.buckets")),
            versions=tuple(
                _d_key_version(v, limits) for v in _d_array(f[2], "BucketVersions.versions")
            ),
        )
    if kind == Want.TYPE and n == 2:
        return Want(tuple(_d_want_key(k, limits) for k in _d_array(f[1], "Want")))
    _bad("store message", f"unknown type {kind} with {n} items")


def decode_entry(
    data: bytes, *, max_bytes: int = STORE_MESSAGE_MAX_BYTES, limits: StoreLimits = DEFAULT_LIMITS
) -> Entry:
    """The single entry of an `encode_entry` message, or `DecodeError`."""
    msg = decode_store_message(data, max_bytes=max_bytes, limits=limits)
    if not isinstance(msg, Entries) or len(msg.entries) != 1:
        _bad("store message", "expected Entries with exactly one entry")
    return msg.entries[0]


__all__ = [
    "BUCKET_VERSIONS_TYPE",
    "DIGEST_TYPE",
    "STORE_MESSAGE_MAX_BYTES",
    "Entries",
    "StoreMessage",
    "Want",
    "decode_entry",
    "decode_store_message",
    "encode_bucket_versions",
    "encode_digest",
    "encode_entries",
    "encode_entry",
    "encode_want",
]
