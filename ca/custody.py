"""When a signer may destroy a root key: only when the root is finished by what it knows.

A root's record in the store is a claim any gossip-key holder can delete or
tamper with, so a record that leaves the view must never cost the cluster
its root keys. A signer keeps, next to each root key it holds
(`KeyStore.save_record`), the root's record as it last trusted it and,
once it has seen the root's successor, when the root's trust period ends.
Rules that live here (sans-IO):

- A root is *finished* when its certificate has expired, or when a trusted
  successor cross-signed by *this* root's key exists and ``2 x leaf TTL``
  (the trust period of the leaves issued under it) has passed since the
  cross-signature was made. The time comes from the cross-signed
  certificate's notBefore, signed by the root's own key, not from a record
  field anyone can rewrite; the leaf TTL from the signed config.
- A *lost bootstrap*: a generation-1 root (this node's own, or one it
  fetched from a peer's bootstrap), while this node has no pin yet (first
  use), when the trusted config names another cluster: another bootstrap
  won. Its key and record may go; kept, the record would be written back
  and deleted again forever.
- Anything else keeps the key: a root that is not superseded is written
  back to the store when its record vanished or was made untrusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .anchor import cross_signed_by
from .fields import MalformedCARecord, dump, load_cert, load_map, malformed, number
from .provider import CLOCK_SKEW_S
from .records import CAConfigRecord, RootRecord, decode_root, encode_root, root_key

__all__ = [
    "HeldRoot",
    "decode_held",
    "encode_held",
    "finished",
    "lost_bootstrap",
    "retire_at_s",
    "successor_of",
]


@dataclass(frozen=True, slots=True)
class HeldRoot:
    """A root whose key this node holds, as this node last trusted it."""

    record: RootRecord
    # Wall time after which every leaf under it has expired (None: not superseded).
    retire_at_s: float | None = None


def encode_held(held: HeldRoot) -> bytes:
    value: dict[str, object] = {"record": encode_root(held.record)}
    if held.retire_at_s is not None:
        value["retire_at_s"] = float(held.retire_at_s)
    return dump(value)


def decode_held(root_id: str, data: bytes) -> HeldRoot:
    """The local record of root `root_id`; `MalformedCARecord` when it is damaged."""
    value = load_map(data)
    raw = value.get("record")
    if not isinstance(raw, bytes):
        malformed(f"the local record of root {root_id[:23]} has no root record")
    record = decode_root(root_key(root_id), raw)
    retire = number(value, "retire_at_s", 0, 1e12) if "retire_at_s" in value else None
    return HeldRoot(record, retire)


def successor_of(root: RootRecord, trusted: Iterable[RootRecord]) -> RootRecord | None:
    """A trusted root cross-signed by `root`'s own key: proof that `root` was rotated out."""
    for candidate in trusted:
        if candidate.previous_id == root.id and cross_signed_by(candidate, root.cert_pem):
            return candidate
    return None


def retire_at_s(successor: RootRecord, leaf_ttl_s: int) -> float:
    """When the root `successor` replaced has no valid leaf left: 2 x leaf TTL after rotating."""
    try:
        rotated_at_s = load_cert(successor.cross_pem).not_valid_before_utc.timestamp()
    except MalformedCARecord:
        return math.inf  # cannot happen for a verified cross-sign; never retire on it
    return rotated_at_s + CLOCK_SKEW_S + 2 * leaf_ttl_s


def finished(held: HeldRoot, now_wall_s: float) -> str | None:
    """Why the key of `held` may be destroyed now, or None to keep it."""
    try:
        expires_s = load_cert(held.record.cert_pem).not_valid_after_utc.timestamp()
    except MalformedCARecord:
        expires_s = math.inf
    if now_wall_s >= expires_s:
        return "its certificate has expired"
    if held.retire_at_s is not None and now_wall_s >= held.retire_at_s:
        return "it was rotated out and every leaf under it has expired"
    return None


def lost_bootstrap(held: HeldRoot, *, pinned: bool, config: CAConfigRecord | None) -> bool:
    """Whether `held` is a bootstrap root (any node's) and another bootstrap won."""
    record = held.record
    return (
        not pinned
        and record.generation == 1
        and config is not None
        and config.cluster_id != record.cluster_id
    )
