"""The replicated store: a sans-IO map `(kind, key) -> value` merged by last-writer-wins.

Rules that live here:

- Every entry carries a `Version(lamport, node)`. Versions are totally ordered:
  the higher Lamport time wins, the node id (string order) breaks ties. Two
  entries with the same version can only differ after a node lost its data and
  reused a version; their content (`_content_order`) breaks that tie, so merge
  is still a deterministic join: commutative, associative and idempotent.
- The Lamport clock is bumped by every local write and advanced by every valid
  received version, even one that loses, so a local write always beats what
  this node has seen.
- A delete is a tombstone (empty value) stamped with the deleting node's wall
  clock (`tombstone_since_s`). The stamp is replicated, so every replica
  collects the tombstone at the same age and a re-received old tombstone does
  not start a new life. Wall time, not monotonic time: the stamp is persisted
  and must mean the same after a reboot.
- Resurrection caveat (Cassandra's gc_grace): a replica partitioned for longer
  than `tombstone_max_age_s` still holds the deleted value; when it comes back
  the others have forgotten the delete and take the value again. Keep the age
  longer than any partition you want to survive (default 72 h).
- Persistence is the caller's: persist `put`/`delete`'s entry before
  acknowledging it, then broadcast it; after `merge` returns True persist
  `get(kind, key, tombstones=True)` (None: delete the row); delete the rows
  `collect_tombstones` returns; and persist `clock` in each of those
  transactions. `load(entries, clock)` rebuilds the same replica and clock.
  (Without the clock, a restart after a tombstone was collected could reuse a
  lower version for the same key and lose to a stale tombstone elsewhere.)
- Limits (`StoreLimits`) are enforced on every write: a local one raises a
  `LocalProtocolError` subclass with a one-line message, a remote one raises a
  `RemoteProtocolError` subclass and the caller drops the entry.
- Budgets: each kind named in `StoreLimits.budgets` has its own bytes and
  entries (tombstones included), and all other kinds share `other_budget`.
  The defaults add up to the store's totals, so a kind full to its budget
  (KV, say, filled by a local client or by any gossip-key holder) never takes
  the room of another: intentions, the catalog and the CA can always write.
  A received entry over its kind's budget is dropped like any over-limit
  entry; anti-entropy offers it again, and it is taken once there is room.
- Anti-entropy, in one round (A starts, B answers; encodings in store_codec):
  A sends `digest()`; B sends `bucket_versions(diff_request(digest))`; A sends
  `entries_newer_than(bv)` and `wanted(bv)`; B merges them and answers
  `entries_for(wanted)`; A merges. Both then hold the union of their replicas.
  The digest is `DIGEST_BUCKETS` 64-bit XORs of per-entry blake2b fingerprints,
  kept up to date on every change, so `digest()` costs O(buckets), and two
  replicas that differ in a few keys exchange O(differing buckets) versions.
- `index` rises on every applied change, and `kind_index(kind)` remembers the
  last change of each kind: "changed since i?" is one dict lookup (blocking
  queries, `X-Consul-Index`). It restarts from the loaded count after a
  reboot; Consul clients treat a lower index as a reset.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from .errors import LocalProtocolError, RemoteProtocolError

DIGEST_BUCKETS = 256  # 10k entries: ~40 keys per bucket, a 2 KiB digest; both ends must agree
LAMPORT_MAX = 2**64 - 1  # a uint64 on the wire
NODE_MAX_CHARS = 128  # as codec.NAME_MAX_CHARS: a version's node is a member name
_SEP = b"\xff"  # never appears in UTF-8, so kind/key/node joined with it are unambiguous
_FP_FIXED = struct.Struct(">Q?d")  # lamport, tombstone, tombstone_since_s (0.0 when live)


class EntryTooLarge(LocalProtocolError):
    """A local write's kind, key or value is over `StoreLimits`."""


class StoreFull(LocalProtocolError):
    """A local write would take the store over its total bytes or entry count."""


class KindFull(StoreFull):
    """A local write would take its kind over the kind's budget (`StoreLimits.budgets`)."""


class InvalidEntry(LocalProtocolError):
    """A local write or persisted entry breaks an entry invariant (empty kind, bad text...)."""


class RemoteEntryTooLarge(RemoteProtocolError):
    """A received entry's kind, key or value is over our limits: dropped."""


class RemoteStoreFull(RemoteProtocolError):
    """A received entry would take our store over its limits: dropped."""


