"""The discrete-event simulator: many real `Membership` cores, one heap, virtual time.

Rules that live here:
- one heap of `(time_s, seq, kind, payload)`; `seq` breaks ties in insertion
  order, so two runs with one seed pop the same events in the same order;
- one master seed derives every `random.Random`: each node's core, each
  node's nonce source, the network's, and the restarts';
- a node is woken only at its core's `get_timer()`: one pending wakeup per
  node, and a generation counter voids stale ones (never a global tick);
- bytes between nodes are the real encoded packets and push/pull frames,
  sealed by the real `Wire` (AES-256-GCM with `encrypt=True`);
- every delivered or dropped packet and every core event is folded into a
  sha256 trace, which is the run's fingerprint;
- every node holds a real replicated `Store` and the agent's replication core
  (gossip/replication.py's `Replication`): the core decides what a write
  broadcasts, what a received payload merges and relays, and when and with
  whom anti-entropy runs; this module only moves its bytes and keeps its
  timers. Other user payloads are re-broadcast the first time they are
  seen, as serf's user events are;
- an anti-entropy round (gossip/anti_entropy.py) is four stream halves
  through the network, each a real sealed step of messages; a push of a
  security write is one stream half, a step of `Entries`.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import random
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

from meshnode.gossip import codec, store_codec
from meshnode.gossip.anti_entropy import Initiator, Responder, StepReader, encode_step
from meshnode.gossip.config import GossipConfig
from meshnode.gossip.errors import RemoteProtocolError
from meshnode.gossip.events import (
    Event,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberUpdated,
    UserMessage,
)
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Addr, NodeState, State
from meshnode.gossip.replication import (
    CHANNEL_STORE_ENTRY,
    CHANNEL_STORE_NOTICE,
    Broadcast,
    Outcome,
    Replication,
    ReplicationConfig,
)
from meshnode.gossip.store import Entry, Store
from meshnode.gossip.wire import FrameReader, Wire
from simulations.network import Network, NetworkConfig, Partition

_WAKE = 0
_PACKET = 1
_PP_REQUEST = 2
_PP_RESPONSE = 3
_ACTION = 4
_AE_STEP = 5
_STORE_PUSH = 6

# Trace record kinds.
_T_DELIVER = 1
_T_DROP = 2
_T_REJECT = 3
_T_EVENT = 4
_T_PP = 5
_T_STORE = 6
_T_AE = 7
_T_PUSH = 8
_EVENT_CODES: dict[type, int] = {
    MemberJoined: 1,
    MemberUpdated: 2,
    MemberLeft: 3,
    MemberFailed: 4,
    MemberReaped: 5,
    UserMessage: 6,
}
_INF = float("inf")
_SIM_KEY = bytes(range(32))
# A SIGSTOPped process's socket buffer holds about this many datagrams.
_PAUSE_BACKLOG_MAX = 2_000
_STORE_CHANNELS = (CHANNEL_STORE_ENTRY, CHANNEL_STORE_NOTICE)
_DEFAULTS = ReplicationConfig()
# The core's counters the simulator keeps, by the name of its `Counters` field.
_CORE_COUNTERS = {
    "relayed": "store_relayed",
    "push.started": "store_pushes",
    "rejected": "store_rejected",
    "anti_entropy.started": "anti_entropy_started",
    "anti_entropy.skipped": "anti_entropy_skipped",
    "anti_entropy.done": "anti_entropy_done",
    "anti_entropy.failed": "anti_entropy_failed",
}


@dataclass(slots=True)
class SimNode:
    """One simulated host: its core (None while down) and what the simulator tracks about it."""

    index: int
    name: str
    addr: Addr
    core: Membership | None = None
    wire: Wire | None = None
    life: int = 0  # bumped on every crash, so in-flight push/pulls of a past life are void
    gen: int = 0  # wakeup generation
    wake_at_s: float = _INF
    paused: bool = False
    backlog: list[tuple[int, int, Any]] = field(default_factory=list)
    # The node's view, kept from its events (members() is O(N) per call).
    known: int = 0  # members other than itself ever joined and not reaped
    down: dict[str, State] = field(default_factory=dict)
    user_seen: dict[bytes, float] = field(default_factory=dict)
    full_view_at_s: float | None = None
    # The replica survives crashes: the agent persists it in SQLite.
    store: Store | None = None
    # The replication core of this life; its randomness (anti-entropy jitter
    # and peers) is the application's own, from the node's seed.
    rules: Replication[int] | None = None

    def queued_datagrams(self) -> int:
        """Datagrams waiting in a paused node's socket buffer (stream data queues apart)."""
        return sum(1 for kind, _, _ in self.backlog if kind == _PACKET)

    @property
    def up_count(self) -> int:
        """Members this node believes alive or suspect, itself included."""
        return 1 + self.known - len(self.down)


