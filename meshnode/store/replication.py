"""The trio + SQLite driver of the store's replication core (gossip/replication.py).

The rules (what is broadcast, relayed, fetched, and when anti-entropy runs)
live in `meshnode.gossip.replication.Replication`; the simulator drives the
same object. What lives here is I/O:

- Local writes (`put`, `delete`, `delete_many`, `write_many`): `Store` first,
  then SQLite in one transaction with the Lamport clock (durable when this
  returns, so the API may acknowledge; a whole registration is one batch),
  then the core's broadcasts are queued in the gossip core.
- Received entries: the core merges them; those that changed the replica are
  persisted (`gone` rows deleted) with the clock before its broadcasts go out.
  Malformed payloads are dropped and counted (`store.rejected`), never fatal.
- TCP on the gossip port (stream type byte `STREAM_STORE`): anti-entropy
  rounds (gossip/anti_entropy.py, each step a count frame then that many store
  messages), fetches (a `Want`, answered with `Entries`) and pushes of
  security writes (`Entries`, merged and relayed, answered with an empty step).
- Timers: the periodic round (`Replication.anti_entropy_delay_s`) and
  tombstone GC; indexes, listeners and blocking waits live in the
  `ChangeTracker` (meshnode/store/state.py), so the Replicator is a `ReplicatedState`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager

import trio

from ..gossip import store_codec
from ..gossip.anti_entropy import (
    STEP_BYTES_MAX,
    Initiator,
    Responder,
    StepReader,
    encode_step,
)
from ..gossip.driver import GossipDriver
from ..gossip.errors import RemoteProtocolError
from ..gossip.events import (
    Event,
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
)
from ..gossip.membership import Membership
from ..gossip.messages import Addr, State
from ..gossip.replication import (
    CHANNEL_STORE_ENTRY,
    CHANNEL_STORE_NOTICE,
    STREAM_STORE,
    Fetch,
    Outcome,
    Replication,
    ReplicationConfig,
    StoreMessageError,
)
from ..gossip.store import Digest, Entry, Store
from ..gossip.transport import Transport
from ..gossip.wire import Wire
from ..logs import log
from .batch import SharedCommit, Write, apply_writes
from .persist import Persistence
from .state import ChangeTracker

__all__ = [
    "CHANNEL_STORE_ENTRY",
    "CHANNEL_STORE_NOTICE",
    "STREAM_STORE",
    "ReplicationConfig",
    "Replicator",
    "StoreMessageError",
]

_log = logging.getLogger("meshnode.replication")

_READ_CHUNK_BYTES = 65536
_DEFAULT_CONFIG = ReplicationConfig()


class _Steps:
    """`gossip.anti_entropy`'s step framing over one trio stream; the sessions stay sans-IO."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        wire: Wire,
        initial: bytes = b"",
        *,
        max_step_bytes: int = STEP_BYTES_MAX,
    ) -> None:
        self.stream = stream
        self.wire = wire
        self.reader = StepReader(wire, max_step_bytes=max_step_bytes)
        if initial:
            self.reader.feed(initial)

    async def read(self) -> list[store_codec.StoreMessage]:
        while True:
            step = self.reader.next_step(trio.current_time())
            if step is not None:
                return step
            chunk = await self.stream.receive_some(_READ_CHUNK_BYTES)
            if not chunk:
                raise trio.BrokenResourceError("peer closed the store stream mid-step")
            self.reader.feed(chunk)

    async def send(self, messages: list[bytes], *, prefix: bytes = b"") -> None:
        await self.stream.send_all(prefix + encode_step(self.wire, messages))


