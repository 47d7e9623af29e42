"""The replicated state as the agent's subsystems see it: writes, indexes, waiting, listening.

Catalog, intentions, KV and the CA all keep their data in the one replicated
store (gossip/store.py) under their own *kinds*. They do not talk to gossip:
they take a `ReplicatedState` (the `Replicator` in the agent, `LocalState` in
tests and tools) and a `NodeSource` (the member list, for node health).

Indexes (Consul's ``X-Consul-Index``, ``CreateIndex``, ``ModifyIndex``) come
from one `ChangeTracker`: it rises on every applied store change and on every
*touch* of a topic that is not in the store (``"members"``: a node failing
changes health answers without any write). A blocking query waits on the
topics it reads from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..gossip.store import Entry, Store
from .batch import SharedCommit, Write, apply_writes

__all__ = [
    "TOPIC_MEMBERS",
    "ChangeTracker",
    "Listener",
    "LocalState",
    "NodeInfo",
    "NodeSource",
    "ReplicatedState",
    "StaticNodes",
]

# The topic touched on every member state change (join, suspect, fail, leave, reap).
TOPIC_MEMBERS = "members"

Listener = Callable[[list[Entry]], None]


class ChangeTracker:
    """Consul-style indexes and wake-ups over a `Store`, plus topics outside it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._touches = 0
        self._topic_index: dict[str, int] = {}
        self._create_index: dict[tuple[str, str], int] = {}
        self._modify_index: dict[tuple[str, str], int] = {}
        self._changed: dict[str, trio.Event] = {}
        self._listeners: dict[str, list[Listener]] = {}

    @property
    def index(self) -> int:
        """Rises on every change of any topic; never goes down while the process lives.

        It starts at 1, the index Consul reports for "nothing yet", so the
        first change is 2: a blocking query that saw an empty answer
        (index 1) wakes on the first write instead of missing it.
        """
        return self.store.index + self._touches + 1

    def topic_index(self, *topics: str) -> int:
        """The index of the last change to any of `topics` (kinds or touched topics), 0 if none."""
        return max((self._topic_index.get(t, 0) for t in topics), default=0)

    def entry_indexes(self, kind: str, key: str) -> tuple[int, int]:
        """(CreateIndex, ModifyIndex) of a key; (0, 0) when unknown."""
        k = (kind, key)
        return self._create_index.get(k, 0), self._modify_index.get(k, 0)

    def loaded(self, entries: list[Entry]) -> None:
        """Give each entry loaded at start its own place in the (restarted) index."""
        for i, entry in enumerate(entries, start=2):
            k = (entry.kind, entry.key)
            self._modify_index[k] = i
            if not entry.tombstone:
                self._create_index[k] = i
            self._topic_index[entry.kind] = max(self._topic_index.get(entry.kind, 0), i)

    def subscribe(self, kind: str, listener: Listener) -> None:
        """Call `listener(entries)` after changes of `kind` are applied (local or remote).

        Listeners run synchronously inside the write or merge: keep them short
        (rebuild an index, invalidate a cache, set an event).
        """
        self._listeners.setdefault(kind, []).append(listener)

    def note(self, entries: Iterable[Entry]) -> None:
        """Record applied changes: indexes, listeners, wake-ups."""
        by_kind: dict[str, list[Entry]] = {}
        index = self.index
        for entry in entries:
            k = (entry.kind, entry.key)
            if entry.tombstone:
                self._create_index.pop(k, None)
            elif k not in self._create_index:
                self._create_index[k] = index
            self._modify_index[k] = index
            by_kind.setdefault(entry.kind, []).append(entry)
        for kind, changed in by_kind.items():
            self._topic_index[kind] = index
            for listener in self._listeners.get(kind, ()):
                listener(changed)
            self._wake(kind)

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        """Collected tombstones: their keys leave the index maps."""
        for k in keys:
            self._modify_index.pop(k, None)

    def touch(self, topic: str) -> int:
        """A change outside the store (members); wakes waiters on `topic`. The new index."""
        self._touches += 1
        self._topic_index[topic] = self.index
        self._wake(topic)
        return self.index

    def _wake(self, topic: str) -> None:
        event = self._changed.pop(topic, None)
        if event is not None:
            event.set()

    async def wait(self, topics: str | Iterable[str], index: int, timeout_s: float) -> int:
        """Block until one of `topics` changed after `index`, or the timeout; the index then.

        An `index` above anything counted here comes from before a restart
        (indexes restart): answer at once, so the client resets instead of
        hanging for the whole wait.
        """
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if index > self.index:
            return self.topic_index(*names)
        with trio.move_on_after(timeout_s):
            while self.topic_index(*names) <= index:
                events = []
                for name in names:
                    event = self._changed.get(name)
                    if event is None:
                        event = self._changed[name] = trio.Event()
                    events.append(event)
                await _first_of(events)
        return self.topic_index(*names)


