"""The replication rules of the replicated store, sans-IO: one core for the agent and the simulator.

Rules that live here (and nowhere else):

- **Broadcast.** A local write goes out as a gossip `User` payload whose first
  byte is a channel: `CHANNEL_STORE_ENTRY` + one encoded entry when it fits
  `broadcast_max_bytes`, else `CHANNEL_STORE_NOTICE` + a small CBOR notice
  ``[kind, key, lamport, node, origin host, origin port]``; a notice too big
  as well is skipped (anti-entropy carries it). The queue key is
  ``("store", kind, key)``, so a newer write replaces an older one still queued.
- **Receipt and relay.** A received entry is merged; the first time it changes
  the replica it is relayed by broadcast (serf's user events do the same: the
  writer alone reaches only ~18 of 30 members). A duplicate changes nothing
  and is not relayed, which bounds the epidemic. Anti-entropy merges are not
  relayed: both ends of a round are already in step.
- **Fetch.** A notice for a version we lack asks the origin for the entry over
  TCP, one fetch per key at a time.
- **Push.** A local write of a kind that matters for security (`push_kinds`:
  intentions, revocations, CA records) is also pushed over TCP to
  `push_peers` random alive members, which merge and relay it like a
  broadcast: a deny must not wait for anti-entropy when every gossip packet
  of it was lost. At most `pushes_concurrent_max` pushes run at once; past
  that, gossip and anti-entropy still carry the write.
- **Anti-entropy.** A round with one random alive member every
  `anti_entropy_interval_s` x U(0.5, 1.5); with a member that returns from
  failure or leave; after a join; at most `concurrent_exchanges_max` at once,
  more are skipped. After a *restart* (the first join of a core whose replica
  was loaded non-empty) the rounds are with `restart_exchange_peers` members
  at once, those past the bound queued rather than skipped: writes
  acknowledged just before a crash, whose broadcasts died with the process,
  reach the cluster at once instead of at everyone's next periodic round.

The core reads no clock and no global random: the caller injects the
`random.Random` and moves the bytes (meshnode/store/replication.py over trio and
SQLite, simulations/sim.py from its event heap).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import cbor2

from . import store_codec
from .anti_entropy import UnexpectedStoreMessage
from .errors import RemoteProtocolError
from .messages import Addr
from .store import Entry, Store, Version

__all__ = [
    "CHANNEL_STORE_ENTRY",
    "CHANNEL_STORE_NOTICE",
    "PUSH_KINDS",
    "STREAM_STORE",
    "Broadcast",
    "Fetch",
    "Outcome",
    "Replication",
    "ReplicationConfig",
    "StoreMessageError",
]

# First byte of a gossip User payload (keyring_ops uses 0x01 and 0x02, user events 0x05).
CHANNEL_STORE_ENTRY = 0x03
CHANNEL_STORE_NOTICE = 0x04
# First byte of a TCP stream on the gossip port that carries store traffic.
STREAM_STORE = 0xA5
# Kinds whose local writes are pushed over TCP as well as gossiped: an
# intention (a deny), a certificate revocation, a CA record (roots, signers).
PUSH_KINDS = frozenset({"intention", "revocation", "ca"})
_NOTICE_MAX_BYTES = 2048
# Rejection sampling of a random alive peer: draws before the exact (O(N)) pick.
_PEER_TRIES = 16

# One error for every malformed store payload, gossiped or streamed.
StoreMessageError = UnexpectedStoreMessage
P = TypeVar("P")


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
    # After a big delete the agent shrinks its database file a slice at a time
    # (Persistence.reclaim), one slice per this interval, between requests.
    reclaim_interval_s: float = 0.5
    # A User payload larger than this goes as a notice + TCP fetch: a gossip
    # packet is 1,400 bytes and must also carry the User/compound headers,
    # the encryption envelope and piggybacked membership updates.
    broadcast_max_bytes: int = 1000
    # Exchanges started by join storms beyond this many at once are skipped
    # (the periodic round catches up), so a 100-node join is not 100 streams.
    concurrent_exchanges_max: int = 4
    # Local writes of these kinds are also pushed over TCP (see the banner).
    push_kinds: frozenset[str] = PUSH_KINDS
    # TCP pushes besides the writer's gossip. A push does not add gossip
    # transmissions (every holder relays a write a fixed number of times
    # whoever started it), so with three pushes a host still missed every
    # packet of about 1 deny in 20 at 10 % loss on 7 nodes (memory network,
    # 150 denies: 7 over 2 s, worst 25 s; none with six). Six covers a
    # cluster of seven; in a larger one the other hosts rely on the relays.
    push_peers: int = 6
    # A burst of security writes (an intention import) must not open hundreds
    # of streams; past this bound the broadcast and anti-entropy carry them.
    pushes_concurrent_max: int = 24
    # A push slower than this is slower than the relays it is meant to beat,
    # and a stopped peer must not hold its slot for the exchange timeout.
    push_timeout_s: float = 5.0
    # After a restart, reconcile with this many members at once: a 7-host
    # cluster (the chaos tests') in one step; in a larger one, each member
    # updated by the restarted one then serves the writes in its own rounds.
    restart_exchange_peers: int = 6


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A gossip User payload to queue, keyed so that a newer write replaces it."""

    payload: bytes
    key: tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask `origin` for (kind, key) over TCP (a `Want`), then `receive_entries(..., relay=True)`."""

    origin: Addr
    kind: str
    key: str


@dataclass(slots=True)
class Outcome:
    """What receiving entries asks of the driver, in this order.

    Persist `changed` (the entries as they now are) and delete the rows of
    `gone`, then queue `broadcasts` and start `fetches`; log `rejected`.
    """

    changed: list[Entry] = field(default_factory=list)
    gone: list[tuple[str, str]] = field(default_factory=list)
    broadcasts: list[Broadcast] = field(default_factory=list)
    fetches: list[Fetch] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _ignore(name: str, amount: int) -> None:
    """The default counter sink."""


def decode_notice(payload: bytes) -> tuple[str, str, Version, Addr]:
    """A notice's (kind, key, version, origin); `StoreMessageError` when malformed."""
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