@dataclass(slots=True)
class Counters:
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_delivered: int = 0
    packets_dropped: int = 0
    packets_rejected: int = 0
    push_pulls_started: int = 0
    push_pulls_failed: int = 0
    push_pull_bytes: int = 0
    events: int = 0
    heap_pops: int = 0
    store_merged: int = 0
    store_relayed: int = 0
    store_rejected: int = 0
    anti_entropy_started: int = 0
    anti_entropy_skipped: int = 0
    anti_entropy_failed: int = 0
    anti_entropy_done: int = 0
    anti_entropy_bytes: int = 0
    anti_entropy_steps: int = 0
    store_pushes: int = 0
    store_push_bytes: int = 0


@dataclass(slots=True)
class _Exchange:
    """One anti-entropy round in flight: both ends' sessions and the lives they began in."""

    initiator: int
    responder: int
    initiator_life: int
    started_s: float
    session: Initiator
    rules: Replication[int]  # the initiator's core, which counts the round in flight
    responder_life: int = -1
    answer: Responder | None = None
    step: int = 1  # the step travelling now (1 digest, 2 versions, 3 push, 4 wanted entries)
    ended: bool = False  # the initiator is done with it (a late step is still traced)


EventHook = Callable[["Simulator", SimNode, Event], None]
# Called when a node's replica changed: the node and its entry now.
StoreHook = Callable[["Simulator", SimNode, Entry], None]