async def _first_of(events: list[trio.Event]) -> None:
    if len(events) == 1:
        await events[0].wait()
        return
    async with trio.open_nursery() as nursery:
        for event in events:

            async def one(e: trio.Event = event) -> None:
                await e.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(one)


class ReplicatedState(Protocol):
    """What a subsystem may do with the replicated store."""

    @property
    def store(self) -> Store:
        """Read-only use: `get`, `items`. Writes go through `put` / `delete_many`."""
        ...

    @property
    def tracker(self) -> ChangeTracker: ...

    @property
    def node_name(self) -> str:
        """The name versions carry: this agent's member name."""
        ...

    def put(self, kind: str, key: str, value: bytes) -> Entry:
        """Write; durable and on its way to every member when this returns.

        Raises a `LocalProtocolError` subclass (`EntryTooLarge`, `StoreFull`,
        `InvalidEntry`) with a one-line message on bad input.
        """
        ...

    def delete_many(self, kind: str, keys: Iterable[str]) -> list[Entry]:
        """Tombstones for `keys` (missing keys too), durable on return."""
        ...

    def write_many(self, writes: Iterable[Write]) -> list[Entry]:
        """Puts and deletes in order, durable together on return (one commit; store/batch.py).

        A refused write raises like `put`, after the writes before it were
        committed; the ones after it are not applied. Inside `one_commit()`
        they are durable at the end of that block instead.
        """
        ...

    def one_commit(self) -> AbstractContextManager[None]:
        """The writes of a synchronous block (no `await`) share one commit at its end."""
        ...


class LocalState:
    """A `ReplicatedState` in memory with no gossip: unit tests, tools, the simulator."""

    def __init__(self, node_name: str = "node1", *, wall_clock: Callable[[], float] = time.time):
        self._store = Store(node_name)
        self._tracker = ChangeTracker(self._store)
        self._wall_clock = wall_clock
        self._shared = SharedCommit(self._make_durable)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def tracker(self) -> ChangeTracker:
        return self._tracker

    @property
    def node_name(self) -> str:
        return self._store.node_id

    def put(self, kind: str, key: str, value: bytes) -> Entry:
        return self.write_many([Write.put(kind, key, value)])[0]

    def delete_many(self, kind: str, keys: Iterable[str]) -> list[Entry]:
        return self.write_many([Write.delete(kind, key) for key in keys])

    def write_many(self, writes: Iterable[Write]) -> list[Entry]:
        entries, refused = apply_writes(self._store, writes, self._wall_clock())
        if entries:
            if not self._shared.defer(entries):
                self._make_durable(entries)
            self._tracker.note(entries)
        if refused is not None:
            raise refused
        return entries

    def one_commit(self) -> AbstractContextManager[None]:
        return self._shared.one_commit()

    def _make_durable(self, entries: list[Entry]) -> None:
        """Persist applied entries (local or merged) before anyone sees them; none in memory."""

    def merge(self, entries: Iterable[Entry]) -> int:
        """Apply remote entries, as gossip would; how many changed the replica."""
        applied = [e for e in entries if self._store.merge(e)]
        if applied:
            self._make_durable(applied)
            self._tracker.note(applied)
        return len(applied)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member as the catalog sees it."""

    name: str
    address: str  # the advertised gossip IP
    state: str  # "alive" | "suspect" | "leaving" | "left" | "failed"
    datacenter: str = "dc1"
    node_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # the decoded gossip meta

    @property
    def healthy(self) -> bool:
        """Only an alive member's services can pass; any other state is critical."""
        return self.state == "alive"


class NodeSource(Protocol):
    """The member list. Its changes touch `TOPIC_MEMBERS` on the tracker."""

    def nodes(self) -> list[NodeInfo]:
        """Every member still known (reaped members are gone), sorted by name."""
        ...

    def node(self, name: str) -> NodeInfo | None: ...


class StaticNodes:
    """A `NodeSource` from a list (tests, tools); `set` replaces a node and touches members."""

    def __init__(self, nodes: Iterable[NodeInfo] = (), tracker: ChangeTracker | None = None):
        self._nodes = {n.name: n for n in nodes}
        self._tracker = tracker

    def nodes(self) -> list[NodeInfo]:
        return [self._nodes[k] for k in sorted(self._nodes)]

    def node(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def set(self, node: NodeInfo) -> None:
        self._nodes[node.name] = node
        if self._tracker is not None:
            self._tracker.touch(TOPIC_MEMBERS)

    def remove(self, name: str) -> None:
        self._nodes.pop(name, None)
        if self._tracker is not None:
            self._tracker.touch(TOPIC_MEMBERS)
