"""SWIM membership with the Lifeguard refinements, as a sans-IO state machine.

Rules that live here (memberlist's `state.go`):
- probing: one member a probe interval, round-robin over a shuffled list;
  ping, then ping-req through `indirect_checks` helpers after the probe
  timeout, then suspicion at the end of the interval; a ping to a suspect
  carries the suspicion (Lifeguard's buddy system);
- TCP fallback (memberlist #37): with the ping-reqs, one ping over TCP to the
  target (`tcp_pings_to_start`, answered by `tcp_ping_answered` or
  `tcp_ping_failed`); if it is answered before the interval ends, the UDP
  failure is counted (`tcp_fallback_saves`) and the target is not suspected.
  A TCP ping still unanswered at the end counts as failed. The stream itself
  is the driver's; the core makes the ping, checks the ack and answers
  others' TCP pings (`answer_tcp_ping`);
- incarnation numbers order every claim about a member; only the member
  itself raises its own incarnation, to refute suspicion or death, and it
  answers any packet accusing it (even with an older incarnation) with its
  current alive, straight to the sender;
- suspicion becomes death after a Lifeguard timeout that shrinks with
  independent confirmations; local health awareness stretches our own probing
  when we miss acks and nacks;
- every state change is broadcast through the transmit-limited queue and
  piggybacked on every packet, plus a gossip round to random members;
- push/pull full-state exchanges run on join, shortly after it, periodically,
  and towards failed members (reconnect), which is what heals partitions;
- dead and left members are remembered, then reaped.

Inputs: `receive_packet(data, src, now)`, `receive_push_pull(msg, now)`,
`merge_remote_state(msg, now)`, `tcp_ping_answered/failed`, `handle_timer(now)`
and the commands. Outputs: `packets_to_send()`, `push_pulls_to_start()`,
`tcp_pings_to_start()`, `next_event()` and `get_timer()`.
It never reads a clock, a socket or the global random generator.
"""

from __future__ import annotations

import functools
import random
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import assert_never

from . import codec
from .awareness import Awareness
from .config import GossipConfig
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    Event,
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberUpdated,
    UserMessage,
)
from .formulas import (
    push_pull_interval_s,
    retransmit_limit,
    suspicion_expected_confirmations,
    suspicion_timeout_s,
)
from .messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    NodeState,
    PacketMessage,
    Ping,
    PushPull,
    State,
    Suspect,
    User,
)
from .names import SHARED
from .queue import BroadcastQueue
from .suspicion import Suspicion

_SEQ_MODULUS = 1 << 32
# A member's state in its column is the `State` value; 0 is "not a member".
_ABSENT = 0
_ALIVE = int(State.ALIVE)
_LEFT = int(State.LEFT)
_DEAD = int(State.DEAD)
_SUSPECT = int(State.SUSPECT)
_LIVE = (_ALIVE, _SUSPECT)
_DOWN = (_DEAD, _LEFT)
_STATE_OF: tuple[State, ...] = (State.ALIVE, *State)  # index 0 is never read
# Incarnations are u64 on the wire but almost always small: the column holds
# 32 bits, and this value in it means "the real one is in the overflow dict".
_INC_BIG = 0xFFFFFFFF
# Bounded memory under churn: beyond this many queued updates the most-sent go.
_MAX_QUEUED_BROADCASTS = 20_000
# Pruning walks a whole bucket, so it runs only once this many updates have
# piled up beyond the cap: once per update made a 100k-node push/pull take
# 16 s of blocked event loop (quadratic); this keeps it amortised O(1).
_PRUNE_SLACK = _MAX_QUEUED_BROADCASTS // 10
# Indirect pings we relay at once. A LAN cluster needs a handful (3 helpers per
# failed probe, each relay lives one probe timeout); the cap stops a flood of
# ping-reqs from growing memory and the per-timer scan without bound.
_MAX_RELAYS = 1024
# Incarnations are u64 on the wire; a claim at the maximum cannot be refuted.
_INCARNATION_MAX = 2**64 - 1
# How often dead members are checked for reaping; reaping is not urgent.
_REAP_CHECK_INTERVAL_S = 5.0


@functools.lru_cache(maxsize=1 << 16)
def _record(name: str, addr: Addr, meta: bytes, incarnation: int, state: State) -> NodeState:
    """One shared record per distinct claim: N cores that agree on a member hold one copy."""
    return NodeState(name, addr, meta, incarnation, state)


@dataclass(frozen=True, slots=True)
class TcpPing:
    """A ping the driver should send over TCP: `payload` (a packet) to `addr` by `deadline_s`."""

    addr: Addr
    seq: int
    payload: bytes
    deadline_s: float


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    indirect_at_s: float
    end_at_s: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp_answered: bool = False


@dataclass(slots=True)
class _Relay:
    """An indirect ping we perform on behalf of `requester`."""

    requester: Addr
    requester_seq: int
    deadline_s: float
    want_nack: bool


