"""The transmit-limited broadcast queue (memberlist's `queue.go`).

Rules that live here:
- an update is piggybacked at most `limit` times, then dropped;
- the least-sent updates go first, newest first among equals, so fresh news
  spreads before old news is repeated;
- a newer update with the same key (for membership: the node name) replaces
  the queued one, because only the latest state of a node matters.

Entries sit in buckets by transmit count, so picking a packet's worth of
updates costs what it returns, not the queue length (a 10,000-node join storm
queues 10,000 updates on every node).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

MIN_MESSAGE_BYTES = 8  # no encoded update is smaller; stop scanning below this
# Looking further for an update small enough to fill the last bytes of a
# packet costs more than the bytes are worth.
_MAX_SKIPPED = 32


@dataclass(slots=True)
class _Entry:
    key: Hashable | None
    data: bytes
    transmits: int = 0
    seq: int = 0
    on_done: Callable[[], None] | None = field(default=None)


class BroadcastQueue:
    def __init__(self) -> None:
        self._buckets: dict[int, dict[int, _Entry]] = {}
        self._by_key: dict[Hashable, _Entry] = {}
        self._seq = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(
        self, data: bytes, *, key: Hashable | None = None, on_done: Callable[[], None] | None = None
    ) -> None:
        """Queue an encoded update; `on_done` runs when it is dropped or replaced."""
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._remove(old)
        self._seq += 1
        entry = _Entry(key=key, data=data, seq=self._seq, on_done=on_done)
        self._buckets.setdefault(0, {})[entry.seq] = entry
        if key is not None:
            self._by_key[key] = entry
        self._len += 1

    def _remove(self, entry: _Entry) -> None:
        bucket = self._buckets[entry.transmits]
        del bucket[entry.seq]
        if not bucket:
            del self._buckets[entry.transmits]
        self._len -= 1
        if entry.on_done is not None:
            entry.on_done()

    def pop_batch(self, budget_bytes: int, per_item_overhead_bytes: int, limit: int) -> list[bytes]:
        """Take updates that fit in `budget_bytes`, counting one transmit each."""
        picked: list[_Entry] = []
        remaining = budget_bytes
        skipped = 0
        for transmits in sorted(self._buckets):
            if remaining < MIN_MESSAGE_BYTES + per_item_overhead_bytes or skipped > _MAX_SKIPPED:
                break
            for entry in reversed(self._buckets[transmits].values()):
                cost = len(entry.data) + per_item_overhead_bytes
                if cost > remaining:
                    skipped += 1
                    if skipped > _MAX_SKIPPED:
                        break
                    continue
                picked.append(entry)
                remaining -= cost
                if remaining < MIN_MESSAGE_BYTES + per_item_overhead_bytes:
                    break
        out: list[bytes] = []
        for entry in picked:
            out.append(entry.data)
            bucket = self._buckets[entry.transmits]
            del bucket[entry.seq]
            if not bucket:
                del self._buckets[entry.transmits]
            entry.transmits += 1
            if entry.transmits >= limit:
                self._len -= 1
                if entry.key is not None and self._by_key.get(entry.key) is entry:
                    del self._by_key[entry.key]
                if entry.on_done is not None:
                    entry.on_done()
            else:
                self._buckets.setdefault(entry.transmits, {})[entry.seq] = entry
        return out

    def prune(self, max_len: int) -> None:
        """Drop the most-sent updates beyond `max_len` (bounded memory under churn)."""
        for transmits in sorted(self._buckets, reverse=True):
            if self._len <= max_len:
                return
            for entry in list(self._buckets.get(transmits, {}).values()):
                if self._len <= max_len:
                    return
                if entry.key is not None and self._by_key.get(entry.key) is entry:
                    del self._by_key[entry.key]
                self._remove(entry)