class Replication(Generic[P]):
    """One node's replication decisions around its `Store`; the driver does the I/O.

    `count(name, amount)` receives counters (``broadcast.entry``, ``relayed``,
    ``merged``, ``rejected``, ``push.started``, ``anti_entropy.skipped``...).
    """

    def __init__(
        self,
        store: Store,
        *,
        rng: random.Random,
        local_addr: Addr,
        config: ReplicationConfig = ReplicationConfig(),
        count: Callable[[str, int], None] = _ignore,
    ) -> None:
        self.store = store
        self.config = config
        self.local_addr = local_addr
        self._rng = rng
        self._count = count
        self._fetching: set[tuple[str, str]] = set()
        self._departed: set[str] = set()
        self._restart_pending = False
        self._queued_exchanges: deque[P] = deque()
        self.pushes = 0  # pushes in flight
        self.exchanges = 0  # anti-entropy rounds we initiated, in flight

    # ------------------------------------------------------------------ broadcast

    def broadcast(self, entry: Entry) -> Broadcast | None:
        """The gossip payload for `entry`: the entry itself, a notice, or None (too big)."""
        payload = bytes((CHANNEL_STORE_ENTRY,)) + store_codec.encode_entry(entry)
        if len(payload) > self.config.broadcast_max_bytes:
            v, me = entry.version, self.local_addr
            notice = [entry.kind, entry.key, v.lamport, v.node, me.host, me.port]
            payload = bytes((CHANNEL_STORE_NOTICE,)) + cbor2.dumps(notice)
            if len(payload) > self.config.broadcast_max_bytes:
                # A key near its 512-byte limit: anti-entropy will carry it.
                self._count("broadcast.skipped", 1)
                return None
            self._count("broadcast.notice", 1)
        else:
            self._count("broadcast.entry", 1)
        return Broadcast(payload, ("store", entry.kind, entry.key))

    def local_writes(self, entries: Iterable[Entry]) -> list[Broadcast]:
        """Broadcasts for entries just written locally (and persisted by the caller)."""
        return [b for e in entries if (b := self.broadcast(e)) is not None]

    # ------------------------------------------------------------------ receipt

    def receive_user(self, payload: bytes) -> Outcome | None:
        """A gossip User payload: None when it is not on a store channel."""
        if not payload or payload[0] not in (CHANNEL_STORE_ENTRY, CHANNEL_STORE_NOTICE):
            return None
        try:
            if payload[0] == CHANNEL_STORE_ENTRY:
                return self.receive_entries([store_codec.decode_entry(payload[1:])], relay=True)
            return self._on_notice(*decode_notice(payload[1:]))
        except RemoteProtocolError as exc:
            self._count("rejected", 1)
            return Outcome(rejected=[str(exc)])

    def receive_entries(self, entries: Iterable[Entry], *, relay: bool) -> Outcome:
        """Merge entries; with `relay`, broadcast those that were news (gossip, push, fetch)."""
        out = Outcome()
        received: list[Entry] = []
        changed: dict[tuple[str, str], None] = {}
        for entry in entries:
            try:
                if self.store.merge(entry):
                    changed[(entry.kind, entry.key)] = None
                    received.append(entry)
            except RemoteProtocolError as exc:
                self._count("rejected", 1)
                out.rejected.append(str(exc))
        for kind, key in changed:
            current = self.store.get(kind, key, tombstones=True)
            if current is None:
                out.gone.append((kind, key))
            else:
                out.changed.append(current)
        if changed:
            self._count("merged", len(changed))
        if relay:
            for entry in received:
                current = self.store.get(entry.kind, entry.key, tombstones=True)
                if current is not None and current.version == entry.version:
                    self._count("relayed", 1)
                    b = self.broadcast(current)
                    if b is not None:
                        out.broadcasts.append(b)
        return out

    def _on_notice(self, kind: str, key: str, version: Version, origin: Addr) -> Outcome:
        have = self.store.get(kind, key, tombstones=True)
        if have is not None and have.version >= version:
            return Outcome()
        if origin == self.local_addr or (kind, key) in self._fetching:
            return Outcome()
        self._fetching.add((kind, key))
        return Outcome(fetches=[Fetch(origin, kind, key)])

    def fetch_done(self, fetch: Fetch) -> None:
        """The fetch ended (either way): a later notice for the key may start another."""
        self._fetching.discard((fetch.kind, fetch.key))

    # ------------------------------------------------------------------ peers

    def pick_peers(self, candidates: Sequence[P], alive: Callable[[P], bool], k: int) -> list[P]:
        """Up to `k` distinct random members of `candidates` for which `alive` holds.

        Rejection sampling first (O(1) per draw, what a 10,000-node simulation
        needs), then an exact pick among the rest when the draws came up short.
        """
        n = len(candidates)
        chosen: dict[int, None] = {}
        for _ in range(_PEER_TRIES * k):
            if len(chosen) >= k or n == 0:
                break
            i = self._rng.randrange(n)
            if i not in chosen and alive(candidates[i]):
                chosen[i] = None
        if len(chosen) < k:
            rest = [i for i in range(n) if i not in chosen and alive(candidates[i])]
            for i in self._rng.sample(rest, min(k - len(chosen), len(rest))):
                chosen[i] = None
        return [candidates[i] for i in chosen]

    # ------------------------------------------------------------------ push

    def push_entries(self, entries: Iterable[Entry]) -> list[Entry]:
        """The entries of a local write that are also pushed over TCP (`push_kinds`)."""
        return [e for e in entries if e.kind in self.config.push_kinds]

    def push_targets(
        self, entries: Sequence[Entry], candidates: Sequence[P], alive: Callable[[P], bool]
    ) -> list[P]:
        """Peers to push `entries` to now; call `push_done` once for each when its push ends."""
        if not entries:
            return []
        free = max(0, self.config.pushes_concurrent_max - self.pushes)
        targets = self.pick_peers(candidates, alive, min(self.config.push_peers, free))
        if free < self.config.push_peers:
            self._count("push.skipped", self.config.push_peers - free)
        self.pushes += len(targets)
        self._count("push.started", len(targets))
        return targets

    def push_done(self, *, ok: bool) -> None:
        self.pushes = max(0, self.pushes - 1)
        self._count("push.ok" if ok else "push.failed", 1)

    # ------------------------------------------------------------------ anti-entropy

    def loaded(self, entries: int) -> None:
        """The replica was loaded from disk with `entries` entries: non-empty means a restart."""
        self._restart_pending = entries > 0

    def anti_entropy_delay_s(self) -> float:
        """Until the next periodic round; jittered so that agents started together drift apart."""
        return self.config.anti_entropy_interval_s * (0.5 + self._rng.random())

    def begin_exchange(self) -> bool:
        """May a round start now? False (and counted) when `concurrent_exchanges_max` run."""
        if self.exchanges >= self.config.concurrent_exchanges_max:
            self._count("anti_entropy.skipped", 1)
            return False
        self.exchanges += 1
        self._count("anti_entropy.started", 1)
        return True

    def end_exchange(self, *, ok: bool) -> P | None:
        """A round ended; returns a queued peer (restart reconcile) to start now, if any."""
        self.exchanges = max(0, self.exchanges - 1)
        self._count("anti_entropy.done" if ok else "anti_entropy.failed", 1)
        if self._queued_exchanges:
            return self._queued_exchanges.popleft()
        return None

    def after_join(self, candidates: Sequence[P], alive: Callable[[P], bool]) -> list[P]:
        """Peers to start a round with now that we are in: one, or a few after a restart.

        Restart peers past the concurrency bound are queued for `end_exchange`.
        """
        if not self._restart_pending:
            return self.pick_peers(candidates, alive, 1)
        self._restart_pending = False
        peers = self.pick_peers(candidates, alive, self.config.restart_exchange_peers)
        self._count("anti_entropy.restart", len(peers))
        free = max(0, self.config.concurrent_exchanges_max - self.exchanges)
        self._queued_exchanges.extend(peers[free:])
        return peers[:free]

    def member_joined(self, name: str) -> bool:
        """Start a round with a member that returns from failure or leave?

        It may hold writes we lack and lack ours. A newcomer reconciles by
        itself after its own join (N^2 rounds in a join storm otherwise).
        """
        if name in self._departed:
            self._departed.discard(name)
            return True
        return False

    def member_departed(self, name: str) -> None:
        """A member failed or left (a later join is a return)."""
        self._departed.add(name)

    def member_reaped(self, name: str) -> None:
        """A member was forgotten: a later join is a newcomer's (the set stays bounded)."""
        self._departed.discard(name)