class Simulator:
    def __init__(
        self,
        *,
        n_nodes: int,
        seed: int,
        network: NetworkConfig | None = None,
        gossip: GossipConfig | None = None,
        encrypt: bool = False,
        pause_drops: bool = False,
        push_pull_timeout_s: float = 10.0,
        join_retry_s: float = 2.0,
        anti_entropy_interval_s: float | None = _DEFAULTS.anti_entropy_interval_s,
        replication: ReplicationConfig = _DEFAULTS,
    ) -> None:
        self.seed = seed
        self.n_nodes = n_nodes
        self.gossip_config = gossip or GossipConfig()
        self.encrypt = encrypt
        self.pause_drops = pause_drops
        self.push_pull_timeout_s = push_pull_timeout_s
        # The agent's -retry-join interval, shortened: a join storm under loss
        # loses some join exchanges, and the agent retries them.
        self.join_retry_s = join_retry_s
        # None: no periodic rounds (the rounds after a join or a return still run).
        self.anti_entropy_interval_s = anti_entropy_interval_s
        self.replication_config = replication
        if anti_entropy_interval_s is not None:
            self.replication_config = replace(
                self.replication_config, anti_entropy_interval_s=anti_entropy_interval_s
            )
        master = random.Random(seed)
        self._node_seeds = [master.getrandbits(64) for _ in range(n_nodes)]
        self.net = Network(
            network or NetworkConfig(), random.Random(master.getrandbits(64)), n_nodes
        )
        self._restart_rng = random.Random(master.getrandbits(64))
        # Free for scenarios: picking victims, payloads, split points.
        self.rng = random.Random(master.getrandbits(64))
        self.nodes = [
            SimNode(i, f"n{i:05d}", Addr(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7946))
            for i in range(n_nodes)
        ]
        self._by_addr = {n.addr: n.index for n in self.nodes}
        self.index_of = {n.name: n.index for n in self.nodes}
        self.now_s = 0.0
        # Payloads differ by kind; the kind says which (a tagged union the loop unpacks).
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._trace = hashlib.sha256()
        self.counters = Counters()
        self.hooks: list[EventHook] = []
        self.store_hooks: list[StoreHook] = []
        self.stopped = False
        self.full_view_nodes = 0
        self.on_full_view: Callable[[], None] | None = None
        self._pack = struct.Struct("<BdIIII").pack

    # ------------------------------------------------------------------ scheduling

    def _push(self, time_s: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, kind, payload))

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        """Run `action` at virtual time `time_s` (scenario steps: crash, pause, split)."""
        self._push(max(time_s, self.now_s), _ACTION, action)

    def stop(self) -> None:
        self.stopped = True

    def run(self, until_s: float) -> None:
        """Pop events until `until_s` or `stop()`; the heap keeps what is left."""
        heap = self._heap
        nodes = self.nodes
        pop = heapq.heappop
        counters = self.counters
        self.stopped = False
        while heap and not self.stopped:
            if heap[0][0] > until_s:
                break
            time_s, _, kind, payload = pop(heap)
            counters.heap_pops += 1
            self.now_s = time_s
            if kind == _WAKE:
                index, gen = payload
                node = nodes[index]
                if gen != node.gen:
                    continue
                node.wake_at_s = _INF
                if node.core is None or node.paused:
                    continue
                node.core.handle_timer(time_s)
                self._flush(node)
            else:
                self._arrive(kind, payload)
        if not self.stopped:
            self.now_s = max(self.now_s, until_s)

    def _arrive(self, kind: int, payload: Any) -> None:
        """Hand one popped (or held-while-paused) event other than a wake to its handler."""
        if kind == _PACKET:
            self._deliver(payload)
        elif kind == _PP_REQUEST:
            self._serve_push_pull(payload)
        elif kind == _PP_RESPONSE:
            self._finish_push_pull(payload)
        elif kind == _AE_STEP:
            self._anti_entropy_arrive(payload)
        elif kind == _STORE_PUSH:
            self._store_push_arrive(payload)
        else:
            payload()

    # ------------------------------------------------------------------ node life

    def start_node(self, index: int, *, join: list[int] | None = None) -> None:
        """Boot (or reboot) a node now: a fresh core at incarnation 0, joining `join`."""
        node = self.nodes[index]
        if node.core is not None:
            return
        # First boot: the seed derived up front; a reboot: a fresh one from the restart stream.
        seed = self._node_seeds[index] if node.life == 0 else self._restart_rng.getrandbits(64)
        rng = random.Random(seed)
        nonce_rng = random.Random(seed ^ 0x5EED)
        node.core = Membership(
            name=node.name, addr=node.addr, config=self.gossip_config, rng=rng, now=self.now_s
        )
        keyring = Keyring([_SIM_KEY]) if self.encrypt else None
        node.wire = Wire(
            keyring,
            nonce_source=nonce_rng.randbytes,
            replay_window_s=self.gossip_config.replay_window_s,
        )
        node.known = 0
        node.down = {}
        node.user_seen = {}
        node.full_view_at_s = None
        if node.store is None:
            node.store = Store(node.name)
        node.rules = Replication(
            node.store,
            rng=random.Random(seed ^ 0xAE),
            local_addr=node.addr,
            config=self.replication_config,
            count=self._count,
        )
        node.rules.loaded(len(node.store))
        if join:
            node.core.join([self.nodes[j].addr for j in join], self.now_s)
        self._flush(node)
        if self.anti_entropy_interval_s is not None:
            self._schedule_anti_entropy(index, node.life)

    def warm_start(self) -> None:
        """Boot every node already knowing every other, with nothing left to gossip.

        This is the cluster after a long quiet period, and it skips the join
        storm, whose O(N^2 log N) update deliveries dominate the wall time of a
        large run. `Membership.restore` loads the member list quietly; the
        records are shared by every node (names, addresses, metadata), so a
        node's list costs its own per-member state and little else.
        """
        everyone = [NodeState(n.name, n.addr, b"", 0, State.ALIVE) for n in self.nodes]
        # N^2 member records are made here, and the cyclic collector would
        # rescan the growing heap again and again while they are (most of the
        # warm start's time at 2,000 nodes); they hold no cycles, so it is off
        # until they exist. Then they are frozen (gc.freeze): every core's
        # record list is a container the collector walks, 10^8 references at
        # 10,000 nodes, and the temporaries of each push/pull decode trigger a
        # full collection every few exchanges (at 4,000 nodes, more than the
        # exchanges themselves cost). A frozen simulator is kept until the next
        # warm start unfreezes it (it is in cycles through its scheduled
        # closures), so a process holds at most one.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        gc.unfreeze()
        try:
            self._warm_start_nodes(everyone)
        finally:
            gc.freeze()
            if gc_was_enabled:
                gc.enable()

    def _warm_start_nodes(self, everyone: list[NodeState]) -> None:
        for node in self.nodes:
            self.start_node(node.index)
            assert node.core is not None
            node.core.restore(everyone, self.now_s)
            node.known = self.n_nodes - 1
            if node.up_count == self.n_nodes:
                node.full_view_at_s = self.now_s
                self.full_view_nodes += 1
            self._flush(node)

    def crash(self, index: int) -> None:
        """The host dies: no goodbye, its in-flight exchanges are void."""
        node = self.nodes[index]
        node.core = None
        node.wire = None
        node.life += 1
        node.gen += 1
        node.wake_at_s = _INF
        node.paused = False
        node.backlog = []
        node.rules = None

    def pause(self, index: int, duration_s: float) -> None:
        """The process stops (GC pause, SIGSTOP): it handles nothing until resumed."""
        node = self.nodes[index]
        if node.core is None or node.paused:
            return
        node.paused = True
        life = node.life
        self.at(self.now_s + duration_s, lambda: self._resume(index, life))

    def _resume(self, index: int, life: int) -> None:
        node = self.nodes[index]
        if node.life != life or not node.paused:
            return
        node.paused = False
        backlog, node.backlog = node.backlog, []
        for kind, _, payload in backlog:
            if node.core is None:
                break
            self._arrive(kind, payload)  # a packet, push-pull request, store push or AE step
        if node.core is not None:
            node.core.handle_timer(self.now_s)
            self._flush(node)

    def partition(self, spec: Partition) -> None:
        """Schedule a partition to open at `spec.start_s` and heal at `spec.end_s`."""
        self.at(spec.start_s, lambda: self.net.open_partition(spec))
        self.at(spec.end_s, lambda: self.net.heal_partition(spec))

    def command(self, index: int, fn: Callable[[Membership], None]) -> None:
        """Run a core command on a live node now and send what it produced."""
        node = self.nodes[index]
        if node.core is not None:
            fn(node.core)
            self._flush(node)

    # ------------------------------------------------------------------ the driver loop

    def _flush(self, node: SimNode) -> None:
        """What the real driver does after feeding the core: send, connect, hand out events."""
        core = node.core
        wire = node.wire
        assert core is not None and wire is not None
        for addr, plain in core.packets_to_send():
            self._send_packet(node.index, addr, wire.seal(plain))
        for addr, join in core.push_pulls_to_start():
            self._start_push_pull(node, addr, join)
        while (event := core.next_event()) is not None:
            self._on_event(node, event)
        if node.core is not core:
            return  # a hook crashed it
        timer_s = core.get_timer()
        if timer_s < node.wake_at_s:
            node.gen += 1
            node.wake_at_s = timer_s
            self._seq += 1
            heapq.heappush(
                self._heap,
                (
                    timer_s if timer_s > self.now_s else self.now_s,
                    self._seq,
                    _WAKE,
                    (node.index, node.gen),
                ),
            )

    def _send_packet(self, src: int, addr: Addr, data: bytes) -> None:
        counters = self.counters
        counters.packets_sent += 1
        counters.bytes_sent += len(data)
        dst = self._by_addr.get(addr)
        if dst is None:
            self._record(_T_DROP, src, -1, len(data), 0)
            counters.packets_dropped += 1
            return
        delays = self.net.packet_delays_s(src, dst)
        if not delays:
            self._record(_T_DROP, src, dst, len(data), zlib.crc32(data))
            counters.packets_dropped += 1
            return
        for delay_s in delays:
            self._push(self.now_s + delay_s, _PACKET, (src, dst, data))

    def _deliver(self, packet: tuple[int, int, bytes]) -> None:
        src, dst, data = packet
        node = self.nodes[dst]
        core = node.core
        if core is None or (node.paused and self.pause_drops):
            self._record(_T_DROP, src, dst, len(data), zlib.crc32(data))
            self.counters.packets_dropped += 1
            return
        if node.paused:
            if len(node.backlog) < _PAUSE_BACKLOG_MAX:
                node.backlog.append((_PACKET, 0, packet))
            else:
                self._record(_T_DROP, src, dst, len(data), zlib.crc32(data))
                self.counters.packets_dropped += 1
            return
        self._record(_T_DELIVER, src, dst, len(data), zlib.crc32(data))
        self.counters.packets_delivered += 1
        assert node.wire is not None
        try:
            plain = node.wire.open(data, self.now_s)
            core.receive_packet(plain, self.nodes[src].addr, self.now_s)
        except RemoteProtocolError:
            self.counters.packets_rejected += 1
            self._record(_T_REJECT, src, dst, len(data), 0)
        self._flush(node)

    # ------------------------------------------------------------------ push/pull

    def _start_push_pull(self, node: SimNode, addr: Addr, join: bool) -> None:
        """Client side: connect and send our state; the reply comes back through the heap."""
        assert node.core is not None and node.wire is not None
        self.counters.push_pulls_started += 1
        dst = self._by_addr.get(addr)
        frame = node.wire.frame(codec.encode_push_pull(node.core.local_state(join=join)))
        self.counters.push_pull_bytes += len(frame)
        delay_s = None if dst is None else self.net.stream_delay_s(node.index, dst, len(frame))
        if dst is None or delay_s is None:
            self._record(_T_PP, node.index, -1 if dst is None else dst, len(frame), 0)
            self._push_pull_failed(node.index, node.life, addr, join)
            return
        request = (node.index, node.life, dst, frame, self.now_s, join)
        self._push(self.now_s + delay_s, _PP_REQUEST, request)

    def _read_frame(self, node: SimNode, frame: bytes) -> bytes:
        assert node.wire is not None
        limit = self.gossip_config.push_pull_max_bytes + 64
        reader = FrameReader(node.wire, max_frame_bytes=limit)
        reader.feed(frame)
        payload = reader.next_frame(self.now_s)
        if payload is None:
            raise AssertionError("a simulated frame always arrives whole")
        return payload

    def _push_pull_failed(self, client: int, life: int, addr: Addr, join: bool) -> None:
        """Count a failed exchange; a failed join is retried, as the agent's retry-join does."""
        self.counters.push_pulls_failed += 1
        if not join:
            return

        def retry() -> None:
            node = self.nodes[client]
            if node.life == life and node.core is not None and not node.paused:
                self._start_push_pull(node, addr, True)

        self.at(self.now_s + self.join_retry_s, retry)

    def _serve_push_pull(self, request: tuple[int, int, int, bytes, float, bool]) -> None:
        client, client_life, dst, frame, started_s, join = request
        node = self.nodes[dst]
        if node.core is None:
            self._record(_T_PP, client, dst, len(frame), 1)
            self._push_pull_failed(client, client_life, node.addr, join)
            return
        if node.paused:
            node.backlog.append((_PP_REQUEST, 0, request))
            return
        self._record(_T_PP, client, dst, len(frame), zlib.crc32(frame))
        limit = self.gossip_config.push_pull_max_bytes + 64
        try:
            msg = codec.decode_push_pull(self._read_frame(node, frame), max_bytes=limit)
            reply = node.core.receive_push_pull(msg, self.now_s)
        except RemoteProtocolError:
            self._record(_T_REJECT, client, dst, len(frame), 1)
            self._push_pull_failed(client, client_life, node.addr, join)
            return
        assert node.wire is not None
        out = node.wire.frame(codec.encode_push_pull(reply))
        self.counters.push_pull_bytes += len(out)
        self._flush(node)
        delay_s = self.net.stream_delay_s(dst, client, len(out))
        if delay_s is None:
            self._record(_T_PP, dst, client, len(out), 2)
            self._push_pull_failed(client, client_life, node.addr, join)
            return
        response = (dst, client, client_life, out, started_s, join)
        self._push(self.now_s + delay_s, _PP_RESPONSE, response)

    def _finish_push_pull(self, response: tuple[int, int, int, bytes, float, bool]) -> None:
        server, client, client_life, frame, started_s, join = response
        node = self.nodes[client]
        late = self.now_s - started_s > self.push_pull_timeout_s
        if node.core is None or node.life != client_life or node.paused or late:
            # The client is gone, or (paused, late) its stream timed out.
            self._record(_T_PP, server, client, len(frame), 3)
            self._push_pull_failed(client, client_life, self.nodes[server].addr, join)
            return
        self._record(_T_PP, server, client, len(frame), zlib.crc32(frame))
        limit = self.gossip_config.push_pull_max_bytes + 64
        try:
            msg = codec.decode_push_pull(self._read_frame(node, frame), max_bytes=limit)
        except RemoteProtocolError:
            self._record(_T_REJECT, server, client, len(frame), 2)
            self._push_pull_failed(client, client_life, self.nodes[server].addr, join)
            return
        node.core.merge_remote_state(msg, self.now_s)
        self._flush(node)
        if join and node.core is not None and node.rules is not None:
            # The agent's _join: once in, the joiner reconciles its store (the core says with whom).
            for peer in node.rules.after_join(*self._alive_peers(node)):
                self.start_anti_entropy(client, peer)

    # ------------------------------------------------------------------ the replicated store

    def store_put(self, index: int, kind: str, key: str, value: bytes) -> Entry:
        """A local write on a live node, broadcast as the agent's Replicator.put does."""
        node = self.nodes[index]
        if node.core is None or node.store is None or node.rules is None:
            raise ValueError(f"node {index} is down: it cannot take a write")
        entry = node.store.put(kind, key, value)
        self._record(_T_STORE, index, entry.version.lamport & 0xFFFFFFFF, len(value), 0)
        self._broadcast(node, node.rules.local_writes([entry]))
        pushed = node.rules.push_entries([entry])
        for peer in node.rules.push_targets(pushed, *self._alive_peers(node)):
            self._store_push_send(node, peer, pushed, node.rules)
        self._flush(node)
        return entry

    def _store_push_send(
        self, node: SimNode, dst: int, entries: list[Entry], rules: Replication[int]
    ) -> None:
        """The agent's push of a security write: one step of `Entries` on a stream."""
        assert node.wire is not None
        data = encode_step(node.wire, store_codec.encode_entries(entries))
        self.counters.store_push_bytes += len(data)
        timeout_s = self.replication_config.push_timeout_s
        delay_s = self.net.retransmitted_stream_delay_s(node.index, dst, len(data), timeout_s)
        if delay_s is None:
            self._record(_T_PUSH, node.index, dst, len(data), 1)
            rules.push_done(ok=False)
            return
        self._push(self.now_s + delay_s, _STORE_PUSH, (node.index, dst, data, self.now_s, rules))

    def _store_push_arrive(self, payload: tuple[int, int, bytes, float, Replication[int]]) -> None:
        """A push reaches its peer: merge and relay, as a broadcast's receiver does."""
        src, dst, data, sent_s, rules = payload
        node = self.nodes[dst]
        if node.core is None or node.rules is None:
            self._record(_T_PUSH, src, dst, len(data), 2)
            rules.push_done(ok=False)
            return
        if node.paused:
            node.backlog.append((_STORE_PUSH, 0, payload))
            return
        self._record(_T_PUSH, src, dst, len(data), zlib.crc32(data))
        assert node.wire is not None
        reader = StepReader(node.wire)
        reader.feed(data)
        try:
            step = reader.next_step(self.now_s)
            if step is None:
                raise AssertionError("a simulated step always arrives whole")
            entries = [e for m in step if isinstance(m, store_codec.Entries) for e in m.entries]
        except RemoteProtocolError:
            self.counters.packets_rejected += 1
            self._record(_T_REJECT, src, dst, len(data), 40)
            rules.push_done(ok=False)
            return
        self._apply(node, node.rules.receive_entries(entries, relay=True))
        # The data sat in the socket buffer of a paused peer; the sender gave up on the ack.
        rules.push_done(ok=self.now_s - sent_s <= self.replication_config.push_timeout_s)
        if node.core is not None:
            self._flush(node)

    def _count(self, name: str, amount: int) -> None:
        """The core's counter sink: the counters the simulator reports."""
        field_name = _CORE_COUNTERS.get(name)
        if field_name is not None:
            setattr(self.counters, field_name, getattr(self.counters, field_name) + amount)

    def _broadcast(self, node: SimNode, broadcasts: Iterable[Broadcast]) -> None:
        assert node.core is not None
        for b in broadcasts:
            if b.payload[0] != CHANNEL_STORE_ENTRY:
                # The agent sends a notice and the receivers fetch; the simulated
                # writes are small, so this would be a scenario's mistake.
                raise ValueError(f"a {len(b.payload)}-byte entry needs the notice path")
            node.core.broadcast_user(b.payload, key=b.key)

    def _apply(self, node: SimNode, outcome: Outcome) -> None:
        """What the agent's Replicator does with an outcome: persist (trace), then send."""
        for current in outcome.changed:
            self.counters.store_merged += 1
            crc = zlib.crc32(f"{current.kind}\xff{current.key}".encode())
            self._record(_T_STORE, node.index, current.version.lamport & 0xFFFFFFFF, 1, crc)
            for hook in self.store_hooks:
                hook(self, node, current)
        if outcome.fetches:
            raise ValueError("a notice reached a node: the simulated writes must be small")
        if outcome.broadcasts and node.core is not None:
            self._broadcast(node, outcome.broadcasts)

    def _merge(self, node: SimNode, entries: Iterable[Entry]) -> None:
        """An anti-entropy merge (not relayed)."""
        assert node.rules is not None
        self._apply(node, node.rules.receive_entries(entries, relay=False))

    # ------------------------------------------------------------------ anti-entropy

    def _schedule_anti_entropy(self, index: int, life: int) -> None:
        """The agent's loop: sleep for the core's jittered interval, then one round."""
        node = self.nodes[index]
        assert node.rules is not None
        delay_s = node.rules.anti_entropy_delay_s()

        def tick() -> None:
            if node.life != life or node.core is None:
                return
            if not node.paused:
                self.start_anti_entropy(index)
            self._schedule_anti_entropy(index, life)

        self.at(self.now_s + delay_s, tick)

    def _alive_peers(self, node: SimNode) -> tuple[_Others, Callable[[int], bool]]:
        """The core's view of the other members: indices, and "is it alive here"."""
        core = node.core
        assert core is not None
        nodes = self.nodes

        def alive(other: int) -> bool:
            m = core.member(nodes[other].name)
            return m is not None and m.state == State.ALIVE

        return _Others(self.n_nodes, node.index), alive

    def start_anti_entropy(self, index: int, peer: int | None = None) -> None:
        """Start one round from `index` (with `peer`, or a random alive member) unless busy."""
        node = self.nodes[index]
        if node.core is None or node.store is None or node.rules is None or node.paused:
            return
        if peer is None:
            picked = node.rules.pick_peers(*self._alive_peers(node), 1)
            if not picked:
                return
            peer = picked[0]
        if not node.rules.begin_exchange():
            return
        session = Initiator(node.store)
        ex = _Exchange(index, peer, node.life, self.now_s, session, node.rules)
        self._anti_entropy_send(ex, index, peer, session.opening())

    def _anti_entropy_send(self, ex: _Exchange, src: int, dst: int, messages: list[bytes]) -> None:
        wire = self.nodes[src].wire
        assert wire is not None
        data = encode_step(wire, messages)
        self.counters.anti_entropy_bytes += len(data)
        self.counters.anti_entropy_steps += 1
        delay_s = self.net.stream_delay_s(src, dst, len(data))
        if delay_s is None:
            self._record(_T_AE, src, dst, len(data), ex.step)
            self._anti_entropy_end(ex, ok=False)
            return
        self._push(self.now_s + delay_s, _AE_STEP, (ex, dst, data))

    def _anti_entropy_end(self, ex: _Exchange, *, ok: bool) -> None:
        if ex.ended:
            return
        ex.ended = True
        queued = ex.rules.end_exchange(ok=ok)
        if queued is not None and self.nodes[ex.initiator].life == ex.initiator_life:
            self.start_anti_entropy(ex.initiator, queued)

    def _anti_entropy_arrive(self, payload: tuple[_Exchange, int, bytes]) -> None:
        """One step reaches its end of the stream: read it whole, answer with the next."""
        ex, dst, data = payload
        node = self.nodes[dst]
        at_initiator = dst == ex.initiator
        life = ex.initiator_life if at_initiator else ex.responder_life
        if node.core is None or (life >= 0 and node.life != life):
            self._record(_T_AE, ex.initiator, ex.responder, len(data), 10 + ex.step)
            self._anti_entropy_end(ex, ok=False)
            return
        if node.paused:
            node.backlog.append((_AE_STEP, 0, payload))
            return
        if self.now_s - ex.started_s > self.replication_config.exchange_timeout_s:
            self._record(_T_AE, ex.initiator, ex.responder, len(data), 20 + ex.step)
            self._anti_entropy_end(ex, ok=False)
            return
        self._record(_T_AE, ex.initiator, ex.responder, len(data), zlib.crc32(data))
        assert node.wire is not None and node.store is not None
        reader = StepReader(node.wire)
        reader.feed(data)
        other = ex.responder if at_initiator else ex.initiator
        try:
            step = reader.next_step(self.now_s)
            if step is None:
                raise AssertionError("a simulated step always arrives whole")
            if ex.step == 1:
                ex.responder_life = node.life
                ex.answer = Responder(node.store)
                ex.step = 2
                self._anti_entropy_send(ex, dst, other, ex.answer.on_digest(step))
            elif ex.step == 2:
                push = ex.session.on_bucket_versions(step)
                ex.step = 3
                self._anti_entropy_send(ex, dst, other, push)
                if not ex.session.expects_entries:
                    # The initiator is done once it has sent; the responder merges on arrival.
                    self._anti_entropy_end(ex, ok=True)
            elif ex.step == 3:
                assert ex.answer is not None
                self._merge(node, ex.answer.on_push(step))
                answer = ex.answer.answer()
                if answer is not None:
                    ex.step = 4
                    self._anti_entropy_send(ex, dst, other, answer)
            else:
                self._merge(node, ex.session.on_entries(step))
                self._anti_entropy_end(ex, ok=True)
        except RemoteProtocolError:
            self.counters.packets_rejected += 1
            self._record(_T_REJECT, ex.initiator, ex.responder, len(data), 30 + ex.step)
            self._anti_entropy_end(ex, ok=False)

    # ------------------------------------------------------------------ events and trace

    def _on_event(self, node: SimNode, event: Event) -> None:
        self.counters.events += 1
        if isinstance(event, UserMessage):
            payload = event.payload
            self._record(_T_EVENT, node.index, 6, len(payload), zlib.crc32(payload))
            if payload and payload[0] in _STORE_CHANNELS:
                assert node.rules is not None
                outcome = node.rules.receive_user(payload)
                assert outcome is not None
                self._apply(node, outcome)
            elif payload not in node.user_seen:
                node.user_seen[event.payload] = self.now_s
                # The application's rule: pass news on once (serf user events, store updates).
                assert node.core is not None
                node.core.broadcast_user(event.payload, key=event.payload)
        elif isinstance(event, MemberReaped):
            self._record(_T_EVENT, node.index, 5, self.index_of.get(event.name, -1), 0)
            if event.name in node.down:
                del node.down[event.name]
                node.known -= 1
            assert node.rules is not None
            node.rules.member_reaped(event.name)
        else:
            m = event.member
            code = _EVENT_CODES[type(event)]
            self._record(_T_EVENT, node.index, code, self.index_of.get(m.name, -1), m.incarnation)
            if isinstance(event, MemberJoined):
                if m.name in node.down:
                    del node.down[m.name]
                else:
                    node.known += 1
                assert node.rules is not None
                returning = self.index_of.get(m.name)
                if node.rules.member_joined(m.name) and returning is not None:
                    self.start_anti_entropy(node.index, returning)
            elif isinstance(event, MemberFailed | MemberLeft):
                node.down[m.name] = m.state
                assert node.rules is not None
                node.rules.member_departed(m.name)
        if (
            node.full_view_at_s is None
            and node.up_count == self.n_nodes
            and not isinstance(event, UserMessage)
        ):
            node.full_view_at_s = self.now_s
            self.full_view_nodes += 1
            if self.full_view_nodes == self.n_nodes and self.on_full_view is not None:
                self.on_full_view()
        for hook in self.hooks:
            hook(self, node, event)

    def _record(self, kind: int, a: int, b: int, n: int, digest: int) -> None:
        m = 0xFFFFFFFF
        self._trace.update(self._pack(kind, self.now_s, a & m, b & m, n & m, digest & m))

    def trace_sha256(self) -> str:
        """The fingerprint of everything delivered, dropped and emitted so far."""
        return self._trace.hexdigest()

    # ------------------------------------------------------------------ queries

    def live_indices(self) -> list[int]:
        return [n.index for n in self.nodes if n.core is not None]

    def heap_size(self) -> int:
        return len(self._heap)


class _Others(Sequence[int]):
    """Every node index but one, as a sequence: the core samples it in O(1) per draw."""

    def __init__(self, n_nodes: int, me: int) -> None:
        self._n = n_nodes - 1 if n_nodes > 1 else 0
        self._me = me

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...
    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not 0 <= i < self._n:
            raise IndexError(i)
        return i + (i >= self._me)