class Membership:
    """One node's view of the cluster.

    Members live in columns indexed by a slot of the process-wide name table
    (`names.SHARED`): state, incarnation and change time in arrays, the
    address and metadata in a shared `NodeState` record (whose incarnation
    and state may be older than the columns'; a push/pull reuses it while
    they agree). `_order` lists this core's member slots in the order it
    learnt them, which is the order every scan and every random choice
    iterates (a dict's order, as before the columns): why N^2 (node, member)
    pairs fit in a simulation (simulations/README.md, "Scale and speed").
    """

    def __init__(
        self,
        *,
        name: str,
        addr: Addr,
        meta: bytes = b"",
        config: GossipConfig | None = None,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
    ) -> None:
        self.config = config or GossipConfig()
        if len(meta) > self.config.meta_max_bytes:
            raise LocalProtocolError(
                f"node metadata is {len(meta)} bytes, limit is {self.config.meta_max_bytes}"
            )
        self.name = name
        self._rng = rng
        self._names = SHARED
        # The columns, one entry per slot of the name table (grown on demand).
        self._state = bytearray()  # State value, or _ABSENT
        self._inc = array("I")  # incarnation, or _INC_BIG: see _inc_big
        self._inc_big: dict[int, int] = {}
        self._change_s = array("d")  # time of the last state change
        self._rec: list[NodeState | None] = []  # addr and meta, shared
        self._in_probe = bytearray()  # 1 while the slot is in `_probe_order`
        # A slot is ours while it is a member here or in the probe round: the
        # table frees only slots that no core marks in these two columns.
        self._names.register(self, self._state, self._in_probe)
        me = self._intern(name)
        self._self_slot = me
        self._state[me] = _ALIVE
        self._set_inc(me, incarnation)
        self._change_s[me] = now
        self._rec[me] = NodeState(name, addr, meta, incarnation, State.ALIVE)
        self._order = array("I", [me])
        # Alive or suspect members, kept by _set_state: the formulas ask for
        # it on every packet, and counting cost O(N) each time.
        self._n_live = 1
        # Others that are dead or left (or anything not live), kept by _set_state
        # too: reaping and reconnecting scan all members only when there are some.
        self._n_others_down = 0
        self._queue = BroadcastQueue()
        self._awareness = Awareness(self.config.awareness_max_multiplier)
        self._suspicions: dict[str, Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._probe: _Probe | None = None
        # Slots of this round's probe targets; `_in_probe` marks them, so a
        # member that flaps is not queued twice.
        self._probe_order = array("I")
        self._probe_index = 0
        self._seq = rng.randrange(_SEQ_MODULUS)
        self._out: list[tuple[Addr, bytes]] = []
        self._push_pulls: list[tuple[Addr, bool]] = []
        # At most one: a probe's TCP ping, replaced by the next probe's if the
        # driver never took it (the simulator has no TCP).
        self._tcp_ping: TcpPing | None = None
        self._events: deque[Event] = deque()
        self._leaving = False
        self._leave_done = False
        # Set while a packet accuses us (suspect or dead, even a stale one): its
        # sender then gets our current alive straight back (see receive_packet).
        self._accused = False
        self.user_state: bytes = b""
        # Stagger the periodic timers so a cluster started at once does not
        # fire in lockstep.
        cfg = self.config
        self._next_probe_s = now + rng.uniform(0.0, cfg.probe_interval_s)
        self._next_gossip_s = now + rng.uniform(0.0, cfg.gossip_interval_s)
        self._next_push_pull_s = now + rng.uniform(1.0, 2.0) * cfg.push_pull_interval_s
        self._next_reconnect_s = now + rng.uniform(1.0, 2.0) * cfg.reconnect_interval_s
        self._next_reap_s = now + _REAP_CHECK_INTERVAL_S
        self._quick_push_pulls_s: list[float] = []
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ the columns

    def _grow(self, slot: int) -> None:
        """Make the columns long enough for `slot` (to the table's size, or half as long again)."""
        n = len(self._state)
        if slot < n:
            return
        new = max(self._names.capacity, slot + 1, n + (n >> 1) + 8)
        k = new - n
        self._state.extend(bytes(k))
        self._in_probe.extend(bytes(k))
        self._inc.frombytes(bytes(k * self._inc.itemsize))
        self._change_s.frombytes(bytes(k * self._change_s.itemsize))
        self._rec.extend([None] * k)

    def _intern(self, name: str) -> int:
        """The slot for a member about to be added here, the columns grown to reach it."""
        slot = self._names.intern(name)
        self._grow(slot)
        return slot

    def _lookup(self, name: str) -> int | None:
        """The slot of a member of ours, or None."""
        slot = self._names.slot_of.get(name)
        if slot is None or slot >= len(self._state) or not self._state[slot]:
            return None
        return slot

    def _get_inc(self, slot: int) -> int:
        value = self._inc[slot]
        return self._inc_big[slot] if value == _INC_BIG else value

    def _set_inc(self, slot: int, value: int) -> None:
        if value >= _INC_BIG:
            self._inc[slot] = _INC_BIG
            self._inc_big[slot] = value
        else:
            self._inc[slot] = value
            if self._inc_big:
                self._inc_big.pop(slot, None)

    def _addr_of(self, slot: int) -> Addr:
        rec = self._rec[slot]
        assert rec is not None
        return rec.addr

    def _addr_meta(self, slot: int) -> tuple[Addr, bytes]:
        rec = self._rec[slot]
        assert rec is not None
        return rec.addr, rec.meta

    def _snapshot(self, slot: int) -> Member:
        rec = self._rec[slot]
        assert rec is not None
        return Member(
            self._names.name(slot),
            rec.addr,
            rec.meta,
            self._get_inc(slot),
            _STATE_OF[self._state[slot]],
            self._change_s[slot],
        )

    def _add_member(
        self, name: str, addr: Addr, meta: bytes, incarnation: int, state: int, now: float
    ) -> int:
        slot = self._intern(name)
        self._state[slot] = state
        self._set_inc(slot, incarnation)
        self._change_s[slot] = now
        self._rec[slot] = _record(name, addr, meta, incarnation, _STATE_OF[state])
        self._order.append(slot)
        return slot

    # ------------------------------------------------------------------ queries

    @property
    def incarnation(self) -> int:
        return self._get_inc(self._self_slot)

    @property
    def local_addr(self) -> Addr:
        return self._addr_of(self._self_slot)

    @property
    def awareness_score(self) -> int:
        return self._awareness.score

    @property
    def leave_done(self) -> bool:
        """True once our leave notice has been gossiped as often as any update."""
        return self._leave_done

    def members(self) -> list[Member]:
        return [self._snapshot(s) for s in self._order]

    def member(self, name: str) -> Member | None:
        slot = self._lookup(name)
        return None if slot is None else self._snapshot(slot)

    def num_alive(self) -> int:
        """Members counted for the formulas: everyone not dead or left (memberlist's estimate)."""
        return self._n_live

    def pending_broadcasts(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ outputs

    def packets_to_send(self) -> list[tuple[Addr, bytes]]:
        """Plain (unsealed) packets to send, each under the MTU budget."""
        out, self._out = self._out, []
        return out

    def push_pulls_to_start(self) -> list[tuple[Addr, bool]]:
        """Full-state exchanges the driver should open over TCP: (peer, is_join)."""
        out, self._push_pulls = self._push_pulls, []
        return out

    def tcp_pings_to_start(self) -> list[TcpPing]:
        """The TCP fallback ping the driver should send now (see the module doc)."""
        out, self._tcp_ping = self._tcp_ping, None
        return [] if out is None else [out]

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        """The next time `handle_timer` has work to do."""
        if self._leaving:
            return self._next_gossip_s
        deadlines = [
            self._next_probe_s,
            self._next_gossip_s,
            self._next_push_pull_s,
            self._next_reconnect_s,
            self._next_reap_s,
        ]
        if self._probe is not None:
            if not self._probe.indirect_sent:
                deadlines.append(self._probe.indirect_at_s)
            deadlines.append(self._probe.end_at_s)
        if self._quick_push_pulls_s:
            deadlines.append(self._quick_push_pulls_s[0])
        deadlines.extend(s.deadline() for s in self._suspicions.values())
        deadlines.extend(r.deadline_s for r in self._relays.values())
        return min(deadlines)

    # ------------------------------------------------------------------ commands

    def join(self, addrs: list[Addr], now: float) -> None:
        """Ask the driver for a join push/pull with each seed, then a few quick ones."""
        for addr in addrs:
            self._push_pulls.append((addr, True))
        self._quick_push_pulls_s = sorted(now + d for d in self.config.join_push_pull_delays_s)

    def restore(self, members: Iterable[NodeState], now: float) -> int:
        """Load members from a snapshot quietly: no events, nothing queued to gossip.

        For a start that is already converged (the simulator's warm start; an
        agent reloading the member list it saved), where replaying the list as
        gossip would broadcast every member to everyone again. Only members we
        do not know are added, as alive, or dead/left as recorded (a suspect is
        loaded alive: our own probes decide); entries about ourselves are
        skipped. They join the probe order at the next round. Returns how many
        were added; raises `LocalProtocolError` for oversized metadata.

        The first periodic push/pull is then redrawn within one interval scaled
        to the restored size, U(0, 1) x `push_pull_interval_s(base, N)`, which
        is the steady-state rate of the cluster from the start. The default
        U(1, 2) x base suits a node that joins (its join push/pulls have just
        run), but a converged cluster that restarts would otherwise move N full
        states of N entries within the first minute: at 10,000 nodes, 10,000
        exchanges of ~800 KB each way in 30-60 s, 16 GB of traffic that repairs
        nothing. memberlist staggers its first exchange within one interval
        too (`pushPullTrigger`), then ticks at the scaled interval.
        """
        # Column by column rather than through _add_member: a warm start of
        # 10,000 nodes restores 10^8 entries. The records are the given
        # NodeStates, shared by every core restored from the same list.
        members = members if isinstance(members, list | tuple) else list(members)
        slots = self._names.intern_many([ns.node for ns in members])
        if slots:
            self._grow(max(slots))
        meta_max_bytes = self.config.meta_max_bytes
        state, inc, change_s, recs = self._state, self._inc, self._change_s, self._rec
        append = self._order.append
        n_live = n_down = 0
        try:
            for ns, s in zip(members, slots, strict=True):
                if state[s]:
                    continue  # ourselves, a member we know, or a repeat in the list
                if len(ns.meta) > meta_max_bytes:
                    raise LocalProtocolError(f"restored member {ns.node!r} has oversized metadata")
                if ns.state == _DEAD or ns.state == _LEFT:
                    state[s] = ns.state
                    n_down += 1
                else:
                    state[s] = _ALIVE
                    n_live += 1
                if ns.incarnation < _INC_BIG:
                    inc[s] = ns.incarnation
                else:
                    self._set_inc(s, ns.incarnation)
                change_s[s] = now
                recs[s] = ns
                append(s)
        finally:
            self._n_live += n_live
            self._n_others_down += n_down
        added = n_live + n_down
        if added:
            interval_s = push_pull_interval_s(self.config.push_pull_interval_s, self.num_alive())
            self._next_push_pull_s = now + self._rng.uniform(0.0, 1.0) * interval_s
        return added

    def leave(self, now: float) -> None:
        """Announce a graceful leave; `leave_done` turns True when it has spread."""
        if self._leaving:
            return
        self._leaving = True
        self._set_state(self._self_slot, _LEFT, now)
        msg = Dead(self.incarnation, self.name, self.name)
        if self.num_alive() == 0:
            self._leave_done = True
            return

        def done() -> None:
            self._leave_done = True

        self._broadcast(msg, key=self.name, on_done=done)
        # Spread it now rather than at the next gossip tick.
        self._gossip_round(now)

    def force_leave(self, name: str, now: float) -> None:
        """Declare another member left on its behalf (Consul's force-leave).

        A member that is in fact alive hears of it and refutes, as in Consul.
        """
        slot = self._lookup(name)
        if slot is None or name == self.name:
            raise LocalProtocolError(f"no member named {name!r}")
        if self._state[slot] == _LEFT:
            return
        self._apply_dead(Dead(self._get_inc(slot), name, name), now)

    def update_meta(self, meta: bytes, now: float) -> None:
        if len(meta) > self.config.meta_max_bytes:
            raise LocalProtocolError(
                f"node metadata is {len(meta)} bytes, limit is {self.config.meta_max_bytes}"
            )
        me = self._self_slot
        self._rec[me] = NodeState(self.name, self._addr_of(me), meta, 0, State.ALIVE)
        if self._leaving:
            # An Alive now would outrank our leave notice (higher incarnation)
            # and replace it in the queue, which also set leave_done before
            # the notice was ever sent.
            return
        self._set_inc(me, self._get_inc(me) + 1)
        self._broadcast_self_alive()

    def broadcast_user(self, payload: bytes, *, key: object | None = None) -> None:
        """Gossip an application payload to every member (best effort, transmit-limited)."""
        # `is not None`: a key of 0 or "" is a key like any other.
        user_key = ("user", key) if key is not None else None
        self._queue.push(codec.encode_message(User(payload)), key=user_key)

    def send_user(self, addr: Addr, payload: bytes) -> None:
        """Send an application payload to one node, with piggybacked updates."""
        self._send(addr, [User(payload)])

    # ------------------------------------------------------------------ inputs

    def receive_packet(self, data: bytes, src: Addr, now: float) -> None:
        """Feed one plain (already opened) UDP packet; raises RemoteProtocolError."""
        messages = codec.decode_packet(data, max_bytes=65507)
        self._accused = False
        for msg in messages:
            self._dispatch(msg, src, now)
        if self._accused:
            # The sender believes us suspect or dead. Our refutation is a broadcast
            # of a few packets and may never reach it (loss): answer it directly,
            # once per packet, so it clears us before its suspicion timer fires.
            self._accused = False
            addr, meta = self._addr_meta(self._self_slot)
            self._send(src, [Alive(self.incarnation, self.name, addr, meta)])

    def receive_push_pull(self, msg: PushPull, now: float) -> PushPull:
        """Serve a peer's full-state exchange: answer with ours, then merge theirs."""
        reply = self.local_state(join=False)
        self.merge_remote_state(msg, now)
        return reply

    def local_state(self, *, join: bool) -> PushPull:
        recs, state, inc, inc_big = self._rec, self._state, self._inc, self._inc_big
        nodes = []
        for s in self._order:
            rec = recs[s]
            assert rec is not None
            value = inc[s]
            if value == _INC_BIG:
                value = inc_big[s]
            member_state = _STATE_OF[state[s]]
            if rec.incarnation != value or rec.state is not member_state:
                # The columns moved on since the record was made: a new one,
                # kept for the next exchange.
                rec = recs[s] = NodeState(rec.node, rec.addr, rec.meta, value, member_state)
            nodes.append(rec)
        return PushPull(join=join, nodes=tuple(nodes), user_state=self.user_state)

    def merge_remote_state(self, msg: PushPull, now: float) -> None:
        """Merge a peer's full state as if each entry had arrived by gossip.

        A member the peer believes dead is only suspected here: our own probes
        get the chance to disagree (memberlist's mergeState).
        """
        # One bad entry (oversized metadata, an unrefutable claim about us)
        # must not cost us the rest of the peer's state: merge everything
        # else, then report the first rejection.
        error: RemoteProtocolError | None = None
        meta_max_bytes = self.config.meta_max_bytes
        slot_of, state, inc, inc_big = self._names.slot_of, self._state, self._inc, self._inc_big
        me = self._self_slot
        for ns in msg.nodes:
            if ns.state is State.ALIVE:
                # Most of a full state is news we already have: an alive claim no
                # newer than ours changes nothing (_apply_alive's first return).
                s = slot_of.get(ns.node)
                if s is not None and s != me and s < len(state) and state[s]:
                    value = inc[s]
                    if value == _INC_BIG:
                        value = inc_big[s]
                    if ns.incarnation <= value and len(ns.meta) <= meta_max_bytes:
                        continue
            try:
                if ns.state in (State.ALIVE, State.LEAVING):
                    self._apply_alive(Alive(ns.incarnation, ns.node, ns.addr, ns.meta), now)
                elif ns.state in (State.SUSPECT, State.DEAD):
                    self._apply_suspect(Suspect(ns.incarnation, ns.node, self.name), now)
                elif ns.state == State.LEFT:
                    self._apply_dead(Dead(ns.incarnation, ns.node, ns.node), now)
            except RemoteProtocolError as exc:
                error = error or exc
        if error is not None:
            raise error

    def tcp_ping_answered(self, seq: int, data: bytes, now: float) -> bool:
        """The plain reply to TCP ping `seq`; True when it is its ack (the target is up).

        Raises `RemoteProtocolError` for bytes that do not decode.
        """
        messages = codec.decode_packet(data, max_bytes=65507)
        acked = any(isinstance(m, Ack) and m.seq == seq for m in messages)
        probe = self._probe
        if acked and probe is not None and probe.seq == seq:
            probe.tcp_answered = True
        return acked

    def tcp_ping_failed(self, seq: int, now: float) -> None:
        """TCP ping `seq` got no ack in time; the probe's end decides as without it."""
        self._count("tcp_ping_failures")

    def answer_tcp_ping(self, data: bytes) -> bytes:
        """The plain reply (an ack packet) to a plain TCP ping packet from a peer.

        Raises `RemoteProtocolError` when it is not exactly one ping for us.
        """
        messages = codec.decode_packet(data, max_bytes=65507)
        if len(messages) != 1 or not isinstance(messages[0], Ping):
            raise RemoteProtocolError("a TCP ping stream must carry exactly one ping")
        ping = messages[0]
        if ping.target != self.name:
            self._count("ping_misdirected")
            raise RemoteProtocolError(f"TCP ping for {ping.target!r} reached {self.name!r}")
        return codec.encode_packet([codec.encode_message(Ack(ping.seq))])

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        if self._leaving:
            # A leaving node only finishes spreading its leave notice.
            if now >= self._next_gossip_s:
                self._gossip_round(now)
                self._next_gossip_s = now + cfg.gossip_interval_s
            return
        for seq in [s for s, r in self._relays.items() if r.deadline_s <= now]:
            relay = self._relays.pop(seq)
            if relay.want_nack:
                self._send(relay.requester, [Nack(relay.requester_seq)])
        probe = self._probe
        if probe is not None and not probe.indirect_sent and now >= probe.indirect_at_s:
            self._send_indirect_probes(probe)
        if probe is not None and now >= probe.end_at_s:
            self._finish_failed_probe(probe, now)
        if now >= self._next_probe_s:
            self._start_probe(now)
        for name in [n for n, s in self._suspicions.items() if s.deadline() <= now]:
            suspicion = self._suspicions.pop(name)
            slot = self._lookup(name)
            if slot is not None and self._state[slot] == _SUSPECT:
                self._apply_dead(Dead(suspicion.incarnation, name, self.name), now)
        if now >= self._next_gossip_s:
            self._gossip_round(now)
            self._next_gossip_s = now + cfg.gossip_interval_s
        if now >= self._next_push_pull_s:
            peer = self._random_members(1, states=(_ALIVE,))
            if peer:
                self._push_pulls.append((self._addr_of(peer[0]), False))
            interval_s = push_pull_interval_s(cfg.push_pull_interval_s, self.num_alive())
            self._next_push_pull_s = now + interval_s
        while self._quick_push_pulls_s and now >= self._quick_push_pulls_s[0]:
            self._quick_push_pulls_s.pop(0)
            peer = self._random_members(1, states=(_ALIVE,))
            if peer:
                self._push_pulls.append((self._addr_of(peer[0]), False))
        if now >= self._next_reconnect_s and not self._n_others_down:
            # No one failed: nothing to offer (the scans below would find no one
            # and draw no random number).
            self._next_reconnect_s = now + cfg.reconnect_interval_s
        elif now >= self._next_reconnect_s:
            failed = self._random_members(1, states=(_DEAD,))
            # serf's odds, failed / alive: the cluster as a whole tries each
            # failed member about once an interval. Without them every member
            # did, so a returning node of a 1000-node cluster took 100 full
            # state exchanges a second. A partition (failed ~ alive) still
            # reconnects every interval.
            n_failed = self._state.count(_DEAD)  # non-members are _ABSENT
            if failed and self._rng.random() < n_failed / max(self.num_alive(), 1):
                self._push_pulls.append((self._addr_of(failed[0]), False))
            self._next_reconnect_s = now + cfg.reconnect_interval_s
        if now >= self._next_reap_s:
            self._reap(now)
            self._next_reap_s = now + _REAP_CHECK_INTERVAL_S

    # ------------------------------------------------------------------ dispatch

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _dispatch(self, msg: PacketMessage, src: Addr, now: float) -> None:
        if self._leaving and not isinstance(msg, Ping | Ack):
            return
        match msg:
            case Ping():
                if msg.target != self.name:
                    self._count("ping_misdirected")
                    raise RemoteProtocolError(
                        f"ping for {msg.target!r} reached {self.name!r} from {src}"
                    )
                self._send(src, [Ack(msg.seq)])
            case IndirectPing():
                if len(self._relays) >= _MAX_RELAYS:
                    self._count("indirect_ping_dropped")
                    return
                seq = self._next_seq()
                self._relays[seq] = _Relay(
                    requester=src,
                    requester_seq=msg.seq,
                    deadline_s=now + self.config.probe_timeout_s,
                    want_nack=msg.want_nack,
                )
                self._send(msg.target_addr, [Ping(seq, msg.target, self.name, self.local_addr)])
            case Ack():
                relay = self._relays.pop(msg.seq, None)
                if relay is not None:
                    self._send(relay.requester, [Ack(relay.requester_seq)])
                elif self._probe is not None and msg.seq == self._probe.seq:
                    self._probe = None
                    self._awareness.apply(-1)
            case Nack():
                if self._probe is not None and msg.seq == self._probe.seq:
                    self._probe.nacks += 1
            case Alive():
                self._apply_alive(msg, now)
            case Suspect():
                self._apply_suspect(msg, now)
            case Dead():
                self._apply_dead(msg, now)
            case User():
                self._events.append(UserMessage(msg.payload, src))
            case _:
                assert_never(msg)

    # ------------------------------------------------------------------ state rules

    def _apply_alive(self, msg: Alive, now: float) -> None:
        if len(msg.meta) > self.config.meta_max_bytes:
            raise RemoteProtocolError(f"alive for {msg.node!r} carries oversized metadata")
        if msg.node == self.name:
            if self._leaving:
                return
            me = self._self_slot
            mine = self._get_inc(me)
            if msg.incarnation > mine or (
                msg.incarnation == mine and (msg.addr, msg.meta) != self._addr_meta(me)
            ):
                self._refute(msg.incarnation)
            return
        s = self._lookup(msg.node)
        if s is None:
            s = self._add_member(msg.node, msg.addr, msg.meta, msg.incarnation, _ALIVE, now)
            self._n_live += 1
            self._add_to_probe_order(s)
            self._broadcast(msg, key=msg.node)
            self._events.append(MemberJoined(self._snapshot(s)))
            return
        if msg.incarnation <= self._get_inc(s):
            return
        was = self._state[s]
        changed = self._addr_meta(s) != (msg.addr, msg.meta)
        self._set_inc(s, msg.incarnation)
        self._rec[s] = _record(msg.node, msg.addr, msg.meta, msg.incarnation, State.ALIVE)
        self._suspicions.pop(msg.node, None)
        self._set_state(s, _ALIVE, now)
        self._broadcast(msg, key=msg.node)
        if was in _DOWN:
            self._add_to_probe_order(s)
            self._events.append(MemberJoined(self._snapshot(s)))
        elif changed or was == _SUSPECT:
            self._events.append(MemberUpdated(self._snapshot(s)))

    def _accused_slot(self, msg: Suspect | Dead) -> int | None:
        """The slot of the member `msg` accuses; None: it is us (refuted), unknown, or stale."""
        if msg.node == self.name:
            if not self._leaving:
                self._accused = True
                if msg.incarnation >= self.incarnation:
                    self._refute(msg.incarnation)
            return None
        s = self._lookup(msg.node)
        if s is None or msg.incarnation < self._get_inc(s):
            return None
        return s

    def _apply_suspect(self, msg: Suspect, now: float) -> None:
        s = self._accused_slot(msg)
        if s is None:
            return
        state = self._state[s]
        if state == _SUSPECT:
            suspicion = self._suspicions.get(msg.node)
            if suspicion is not None and suspicion.confirm(msg.sender):
                self._broadcast(msg, key=msg.node)
            return
        if state != _ALIVE:
            return
        self._set_inc(s, msg.incarnation)
        self._set_state(s, _SUSPECT, now)
        # The catalog counts a suspect node's services as critical at once.
        self._events.append(MemberUpdated(self._snapshot(s)))
        n = self.num_alive()
        cfg = self.config
        min_s = suspicion_timeout_s(cfg.suspicion_mult, n, cfg.probe_interval_s)
        self._suspicions[msg.node] = Suspicion(
            first_accuser=msg.sender,
            k=suspicion_expected_confirmations(cfg.suspicion_mult, n),
            min_s=min_s,
            max_s=cfg.suspicion_max_timeout_mult * min_s,
            now=now,
            incarnation=msg.incarnation,
        )
        self._broadcast(msg, key=msg.node)

    def _apply_dead(self, msg: Dead, now: float) -> None:
        s = self._accused_slot(msg)
        if s is None:
            return
        state = self._state[s]
        if state in _DOWN:
            # A leave notice still upgrades a failure to left (force-leave).
            if state == _DEAD and msg.sender == msg.node:
                self._set_state(s, _LEFT, now)
                self._broadcast(msg, key=msg.node)
                self._events.append(MemberLeft(self._snapshot(s)))
            return
        self._set_inc(s, msg.incarnation)
        self._suspicions.pop(msg.node, None)
        left = msg.sender == msg.node
        self._set_state(s, _LEFT if left else _DEAD, now)
        self._broadcast(msg, key=msg.node)
        member = self._snapshot(s)
        self._events.append(MemberLeft(member) if left else MemberFailed(member))

    def _refute(self, accused_incarnation: int) -> None:
        if accused_incarnation >= _INCARNATION_MAX:
            # Beating it would not fit the wire (the encoder raised
            # LocalProtocolError, which killed the driver). Nothing can refute
            # it: reject it as the hostile or corrupt input it is.
            raise RemoteProtocolError(
                f"claim about {self.name!r} at incarnation {accused_incarnation} cannot be refuted"
            )
        # Lifeguard (memberlist's refute): any accusation, suspect, dead or a
        # conflicting alive, hints that our own health is poor.
        self._awareness.apply(1)
        self._set_inc(self._self_slot, max(self.incarnation, accused_incarnation) + 1)
        self._count("refutations")
        self._broadcast_self_alive()

    def _broadcast_self_alive(self) -> None:
        addr, meta = self._addr_meta(self._self_slot)
        self._broadcast(Alive(self.incarnation, self.name, addr, meta), key=self.name)

    def _set_state(self, slot: int, state: int, now: float) -> None:
        """The one place a member's state changes, so the live count stays exact."""
        old = self._state[slot]
        if old != state:
            live_change = (state in _LIVE) - (old in _LIVE)
            self._n_live += live_change
            if slot != self._self_slot:
                self._n_others_down -= live_change
            self._state[slot] = state
            self._change_s[slot] = now

    def _reap(self, now: float) -> None:
        if not self._n_others_down:
            return
        cutoff = now - self.config.dead_reap_s
        state, change_s, me = self._state, self._change_s, self._self_slot
        reaped = [s for s in self._order if state[s] in _DOWN and change_s[s] <= cutoff and s != me]
        if not reaped:
            return
        for s in reaped:
            name = self._names.name(s)
            state[s] = _ABSENT
            self._rec[s] = None
            self._set_inc(s, 0)
            self._n_others_down -= 1
            self._events.append(MemberReaped(name))
        gone = set(reaped)
        self._order = array("I", [s for s in self._order if s not in gone])

    # ------------------------------------------------------------------ probing

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % _SEQ_MODULUS
        return self._seq

    def _add_to_probe_order(self, slot: int) -> None:
        # A member that died and came back within one round is still queued:
        # adding it again let a flapping member (or forged Dead/Alive pairs)
        # grow the round without bound and starve everyone else of probes.
        if self._in_probe[slot]:
            return
        self._in_probe[slot] = 1
        # Put it at a random place among those not yet probed this round, so
        # it is probed within the round; the member there moves to the end
        # (memberlist's swap), which is O(1) where list.insert was O(N).
        order = self._probe_order
        order.append(slot)
        i = self._rng.randint(min(self._probe_index, len(order) - 1), len(order) - 1)
        order[i], order[-1] = order[-1], order[i]

    def _new_probe_round(self) -> None:
        """Every live member but us, shuffled (a reaped one in the last round is let go)."""
        state, in_probe, me = self._state, self._in_probe, self._self_slot
        targets = [s for s in self._order if s != me and state[s] in _LIVE]
        self._rng.shuffle(targets)
        for s in self._probe_order:
            in_probe[s] = 0
        for s in targets:
            in_probe[s] = 1
        self._probe_order = array("I", targets)
        self._probe_index = 0

    def _next_probe_target(self) -> int | None:
        for _ in range(len(self._probe_order) + 1):
            if self._probe_index >= len(self._probe_order):
                self._new_probe_round()
                if not self._probe_order:
                    return None
            slot = self._probe_order[self._probe_index]
            self._probe_index += 1
            if self._state[slot] in _LIVE:
                return slot
        return None

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        interval_s = self._awareness.scale(cfg.probe_interval_s)
        self._next_probe_s = now + interval_s
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        name = self._names.name(target)
        self._probe = _Probe(
            target=name,
            seq=seq,
            indirect_at_s=now + self._awareness.scale(cfg.probe_timeout_s),
            end_at_s=now + interval_s,
        )
        ping: list[PacketMessage] = [Ping(seq, name, self.name, self.local_addr)]
        if self._state[target] == _SUSPECT:
            # Lifeguard's buddy system (memberlist's probeNode): tell a suspect
            # itself, so it refutes even when the suspicion's gossip missed it.
            ping.append(Suspect(self._get_inc(target), name, self.name))
        self._send(self._addr_of(target), ping)

    def _send_indirect_probes(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self._lookup(probe.target)
        if target is None:
            return
        helpers = self._random_members(
            self.config.indirect_checks, states=(_ALIVE,), exclude=target
        )
        msg = IndirectPing(
            probe.seq,
            probe.target,
            self._addr_of(target),
            self.name,
            self.local_addr,
            want_nack=True,
        )
        for helper in helpers:
            self._send(self._addr_of(helper), [msg])
        probe.expected_nacks = len(helpers)
        if self.config.tcp_fallback_probe:
            ping = Ping(probe.seq, probe.target, self.name, self.local_addr)
            self._tcp_ping = TcpPing(
                self._addr_of(target),
                probe.seq,
                codec.encode_packet([codec.encode_message(ping)]),
                probe.end_at_s,
            )

    def _finish_failed_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        if probe.expected_nacks > 0:
            # Only missing nacks count (memberlist): duplicated or forged nacks
            # beyond the expected ones must not turn a failure into a reward.
            self._awareness.apply(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._awareness.apply(1)
        s = self._lookup(probe.target)
        if probe.tcp_answered:
            # UDP is blocked or lossy between us, yet the member is up: a
            # network problem to report, not a failure (memberlist #37).
            self._count("tcp_fallback_saves")
            return
        if s is not None and self._state[s] in _LIVE:
            # Already suspect: our failed probe is an independent confirmation,
            # which is what shortens the Lifeguard timer.
            self._count("probe_failures")
            self._apply_suspect(Suspect(self._get_inc(s), probe.target, self.name), now)

    def _random_members(self, k: int, *, states: tuple[int, ...], exclude: int = -1) -> list[int]:
        """Slots of up to k random members in `states`, us and `exclude` aside."""
        state, me = self._state, self._self_slot
        candidates = [s for s in self._order if s != me and s != exclude and state[s] in states]
        if len(candidates) <= k:
            self._rng.shuffle(candidates)
            return candidates
        return self._rng.sample(candidates, k)

    # ------------------------------------------------------------------ sending

    def _broadcast(
        self, msg: PacketMessage, *, key: str, on_done: Callable[[], None] | None = None
    ) -> None:
        self._queue.push(codec.encode_message(msg), key=key, on_done=on_done)
        if len(self._queue) > _MAX_QUEUED_BROADCASTS + _PRUNE_SLACK:
            self._queue.prune(_MAX_QUEUED_BROADCASTS)

    def _budget_bytes(self) -> int:
        return self.config.udp_mtu_bytes - self.config.envelope_overhead_bytes

    def _send(self, addr: Addr, messages: list[PacketMessage]) -> None:
        """Send `messages` to `addr`, filling the rest of the packet with updates."""
        encoded = [codec.encode_message(m) for m in messages]
        used = sum(len(e) for e in encoded) + codec.packet_overhead_bytes(len(encoded) + 64)
        limit = retransmit_limit(self.config.retransmit_mult, max(self.num_alive(), 1))
        encoded += self._queue.pop_batch(self._budget_bytes() - used, 0, limit)
        self._out.append((addr, codec.encode_packet(encoded)))

    def _gossip_round(self, now: float) -> None:
        if not len(self._queue):
            return
        # Members that just died still hear gossip for a while, so they can
        # learn of it and refute (memberlist's GossipToTheDeadTime). They are
        # drawn alongside the live ones, as memberlist does: picking them only
        # when fewer than gossip_nodes were alive meant never, beyond 4 nodes.
        recent_dead_s = now - self.config.gossip_to_dead_s
        state, change_s, me = self._state, self._change_s, self._self_slot
        candidates = [
            s
            for s in self._order
            if s != me
            and (state[s] in _LIVE or (state[s] == _DEAD and change_s[s] > recent_dead_s))
        ]
        k = self.config.gossip_nodes
        if len(candidates) <= k:
            self._rng.shuffle(candidates)
            targets = candidates
        else:
            targets = self._rng.sample(candidates, k)
        limit = retransmit_limit(self.config.retransmit_mult, max(self.num_alive(), 1))
        overhead = codec.packet_overhead_bytes(64)
        for target in targets:
            batch = self._queue.pop_batch(self._budget_bytes() - overhead, 0, limit)
            if not batch:
                return
            self._out.append((self._addr_of(target), codec.encode_packet(batch)))