class Replicator:
    """One agent's replica: the `Store`, its SQLite rows, and its gossip and TCP traffic."""

    def __init__(
        self,
        store: Store,
        persist: Persistence,
        core: Membership,
        driver: GossipDriver,
        wire: Wire,
        transport: Transport,
        *,
        rng: random.Random,
        config: ReplicationConfig = _DEFAULT_CONFIG,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.persist = persist
        self.core = core
        self.driver = driver
        self.wire = wire
        self.transport = transport
        self.config = config
        self.rules: Replication[Member] = Replication(
            store, rng=rng, local_addr=transport.local_addr, config=config, count=self._count
        )
        self._wall_clock = wall_clock
        self._nursery: trio.Nursery | None = None
        self.tracker = ChangeTracker(store)
        self._shared = SharedCommit(self._commit)
        driver.add_stream_handler(STREAM_STORE, self._serve)

    # ------------------------------------------------------------------ counters

    def _count(self, name: str, amount: int = 1) -> None:
        self.driver.counters.add(f"store.{name}", amount)

    # ------------------------------------------------------------------ start

    def load(self) -> int:
        """Rebuild the replica from SQLite; returns how many entries were loaded."""
        entries, clock = self.persist.load_store()
        self.store.load(entries, clock)
        self.tracker.loaded(entries)
        self.rules.loaded(len(entries))
        return len(entries)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._anti_entropy_loop)
            nursery.start_soon(self._gc_loop)
            nursery.start_soon(self._reclaim_loop)
            task_status.started()

    # ------------------------------------------------------------------ indexes and waiting

    @property
    def node_name(self) -> str:
        return self.store.node_id

    def entry_indexes(self, kind: str, key: str) -> tuple[int, int]:
        """(CreateIndex, ModifyIndex) of a live key, Consul style."""
        return self.tracker.entry_indexes(kind, key)

    def _note(self, entries: Iterable[Entry]) -> None:
        self.tracker.note(entries)

    async def wait_for_change(self, kind: str, index: int, timeout_s: float) -> int:
        """Block until `kind` changed after `index` or the timeout passes; its index then."""
        return await self.tracker.wait(kind, index, timeout_s)

    # ------------------------------------------------------------------ local writes

    def put(self, kind: str, key: str, value: bytes) -> Entry:
        """A local write, durable on return; raises `LocalProtocolError` on bad input."""
        return self.write_many([Write.put(kind, key, value)])[0]

    def delete(self, kind: str, key: str) -> Entry:
        return self.delete_many(kind, [key])[0]

    def delete_many(self, kind: str, keys: Iterable[str]) -> list[Entry]:
        """Tombstones for `keys`, durable on return (one transaction)."""
        return self.write_many([Write.delete(kind, key) for key in keys])

    def write_many(self, writes: Iterable[Write]) -> list[Entry]:
        """Puts and deletes in order, durable on return in ONE transaction (store/batch.py).

        A refused write raises its `LocalProtocolError` after the writes
        before it were committed and sent.
        """
        entries, refused = apply_writes(self.store, writes, self._wall_clock())
        if entries:
            if self._shared.defer(entries):
                self._note(entries)  # persisted and sent at the end of one_commit()
            else:
                self._commit(entries, note=True)
        if refused is not None:
            raise refused
        return entries

    def one_commit(self) -> AbstractContextManager[None]:
        """The writes of a synchronous block share one commit (store/batch.py `SharedCommit`)."""
        return self._shared.one_commit()

    def _commit(self, entries: list[Entry], *, note: bool = False) -> None:
        """Persist applied local entries, then (noting them first if asked) send them."""
        self.persist.save_store(entries, [], self.store.clock)
        if note:
            self._note(entries)
        self._written(entries)

    def _written(self, entries: list[Entry]) -> None:
        """Send what the core asks for after a durable local write: broadcasts, pushes."""
        for b in self.rules.local_writes(entries):
            self._queue(b.payload, b.key)
        pushed = self.rules.push_entries(entries)
        if not pushed:
            return
        targets = self.rules.push_targets(pushed, self._others(), _alive)
        for m in targets:
            if self._nursery is None:
                self.rules.push_done(ok=False)
            else:
                self._nursery.start_soon(self._push, m.addr, pushed)

    async def _push(self, addr: Addr, entries: list[Entry]) -> None:
        """Send entries on a store stream; the peer merges, relays, and acknowledges."""

        async def talk(stream: trio.abc.Stream) -> None:
            steps = _Steps(stream, self.wire)
            await steps.send(store_codec.encode_entries(entries), prefix=bytes([STREAM_STORE]))
            if await steps.read():
                raise StoreMessageError("a push is acknowledged by an empty step")

        ok = False
        try:
            ok = await self._talk("push", addr, self.config.push_timeout_s, talk)
        finally:
            self.rules.push_done(ok=ok)

    async def _talk(
        self,
        what: str,
        addr: Addr,
        timeout_s: float,
        talk: Callable[[trio.abc.Stream], Awaitable[None]],
    ) -> bool:
        """Run `talk` on a stream to `addr`; False (logged) on a network or a peer's error."""
        try:
            with trio.fail_after(timeout_s):
                stream = await self.transport.connect_stream(addr)
                async with stream:
                    await talk(stream)
            return True
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log(_log, "debug", f"store {what} failed", peer=str(addr), reason=str(exc))
        except RemoteProtocolError as exc:
            self._count("rejected")
            log(_log, "warning", f"store {what} rejected", peer=str(addr), reason=str(exc))
        return False

    def _queue(self, payload: bytes, key: tuple[str, str, str]) -> None:
        self.driver.apply(lambda now: self.core.broadcast_user(payload, key=key))

    # ------------------------------------------------------------------ remote entries

    def merge(self, entries: Iterable[Entry], source: Addr | None = None) -> int:
        """Merge entries from an anti-entropy round (not relayed); how many keys changed."""
        outcome = self.rules.receive_entries(entries, relay=False)
        self._apply(outcome, source)
        return len(outcome.changed) + len(outcome.gone)

    def _apply(self, outcome: Outcome, source: Addr | None) -> None:
        """Persist what changed, then send what the core asks for."""
        for reason in outcome.rejected:
            log(_log, "debug", "dropped a store entry", source=str(source), reason=reason)
        if outcome.changed or outcome.gone:
            self.persist.save_store(outcome.changed, outcome.gone, self.store.clock)
            self._note(outcome.changed)
        for b in outcome.broadcasts:
            self._queue(b.payload, b.key)
        for fetch in outcome.fetches:
            if self._nursery is None:
                self.rules.fetch_done(fetch)
            else:
                self._nursery.start_soon(self._fetch, fetch)

    def on_user(self, payload: bytes, source: Addr) -> bool:
        """Handle a gossip User payload if it is on a store channel; True when it was."""
        outcome = self.rules.receive_user(payload)
        if outcome is None:
            return False
        self._apply(outcome, source)
        return True

    async def _fetch(self, fetch: Fetch) -> None:
        async def talk(stream: trio.abc.Stream) -> None:
            steps = _Steps(stream, self.wire)
            want = store_codec.encode_want([(fetch.kind, fetch.key)])
            await steps.send(want, prefix=bytes([STREAM_STORE]))
            reply = await steps.read()
            entries = [e for m in reply if isinstance(m, store_codec.Entries) for e in m.entries]
            self._apply(self.rules.receive_entries(entries, relay=True), fetch.origin)

        try:
            ok = await self._talk("fetch", fetch.origin, self.config.exchange_timeout_s, talk)
            self._count("fetch.ok" if ok else "fetch.failed")
        finally:
            self.rules.fetch_done(fetch)

    def _others(self) -> list[Member]:
        me = self.core.name
        return [m for m in self.core.members() if m.name != me]

    def _pick(self, k: int) -> list[Addr]:
        """Up to `k` random alive members (the core's choice)."""
        return [m.addr for m in self.rules.pick_peers(self._others(), _alive, k)]

    async def _anti_entropy_loop(self) -> None:
        while True:
            await trio.sleep(self.rules.anti_entropy_delay_s())
            for addr in self._pick(1):
                self.start_anti_entropy(addr)

    def reconcile_after_join(self) -> None:
        """The joiner pulls what it missed itself (the core says with whom)."""
        for m in self.rules.after_join(self._others(), _alive):
            self.start_anti_entropy(m.addr)

    def on_member_event(self, event: Event) -> None:
        """Membership changes the core's rules care about (a member's return starts a round)."""
        match event:
            case MemberJoined(member=m) if m.name != self.core.name:
                if self.rules.member_joined(m.name):
                    self.start_anti_entropy(m.addr)
            case MemberFailed(member=m) | MemberLeft(member=m):
                self.rules.member_departed(m.name)
            case MemberReaped(name=name):
                self.rules.member_reaped(name)
            case _:
                pass

    def start_anti_entropy(self, addr: Addr) -> None:
        """Start a round with `addr` in the background, unless too many are running."""
        if self._nursery is None or not self.rules.begin_exchange():
            return
        self._nursery.start_soon(self._anti_entropy, addr)

    async def _anti_entropy(self, addr: Addr) -> None:
        """One full round with `addr` as the initiator (a slot was taken by `begin_exchange`)."""

        async def talk(stream: trio.abc.Stream) -> None:
            self.merge(await self._initiate(stream), addr)

        ok = False
        try:
            ok = await self._talk("anti-entropy", addr, self.config.exchange_timeout_s, talk)
        finally:
            queued = self.rules.end_exchange(ok=ok)
            if queued is not None:
                self.start_anti_entropy(queued.addr)

    async def _initiate(self, stream: trio.abc.Stream) -> list[Entry]:
        steps = _Steps(stream, self.wire)
        session = Initiator(self.store)
        await steps.send(session.opening(), prefix=bytes([STREAM_STORE]))
        await steps.send(session.on_bucket_versions(await steps.read()))
        if not session.expects_entries:
            return []
        return session.on_entries(await steps.read())

    async def _serve(self, stream: trio.abc.Stream, peer: Addr, first: bytes) -> None:
        """Answer a store stream: a digest round, a fetch (Want) or a push (Entries)."""
        try:
            with trio.fail_after(self.config.exchange_timeout_s):
                steps = _Steps(stream, self.wire, first[1:])
                opening = await steps.read()
                if len(opening) == 1 and isinstance(opening[0], Digest):
                    await self._answer_round(steps, opening[0], peer)
                elif opening and all(isinstance(m, store_codec.Want) for m in opening):
                    keys = [k for m in opening if isinstance(m, store_codec.Want) for k in m.keys]
                    await steps.send(store_codec.encode_entries(self.store.entries_for(keys)))
                elif opening and all(isinstance(m, store_codec.Entries) for m in opening):
                    pushed = [
                        e for m in opening if isinstance(m, store_codec.Entries) for e in m.entries
                    ]
                    self._apply(self.rules.receive_entries(pushed, relay=True), peer)
                    self._count("push.received")
                    await steps.send([])
                else:
                    raise StoreMessageError(
                        "a store stream starts with a Digest, a Want or Entries"
                    )
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self._count("serve.failed")
            log(_log, "debug", "serving a store stream failed", peer=str(peer), reason=str(exc))
        except RemoteProtocolError as exc:
            self._count("rejected")
            log(_log, "warning", "rejected a store stream", peer=str(peer), reason=str(exc))

    async def _answer_round(self, steps: _Steps, digest: Digest, peer: Addr) -> None:
        session = Responder(self.store)
        await steps.send(session.on_digest([digest]))
        self.merge(session.on_push(await steps.read()), peer)
        answer = session.answer()
        if answer is not None:
            await steps.send(answer)

    # ------------------------------------------------------------------ tombstones

    async def _gc_loop(self) -> None:
        while True:
            await trio.sleep(self.config.tombstone_gc_interval_s)
            self.collect_tombstones()

    async def _reclaim_loop(self) -> None:
        """Hand freed pages back to the file system, a bounded slice per tick."""
        while True:
            await trio.sleep(self.config.reclaim_interval_s)
            self.persist.reclaim()

    def collect_tombstones(self) -> int:
        collected = self.store.collect_tombstones(self._wall_clock())
        if collected:
            self.persist.save_store([], collected, self.store.clock)
            self.tracker.forget(collected)
            self._count("tombstones_collected", len(collected))
        return len(collected)


def _alive(m: Member) -> bool:
    return m.state == State.ALIVE