class RemoteInvalidEntry(RemoteProtocolError):
    """A received entry breaks an entry invariant: dropped."""


_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KindBudget:
    """The room of one kind (or of all unlisted kinds together): bytes and entries."""

    max_bytes: int
    max_entries: int

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_entries <= 0:
            raise ValueError("KindBudget.max_bytes and max_entries must be positive")


# Sums to the totals below: 448 MiB and 720,896 entries. The catalog's two
# kinds hold 2^18 entries each: 100,000 services with a sidecar each are
# 200,000 service entries and at least as many checks, with room left for
# tombstones of deregistrations (they count until collected). KV, intentions,
# CA records and unknown kinds keep the room they had.
DEFAULT_BUDGETS: tuple[tuple[str, KindBudget], ...] = (
    ("kv", KindBudget(128 * _MIB, 1 << 17)),
    ("service", KindBudget(128 * _MIB, 1 << 18)),
    ("check", KindBudget(128 * _MIB, 1 << 18)),
    ("intention", KindBudget(32 * _MIB, 1 << 15)),
    ("ca", KindBudget(16 * _MIB, 1 << 12)),
)
DEFAULT_OTHER_BUDGET = KindBudget(16 * _MIB, 28_672)


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Bounds on one entry and on the whole replica; every node should use the same."""

    # Kinds are a handful of fixed names ("service", "intention", "kv"). Bytes of
    # UTF-8, not characters, so the bound holds for memory and the wire alike.
    kind_max_bytes: int = 128
    # Keys are paths or IDs (service IDs, "src\x00dst", KV paths); 512 bytes is
    # Consul's practical KV key size and keeps a key version under ~1 KiB.
    key_max_bytes: int = 512
    # Consul KV's limit (kv_max_value_size): big enough for a CA bundle, and a
    # whole entry still fits one push/pull frame many times over.
    value_max_bytes: int = 512 * 1024
    # The whole replica lives in every agent's memory and SQLite file.
    store_max_bytes: int = 448 * 1024 * 1024
    # Bounds per-entry overhead and the versions of one digest bucket: at the
    # limit a bucket holds ~2.8k keys, under 3 MiB of versions even with
    # 512-byte keys, so it fits one 8 MiB frame.
    entries_max: int = 720_896
    # Tombstones are kept this long after the delete (wall clock), so a member
    # that was away for less catches the delete; see the resurrection caveat.
    tombstone_max_age_s: float = 72 * 3600.0
    # Per-kind room, so one kind cannot starve another (see the module doc).
    budgets: tuple[tuple[str, KindBudget], ...] = DEFAULT_BUDGETS
    # Shared by every kind not in `budgets`: a peer inventing kinds gets no more.
    other_budget: KindBudget = DEFAULT_OTHER_BUDGET

    def budget_of(self, kind: str) -> tuple[str | None, KindBudget]:
        """The budget group of `kind` (None: the shared one for unlisted kinds) and its room."""
        for name, budget in self.budgets:
            if name == kind:
                return name, budget
        return None, self.other_budget

    def with_budget(self, kind: str, max_bytes: int) -> StoreLimits:
        """These limits with `kind` given `max_bytes`; the store total moves by the difference.

        So the other kinds keep exactly the room they had.
        """
        _, old = self.budget_of(kind)
        new = KindBudget(max_bytes, old.max_entries)
        budgets = tuple((n, new if n == kind else b) for n, b in self.budgets)
        if all(n != kind for n, _ in self.budgets):
            budgets += ((kind, new),)
        total = self.store_max_bytes + max_bytes - old.max_bytes
        return replace(self, budgets=budgets, store_max_bytes=max(1, total))

    def __post_init__(self) -> None:
        for name in ("kind_max_bytes", "key_max_bytes", "value_max_bytes", "store_max_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"StoreLimits.{name} must be positive")
        if self.entries_max <= 0 or not self.tombstone_max_age_s > 0:
            raise ValueError("StoreLimits.entries_max and tombstone_max_age_s must be positive")


DEFAULT_LIMITS = StoreLimits()


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Higher Lamport time wins; the node id breaks ties (a total order)."""

    lamport: int
    node: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One replicated value; `value` is opaque bytes, empty for a tombstone.

    `tombstone_since_s` is the deleting node's wall clock (seconds), None when live.
    """

    kind: str
    key: str
    value: bytes
    version: Version
    tombstone: bool = False
    tombstone_since_s: float | None = None


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """What anti-entropy compares: the version and a fingerprint of the whole entry.

    The fingerprint catches two entries under one version (a node that lost its
    data), which the version alone would call equal forever.
    """

    kind: str
    key: str
    version: Version
    fingerprint: int  # uint64


@dataclass(frozen=True, slots=True)
class Digest:
    """Per-bucket XOR of entry fingerprints, `DIGEST_BUCKETS` uint64s."""

    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BucketVersions:
    """Every key version the sender holds in `buckets` (none listed: it has none there)."""

    buckets: tuple[int, ...]
    versions: tuple[KeyVersion, ...]


@dataclass(slots=True)
class _Slot:
    entry: Entry
    fingerprint: int
    size_bytes: int
    bucket: int


def bucket_of(kind: str, key: str) -> int:
    """The digest bucket of a key: stable across processes and versions (not `hash()`)."""
    h = hashlib.blake2b(kind.encode() + _SEP + key.encode(), digest_size=2).digest()
    return int.from_bytes(h, "big") % DIGEST_BUCKETS


_ENTRY_OVERHEAD_BYTES = 64  # version, flags and indexes: counted so empty values are not free


def _fingerprint(entry: Entry, kind_b: bytes, key_b: bytes, node_b: bytes) -> int:
    h = hashlib.blake2b(kind_b + _SEP + key_b + _SEP + node_b + _SEP, digest_size=8)
    since = entry.tombstone_since_s if entry.tombstone_since_s is not None else 0.0
    h.update(_FP_FIXED.pack(entry.version.lamport, entry.tombstone, since))
    h.update(entry.value)
    return int.from_bytes(h.digest(), "big")


def _content_order(entry: Entry) -> tuple[bool, bytes, float]:
    """Breaks ties between different entries under one version, deterministically."""
    since = entry.tombstone_since_s if entry.tombstone_since_s is not None else 0.0
    return (entry.tombstone, entry.value, since)


def _beats(new: Entry, old: Entry) -> bool:
    """True if `new` replaces `old` under last-writer-wins."""
    nv, ov = new.version, old.version
    if nv.lamport != ov.lamport:
        return nv.lamport > ov.lamport
    if nv.node != ov.node:
        return nv.node > ov.node
    return new != old and _content_order(new) > _content_order(old)


class _Errors:
    """Which exception types a check raises: local callers and remote peers differ."""

    def __init__(
        self, too_large: type[Exception], full: type[Exception], invalid: type[Exception]
    ) -> None:
        self.too_large, self.full, self.invalid = too_large, full, invalid


_LOCAL = _Errors(EntryTooLarge, StoreFull, InvalidEntry)
_REMOTE = _Errors(RemoteEntryTooLarge, RemoteStoreFull, RemoteInvalidEntry)
_LOCAL_KIND_FULL = _Errors(EntryTooLarge, KindFull, InvalidEntry)


def _utf8(text: str, what: str, errors: _Errors) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise errors.invalid(f"{what} {text!r:.60} is not valid text (lone surrogate)") from None


class Store:
    """One node's replica. Sans-IO: no clock, no I/O; the caller persists and sends."""

    def __init__(self, node_id: str, limits: StoreLimits = DEFAULT_LIMITS) -> None:
        if not node_id or len(node_id) > NODE_MAX_CHARS:
            raise InvalidEntry(f"node id must be 1..{NODE_MAX_CHARS} characters")
        _utf8(node_id, "node id", _LOCAL)
        self.node_id = node_id
        self.limits = limits
        self._by_kind: dict[str, dict[str, _Slot]] = {}
        # Keys by digest bucket, a set made on a bucket's first key: 256 empty
        # sets cost 55 KiB a replica, which a simulation of 10,000 replicas notices.
        self._bucket_keys: dict[int, set[tuple[str, str]]] = {}
        self._bucket_xor: list[int] = [0] * DIGEST_BUCKETS
        self._tombstones: set[tuple[str, str]] = set()
        # Bytes and entries per budget group (a budgeted kind, or None for the rest).
        self._group_bytes: dict[str | None, int] = {}
        self._group_count: dict[str | None, int] = {}
        self._count = 0
        self._total_bytes = 0
        self._clock = 0
        self._index = 0
        self._kind_index: dict[str, int] = {}

    # --- reading -----------------------------------------------------------------------------

    @property
    def clock(self) -> int:
        """The Lamport clock: at least every version this node has written or seen."""
        return self._clock

    @property
    def index(self) -> int:
        """Rises on every applied change (for `X-Consul-Index`)."""
        return self._index

    @property
    def total_bytes(self) -> int:
        """What counts against `limits.store_max_bytes`, tombstones included."""
        return self._total_bytes

    def __len__(self) -> int:
        """Entries held, tombstones included."""
        return self._count

    def kind_usage(self, kind: str) -> tuple[int, int]:
        """(bytes, entries) held by `kind`'s budget group, tombstones included."""
        group, _ = self.limits.budget_of(kind)
        return self._group_bytes.get(group, 0), self._group_count.get(group, 0)

    def kind_index(self, kind: str) -> int:
        """The `index` of the last change to `kind`, 0 if it never changed."""
        return self._kind_index.get(kind, 0)

    def changed_since(self, kind: str, index: int) -> bool:
        """Wait-free check for blocking queries: did anything in `kind` change after `index`?"""
        return self._kind_index.get(kind, 0) > index

    def get(self, kind: str, key: str, *, tombstones: bool = False) -> Entry | None:
        slot = self._by_kind.get(kind, {}).get(key)
        if slot is None or (slot.entry.tombstone and not tombstones):
            return None
        return slot.entry

    def items(self, kind: str, *, tombstones: bool = False) -> list[Entry]:
        """Entries of one kind, sorted by key."""
        slots = self._by_kind.get(kind, {})
        return [
            slots[key].entry
            for key in sorted(slots)
            if tombstones or not slots[key].entry.tombstone
        ]

    def kinds(self) -> list[str]:
        return sorted(kind for kind, slots in self._by_kind.items() if slots)

    def entries(self) -> Iterator[Entry]:
        """Everything, tombstones included, in no particular order (persistence, tests)."""
        for slots in self._by_kind.values():
            for slot in slots.values():
                yield slot.entry

    # --- writing -----------------------------------------------------------------------------

    def put(self, kind: str, key: str, value: bytes) -> Entry:
        """A local write. Persist the returned entry, then acknowledge and broadcast it."""
        return self._write_local(Entry(kind, key, value, self._next_version()))

    def delete(self, kind: str, key: str, now_wall: float) -> Entry:
        """A local delete: a tombstone stamped `now_wall` (wall-clock seconds).

        Written even when the key looks absent: a write we have not seen yet must
        still lose to this delete.
        """
        if not math.isfinite(now_wall):
            raise InvalidEntry(f"now_wall must be finite, got {now_wall}")
        return self._write_local(Entry(kind, key, b"", self._next_version(), True, now_wall))

    def _next_version(self) -> Version:
        if self._clock >= LAMPORT_MAX:
            raise StoreFull("the Lamport clock is exhausted (a peer sent the maximum version)")
        return Version(self._clock + 1, self.node_id)

    def _write_local(self, entry: Entry) -> Entry:
        self._apply(entry, _LOCAL)  # raises before the clock moves, so a refused write is free
        self._clock = entry.version.lamport
        return entry

    def merge(self, entry: Entry) -> bool:
        """Take a received entry if it wins; True if our replica changed.

        The clock advances to the entry's version even when it loses. Over-limit
        or invalid entries raise a `RemoteProtocolError` subclass: drop them.
        """
        changed = self._apply(entry, _REMOTE)
        if entry.version.lamport > self._clock:
            self._clock = entry.version.lamport
        return changed

    def load(self, entries: Iterable[Entry], clock: int = 0) -> None:
        """Rebuild from persistence at start: the same replica, and clock = max(clock, versions)."""
        for entry in entries:
            # Budgets are not applied to what was already acknowledged: a store
            # written before them (or with a larger budget) loads whole, and its
            # kind takes new writes again once deletes bring it under budget.
            self._apply(entry, _LOCAL, budget=False)
            self._clock = max(self._clock, entry.version.lamport)
        self._clock = max(self._clock, clock)

    def collect_tombstones(
        self, now_wall: float, max_age_s: float | None = None
    ) -> list[tuple[str, str]]:
        """Forget tombstones older than `max_age_s` (default: the limits'); delete their rows.

        Not a visible change, so `index` stays. See the resurrection caveat above.
        """
        age_s = self.limits.tombstone_max_age_s if max_age_s is None else max_age_s
        collected: list[tuple[str, str]] = []
        for kind, key in sorted(self._tombstones):
            since = self._by_kind[kind][key].entry.tombstone_since_s
            if since is not None and now_wall - since >= age_s:
                collected.append((kind, key))
        for kind, key in collected:
            self._remove(kind, key)
        return collected

    def _check(self, entry: Entry, errors: _Errors) -> tuple[int, bytes, bytes, bytes]:
        """Entry invariants and per-entry limits; returns (size, kind, key, node) as UTF-8."""
        limits, version = self.limits, entry.version
        if not entry.kind:
            raise errors.invalid("kind must not be empty")
        kind_b = _utf8(entry.kind, "kind", errors)
        key_b = _utf8(entry.key, "key", errors)
        node_b = _utf8(version.node, "version node", errors)
        if len(kind_b) > limits.kind_max_bytes:
            raise errors.too_large(
                f"kind is {len(kind_b)} bytes, the limit is {limits.kind_max_bytes}"
            )
        if len(key_b) > limits.key_max_bytes:
            raise errors.too_large(
                f"key {entry.key[:40]!r}... is {len(key_b)} bytes, "
                f"the limit is {limits.key_max_bytes}"
            )
        if len(entry.value) > limits.value_max_bytes:
            raise errors.too_large(
                f"value of {entry.kind}/{entry.key[:60]} is {len(entry.value)} bytes, "
                f"the limit is {limits.value_max_bytes}"
            )
        if not version.node or len(version.node) > NODE_MAX_CHARS:
            raise errors.invalid(f"version node must be 1..{NODE_MAX_CHARS} characters")
        if not 0 < version.lamport <= LAMPORT_MAX:
            raise errors.invalid(f"Lamport time {version.lamport} is not in 1..{LAMPORT_MAX}")
        since = entry.tombstone_since_s
        if entry.tombstone:
            if entry.value:
                raise errors.invalid("a tombstone has an empty value")
            if since is None or not math.isfinite(since):
                raise errors.invalid("a tombstone needs a finite tombstone_since_s")
        elif since is not None:
            raise errors.invalid("a live entry has no tombstone_since_s")
        size = len(kind_b) + len(key_b) + len(node_b) + len(entry.value) + _ENTRY_OVERHEAD_BYTES
        return size, kind_b, key_b, node_b

    def _apply(self, entry: Entry, errors: _Errors, *, budget: bool = True) -> bool:
        size, kind_b, key_b, node_b = self._check(entry, errors)
        slots = self._by_kind.get(entry.kind)
        old = slots.get(entry.key) if slots is not None else None
        if old is not None and not _beats(entry, old.entry):
            return False
        added = 0 if old is not None else 1
        total = self._total_bytes + size - (old.size_bytes if old is not None else 0)
        if self._count + added > self.limits.entries_max:
            raise errors.full(
                f"store holds {self._count} entries, the limit is {self.limits.entries_max}"
            )
        if total > self.limits.store_max_bytes and (old is None or size > old.size_bytes):
            raise errors.full(
                f"store would hold {total} bytes, the limit is {self.limits.store_max_bytes}"
            )
        if budget:
            group = self._check_budget(entry, size, old, added, errors)
        else:
            group, _ = self.limits.budget_of(entry.kind)
        grown_bytes = size - (old.size_bytes if old is not None else 0)
        fp = _fingerprint(entry, kind_b, key_b, node_b)
        key = (entry.kind, entry.key)
        if old is None:
            bucket = bucket_of(entry.kind, entry.key)
            if slots is None:
                slots = self._by_kind[entry.kind] = {}
            slots[entry.key] = _Slot(entry, fp, size, bucket)
            self._bucket_keys.setdefault(bucket, set()).add(key)
            self._bucket_xor[bucket] ^= fp
        else:
            bucket = old.bucket
            self._bucket_xor[bucket] ^= old.fingerprint ^ fp
            old.entry, old.fingerprint, old.size_bytes = entry, fp, size
        self._count += added
        self._total_bytes = total
        self._group_count[group] = self._group_count.get(group, 0) + added
        self._group_bytes[group] = self._group_bytes.get(group, 0) + grown_bytes
        if entry.tombstone:
            self._tombstones.add(key)
        else:
            self._tombstones.discard(key)
        self._index += 1
        self._kind_index[entry.kind] = self._index
        return True

    def _remove(self, kind: str, key: str) -> None:
        slot = self._by_kind[kind].pop(key)
        keys = self._bucket_keys[slot.bucket]
        keys.discard((kind, key))
        if not keys:
            del self._bucket_keys[slot.bucket]
        self._bucket_xor[slot.bucket] ^= slot.fingerprint
        self._tombstones.discard((kind, key))
        self._count -= 1
        self._total_bytes -= slot.size_bytes
        group, _ = self.limits.budget_of(kind)
        self._group_count[group] -= 1
        self._group_bytes[group] -= slot.size_bytes

    def _check_budget(
        self, entry: Entry, size: int, old: _Slot | None, added: int, errors: _Errors
    ) -> str | None:
        """Refuse an entry that takes its kind over budget (shrinking is always allowed)."""
        group, budget = self.limits.budget_of(entry.kind)
        full = _LOCAL_KIND_FULL.full if errors is _LOCAL else errors.full
        what = f"kind {entry.kind!r}" if group is not None else "kinds without a budget"
        count = self._group_count.get(group, 0)
        if count + added > budget.max_entries:
            raise full(f"{what} holds {count} entries, its budget is {budget.max_entries}")
        held = self._group_bytes.get(group, 0)
        grown = held + size - (old.size_bytes if old is not None else 0)
        if grown > budget.max_bytes and (old is None or size > old.size_bytes):
            raise full(
                f"{what} would hold {grown} bytes, its budget is {budget.max_bytes} "
                "(delete some entries first)"
            )
        return group

    # --- anti-entropy --------------------------------------------------------------------------

    def digest(self) -> Digest:
        """A compact summary: equal digests mean equal replicas (up to 64-bit collisions)."""
        return Digest(tuple(self._bucket_xor))

    def diff_request(self, remote: Digest) -> list[int]:
        """The buckets where `remote` differs from us."""
        if len(remote.buckets) != DIGEST_BUCKETS:
            raise RemoteInvalidEntry(
                f"digest has {len(remote.buckets)} buckets, expected {DIGEST_BUCKETS}"
            )
        mine = self._bucket_xor
        return [b for b, theirs in enumerate(remote.buckets) if theirs != mine[b]]

    def bucket_versions(self, bucket_ids: Iterable[int]) -> BucketVersions:
        """Our version of every key in the given buckets, for the peer to compare."""
        buckets = tuple(sorted(set(bucket_ids)))
        versions: list[KeyVersion] = []
        for b in buckets:
            if not 0 <= b < DIGEST_BUCKETS:
                raise RemoteInvalidEntry(f"bucket {b} is not in 0..{DIGEST_BUCKETS - 1}")
            for kind, key in sorted(self._bucket_keys.get(b, ())):
                slot = self._by_kind[kind][key]
                versions.append(KeyVersion(kind, key, slot.entry.version, slot.fingerprint))
        return BucketVersions(buckets, tuple(versions))

    def _newer_or_conflicting(self, slot: _Slot, theirs: KeyVersion) -> bool:
        """Ours is newer than theirs, or differs under the same version (both sides send)."""
        ours = slot.entry.version
        return ours > theirs.version or (
            ours == theirs.version and slot.fingerprint != theirs.fingerprint
        )

    def entries_newer_than(self, remote: BucketVersions) -> list[Entry]:
        """What the peer lacks in the buckets it listed: our newer entries, keys it misses."""
        theirs = {(v.kind, v.key): v for v in remote.versions}
        out: list[Entry] = []
        for b in remote.buckets:
            if not 0 <= b < DIGEST_BUCKETS:
                raise RemoteInvalidEntry(f"bucket {b} is not in 0..{DIGEST_BUCKETS - 1}")
            for kind, key in sorted(self._bucket_keys.get(b, ())):
                slot = self._by_kind[kind][key]
                version = theirs.get((kind, key))
                if version is None or self._newer_or_conflicting(slot, version):
                    out.append(slot.entry)
        return out

    def wanted(self, remote: BucketVersions) -> list[tuple[str, str]]:
        """Keys where the peer's entry is newer than ours, or that we lack."""
        out: list[tuple[str, str]] = []
        for theirs in remote.versions:
            slot = self._by_kind.get(theirs.kind, {}).get(theirs.key)
            if slot is None:
                out.append((theirs.kind, theirs.key))
                continue
            ours = slot.entry.version
            if theirs.version > ours or (
                theirs.version == ours and theirs.fingerprint != slot.fingerprint
            ):
                out.append((theirs.kind, theirs.key))
        return out

    def entries_for(self, keys: Iterable[tuple[str, str]]) -> list[Entry]:
        """Our entries (tombstones included) for the keys a peer asked for; unknown keys skipped."""
        out: list[Entry] = []
        for kind, key in keys:
            slot = self._by_kind.get(kind, {}).get(key)
            if slot is not None:
                out.append(slot.entry)
        return out
