"""Several store writes that are acknowledged together: one SQLite commit, not one each.

A service registration writes the service, its checks, maybe a sidecar and
its checks, and deletes what the new definition dropped. Committed one by
one, each write paid its own fsync (WAL, synchronous=FULL), and the
registration rate at 100,000 services stayed under 1,000/s (issue 15,
finding 6). A `ReplicatedState.write_many` applies a list of `Write`s to the
`Store` in order and persists everything applied in one transaction before
it returns.

A write the store refuses (over a budget, too large) stops the batch: the
writes before it are kept, committed and sent, as they were when each was
its own call, and the refusal is raised after that commit, so memory and
disk never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..gossip.errors import LocalProtocolError
from ..gossip.store import Entry, Store

__all__ = ["SharedCommit", "Write", "apply_writes"]


@dataclass(frozen=True, slots=True)
class Write:
    """Put `value` at (kind, key); `value` None writes a tombstone (a delete)."""

    kind: str
    key: str
    value: bytes | None = None

    @classmethod
    def put(cls, kind: str, key: str, value: bytes) -> Write:
        return cls(kind, key, value)

    @classmethod
    def delete(cls, kind: str, key: str) -> Write:
        return cls(kind, key, None)


def apply_writes(
    store: Store, writes: Iterable[Write], now_wall: float
) -> tuple[list[Entry], LocalProtocolError | None]:
    """Apply `writes` to `store` in order; the entries applied, and the refusal that stopped it.

    The caller persists the entries (one transaction) and then raises the
    refusal, if any. Deletes are stamped `now_wall`.
    """
    applied: list[Entry] = []
    for write in writes:
        try:
            if write.value is None:
                applied.append(store.delete(write.kind, write.key, now_wall))
            else:
                applied.append(store.put(write.kind, write.key, write.value))
        except LocalProtocolError as exc:
            return applied, exc
    return applied, None


class SharedCommit:
    """Group commit: the local writes made inside `one_commit()` share one commit at its end.

    The owner (`LocalState`, `Replicator`) asks `defer(entries)` in each
    `write_many`: True inside `one_commit()`, and the entries wait; at the end
    `commit` (the owner's persist-then-send step) runs once for all of them,
    also when the block raised (what was applied is kept, as for a refusal).
    The writes are applied and noted before that commit, so the block must be
    one synchronous step of the event loop (no `await` inside): no other task
    can read, serve or send them before they are durable, and no caller is
    acknowledged before it (see `group_commit.py`).
    """

    def __init__(self, commit: Callable[[list[Entry]], None]) -> None:
        self._commit = commit
        self._waiting: list[Entry] | None = None

    def defer(self, entries: list[Entry]) -> bool:
        """Keep `entries` for the shared commit; False outside `one_commit()`."""
        if self._waiting is None:
            return False
        self._waiting.extend(entries)
        return True

    @contextmanager
    def one_commit(self) -> Iterator[None]:
        if self._waiting is not None:  # nested: the outer block commits
            yield
            return
        self._waiting = []
        try:
            yield
        finally:
            entries, self._waiting = self._waiting, None
            if entries:
                self._commit(entries)
