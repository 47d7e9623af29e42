"""Glue between the sans-IO replicated store (gossip/store.py), SQLite and gossip, in trio.

What lives here:

- Local writes (`put`, `delete`, `delete_many`): `Store` first, then SQLite in
  one transaction with the Lamport clock (durable when this returns, so the API
  may acknowledge), then a gossip broadcast keyed by (kind, key) so that a newer
  write to the same key replaces the older one still queued.
- Broadcast payloads are gossip `User` messages whose first byte is a channel:
  `CHANNEL_STORE_ENTRY` + one encoded entry when it fits a packet, else
  `CHANNEL_STORE_NOTICE` + a small CBOR notice ``[kind, key, lamport, node,
  origin host, origin port]``; a receiver that lacks that version fetches the
  entry from the origin over TCP (anti-entropy catches it otherwise).
- Received entries are merged and, when they change the replica, persisted
  (`get(..., tombstones=True)`; None deletes the row) with the clock.
  Malformed payloads are dropped and counted (`store.rejected`), never fatal.
- Anti-entropy over TCP on the gossip port (stream type byte `STREAM_STORE`):
  the round described in gossip/store.py, each step being a count frame
  (uint32) then that many store messages. Run with one random alive member
  every `anti_entropy_interval_s`, with every member that joins, and after a
  restart (the rejoin produces joins).
- Tombstone GC on a timer; indexes, listeners and blocking waits live in the
  `ChangeTracker` (meshnode/state.py), so the Replicator is a `ReplicatedState`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cbor2
import trio

from ..gossip import store_codec
from ..gossip.anti_entropy import (
    STEP_BYTES_MAX,
    Initiator,
    Responder,
    StepReader,
    UnexpectedStoreMessage,
    encode_step,
)
from ..gossip.driver import GossipDriver
from ..gossip.errors import RemoteProtocolError
from ..gossip.membership import Membership
from ..gossip.messages import Addr, State
from ..gossip.store import Digest, Entry, Store, Version
from ..gossip.transport import Transport
from ..gossip.wire import Wire
from ..logs import log
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

# First byte of a gossip User payload (keyring_ops uses 0x01 and 0x02).
CHANNEL_STORE_ENTRY = 0x03
CHANNEL_STORE_NOTICE = 0x04
# First byte of a TCP stream on the gossip port that carries store anti-entropy.
STREAM_STORE = 0xA5

_READ_CHUNK_BYTES = 65536
_NOTICE_MAX_BYTES = 2048


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    # Broadcasts reach everyone in O(log N) rounds but are best effort (transmit
    # limit, loss, a paused process); this round is what bounds how long a
    # missed write stays missing. 10 s costs one small TCP exchange per node per
    # 10 s (a 2 KiB digest when replicas agree), like memberlist's push/pull
    # at small cluster sizes.
    anti_entropy_interval_s: float = 10.0
    # A stalled or SIGSTOPped peer must not hold an exchange (and its memory) forever.
    exchange_timeout_s: float = 30.0
    # Tombstones live for hours (StoreLimits.tombstone_max_age_s); checking
    # every 10 minutes collects them close enough to their age.
    tombstone_gc_interval_s: float = 600.0
    # After a big delete the database file is shrunk a slice at a time
    # (Persistence.reclaim), one slice per this interval, between requests.
    reclaim_interval_s: float = 0.5
    # A User payload larger than this goes as a notice + TCP fetch: a gossip
    # packet is 1,400 bytes and must also carry the User/compound headers,
    # the encryption envelope and piggybacked membership updates.
    broadcast_max_bytes: int = 1000
    # Exchanges started by join storms beyond this many at once are skipped
    # (the periodic round catches up), so a 100-node join is not 100 streams.
    concurrent_exchanges_max: int = 4


# One error for every malformed store payload, gossiped or streamed.
StoreMessageError = UnexpectedStoreMessage


def _decode_notice(payload: bytes) -> tuple[str, str, Version, Addr]:
    if len(payload) > _NOTICE_MAX_BYTES:
        raise StoreMessageError(f"store notice of {len(payload)} bytes is too large")
    try:
        value = cbor2.loads(payload)
    except Exception as exc:
        raise StoreMessageError(f"store notice is not CBOR: {exc}") from None
    if (
        not isinstance(value, list)
        or len(value) != 6
        or not all(isinstance(value[i], str) for i in (0, 1, 3, 4))
        or not all(type(value[i]) is int for i in (2, 5))
        or not 0 < value[2] < 2**64
        or not 0 < value[5] < 65536
        or not value[0]
        or not value[3]
    ):
        raise StoreMessageError("store notice is not [kind, key, lamport, node, host, port]")
    kind, key, lamport, node, host, port = value
    return kind, key, Version(lamport, node), Addr(host, port)


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
        config: ReplicationConfig = ReplicationConfig(),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.persist = persist
        self.core = core
        self.driver = driver
        self.wire = wire
        self.transport = transport
        self.config = config
        self._rng = rng
        self._wall_clock = wall_clock
        self._nursery: trio.Nursery | None = None
        self.tracker = ChangeTracker(store)
        self._fetching: set[tuple[str, str]] = set()
        self._exchanges = trio.CapacityLimiter(config.concurrent_exchanges_max)
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
        entry = self.store.put(kind, key, value)
        self.persist.save_store([entry], [], self.store.clock)
        self._note([entry])
        self._broadcast(entry)
        return entry

    def delete(self, kind: str, key: str) -> Entry:
        return self.delete_many(kind, [key])[0]

    def delete_many(self, kind: str, keys: Iterable[str]) -> list[Entry]:
        """Tombstones for `keys`, durable on return (one transaction)."""
        now_wall = self._wall_clock()
        entries = [self.store.delete(kind, key, now_wall) for key in keys]
        if entries:
            self.persist.save_store(entries, [], self.store.clock)
            self._note(entries)
            for entry in entries:
                self._broadcast(entry)
        return entries

    def _broadcast(self, entry: Entry) -> None:
        payload = bytes([CHANNEL_STORE_ENTRY]) + store_codec.encode_entry(entry)
        if len(payload) > self.config.broadcast_max_bytes:
            me = self.transport.local_addr
            v = entry.version
            notice = [entry.kind, entry.key, v.lamport, v.node, me.host, me.port]
            payload = bytes([CHANNEL_STORE_NOTICE]) + cbor2.dumps(notice)
            if len(payload) > self.config.broadcast_max_bytes:
                # A key near its 512-byte limit: anti-entropy will carry it.
                self._count("broadcast.skipped")
                return
            self._count("broadcast.notice")
        else:
            self._count("broadcast.entry")
        key = ("store", entry.kind, entry.key)
        self.driver.apply(lambda now: self.core.broadcast_user(payload, key=key))

    # ------------------------------------------------------------------ remote entries

    def merge(self, entries: Iterable[Entry], source: Addr | None = None) -> int:
        """Merge received entries, persist those that changed the replica; how many did."""
        changed: dict[tuple[str, str], None] = {}
        for entry in entries:
            try:
                if self.store.merge(entry):
                    changed[(entry.kind, entry.key)] = None
            except RemoteProtocolError as exc:
                self._count("rejected")
                log(_log, "debug", "dropped a store entry", source=str(source), reason=str(exc))
        if not changed:
            return 0
        upserts, deletes, applied = [], [], []
        for kind, key in changed:
            current = self.store.get(kind, key, tombstones=True)
            if current is None:
                deletes.append((kind, key))
            else:
                upserts.append(current)
                applied.append(current)
        self.persist.save_store(upserts, deletes, self.store.clock)
        self._note(applied)
        self._count("merged", len(changed))
        return len(changed)

    def on_user(self, payload: bytes, source: Addr) -> bool:
        """Handle a gossip User payload if it is on a store channel; True when it was."""
        if not payload or payload[0] not in (CHANNEL_STORE_ENTRY, CHANNEL_STORE_NOTICE):
            return False
        try:
            if payload[0] == CHANNEL_STORE_ENTRY:
                self._merge_and_relay([store_codec.decode_entry(payload[1:])], source)
            else:
                self._on_notice(*_decode_notice(payload[1:]))
        except RemoteProtocolError as exc:
            self._count("rejected")
            log(
                _log,
                "warning",
                "dropped malformed store message",
                source=str(source),
                reason=str(exc),
            )
        return True

    def _merge_and_relay(self, entries: list[Entry], source: Addr) -> None:
        """Merge broadcast entries and gossip on those that were news to us.

        The writer alone reaches at most `retransmit limit x gossip fan-out`
        members (about 18 of 30), so like serf's user events every member
        relays a change the first time it applies it; a duplicate changes
        nothing and is not relayed, which bounds the epidemic. Anti-entropy
        merges are not relayed: both sides of an exchange are already in step.
        """
        if not self.merge(entries, source):
            return
        for entry in entries:
            current = self.store.get(entry.kind, entry.key, tombstones=True)
            if current is not None and current.version == entry.version:
                self._count("relayed")
                self._broadcast(current)

    def _on_notice(self, kind: str, key: str, version: Version, origin: Addr) -> None:
        have = self.store.get(kind, key, tombstones=True)
        if have is not None and have.version >= version:
            return
        if origin == self.transport.local_addr or (kind, key) in self._fetching:
            return
        if self._nursery is not None:
            self._fetching.add((kind, key))
            self._nursery.start_soon(self._fetch, origin, kind, key)

    async def _fetch(self, addr: Addr, kind: str, key: str) -> None:
        try:
            with trio.fail_after(self.config.exchange_timeout_s):
                stream = await self.transport.connect_stream(addr)
                async with stream:
                    steps = _Steps(stream, self.wire)
                    await steps.send(
                        store_codec.encode_want([(kind, key)]), prefix=bytes([STREAM_STORE])
                    )
                    reply = await steps.read()
            entries = [e for m in reply if isinstance(m, store_codec.Entries) for e in m.entries]
            self._merge_and_relay(entries, addr)
            self._count("fetch.ok")
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self._count("fetch.failed")
            log(_log, "debug", "store fetch failed", peer=str(addr), reason=str(exc))
        except RemoteProtocolError as exc:
            self._count("fetch.failed")
            self._count("rejected")
            log(_log, "warning", "store fetch rejected", peer=str(addr), reason=str(exc))
        finally:
            self._fetching.discard((kind, key))

    # ------------------------------------------------------------------ anti-entropy

    def _peers(self) -> list[Addr]:
        me = self.core.name
        return [m.addr for m in self.core.members() if m.state == State.ALIVE and m.name != me]

    async def _anti_entropy_loop(self) -> None:
        while True:
            # Jitter, so that agents started together do not exchange in lockstep.
            interval_s = self.config.anti_entropy_interval_s
            await trio.sleep(interval_s * (0.5 + self._rng.random()))
            peers = self._peers()
            if peers:
                self.start_anti_entropy(self._rng.choice(peers))

    def start_anti_entropy(self, addr: Addr) -> None:
        """Start a round with `addr` in the background, unless too many are running."""
        if self._nursery is None:
            return
        if self._exchanges.available_tokens == 0:
            self._count("anti_entropy.skipped")
            return
        self._nursery.start_soon(self.anti_entropy, addr)

    async def anti_entropy(self, addr: Addr) -> bool:
        """One full round with `addr` as the initiator; True when it completed."""
        async with self._exchanges:
            self._count("anti_entropy.started")
            try:
                with trio.fail_after(self.config.exchange_timeout_s):
                    stream = await self.transport.connect_stream(addr)
                    async with stream:
                        received = await self._initiate(stream)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                self._count("anti_entropy.failed")
                log(_log, "debug", "anti-entropy failed", peer=str(addr), reason=str(exc))
                return False
            except RemoteProtocolError as exc:
                self._count("anti_entropy.failed")
                self._count("rejected")
                log(_log, "warning", "anti-entropy rejected", peer=str(addr), reason=str(exc))
                return False
            self.merge(received, addr)
            self._count("anti_entropy.done")
            return True

    async def _initiate(self, stream: trio.abc.Stream) -> list[Entry]:
        steps = _Steps(stream, self.wire)
        session = Initiator(self.store)
        await steps.send(session.opening(), prefix=bytes([STREAM_STORE]))
        await steps.send(session.on_bucket_versions(await steps.read()))
        if not session.expects_entries:
            return []
        return session.on_entries(await steps.read())

    async def _serve(self, stream: trio.abc.Stream, peer: Addr, first: bytes) -> None:
        """Answer a store stream: a digest round or a fetch (Want)."""
        try:
            with trio.fail_after(self.config.exchange_timeout_s):
                steps = _Steps(stream, self.wire, first[1:])
                opening = await steps.read()
                if len(opening) == 1 and isinstance(opening[0], Digest):
                    await self._answer_round(steps, opening[0], peer)
                elif opening and all(isinstance(m, store_codec.Want) for m in opening):
                    keys = [k for m in opening if isinstance(m, store_codec.Want) for k in m.keys]
                    await steps.send(store_codec.encode_entries(self.store.entries_for(keys)))
                else:
                    raise StoreMessageError("a store stream starts with a Digest or a Want")
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
