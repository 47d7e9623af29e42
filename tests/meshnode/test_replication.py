"""The replication driver (meshnode/store/replication.py) with real drivers over a memory network.

Three nodes, each a `Membership` + `GossipDriver` + `Replicator` with its own
SQLite file, under trio's autojump clock: broadcasts, the notice + TCP fetch of
big entries, anti-entropy after a partition, restarts from SQLite, and garbage.
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode.gossip import store_codec
from meshnode.gossip.driver import GossipDriver
from meshnode.gossip.events import Event, UserMessage
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Addr, State
from meshnode.gossip.store import Entry, EntryTooLarge, Store, Version
from meshnode.gossip.testing import MemoryNetwork
from meshnode.gossip.wire import Wire
from meshnode.store.batch import Write
from meshnode.store.persist import Persistence
from meshnode.store.replication import (
    CHANNEL_STORE_ENTRY,
    CHANNEL_STORE_NOTICE,
    STREAM_STORE,
    ReplicationConfig,
    Replicator,
    _Steps,
)

KEY = bytes(range(32))
SEED = 7
CONFIG = ReplicationConfig(anti_entropy_interval_s=5.0, exchange_timeout_s=5.0)


def addr(i: int) -> Addr:
    return Addr(f"10.1.0.{i}", 7946)


class Node:
    def __init__(
        self, net: MemoryNetwork, i: int, db: Path, wall: Callable[[], float], life: int
    ) -> None:
        self.name = f"n{i}"
        self.core = Membership(
            name=self.name, addr=addr(i), rng=random.Random(SEED + i), now=trio.current_time()
        )
        self.wire = Wire(Keyring([KEY]), nonce_source=random.Random(f"{SEED} {i} {life}").randbytes)
        self.driver = GossipDriver(
            self.core, self.wire, net.transport(addr(i)), on_event=self._on_event
        )
        self.persist = Persistence.open(db)
        self.rep = Replicator(
            Store(self.name),
            self.persist,
            self.core,
            self.driver,
            self.wire,
            self.driver.transport,
            rng=random.Random(SEED * 13 + i),
            config=CONFIG,
            wall_clock=wall,
        )
        self.rep.load()
        self.scope = trio.CancelScope()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, UserMessage):
            self.rep.on_user(event.payload, event.source)
        else:
            self.rep.on_member_event(event)  # as the agent does

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.driver.run)
                await nursery.start(self.rep.run)
                task_status.started()

    def value(self, key: str) -> bytes | None:
        entry = self.rep.store.get("kv", key)
        return None if entry is None else entry.value


class Cluster:
    def __init__(self, net: MemoryNetwork, nursery: trio.Nursery, base: Path) -> None:
        self.net, self.nursery, self.base = net, nursery, base
        self.nodes: dict[int, Node] = {}
        self.lives = 0  # a restarted node must not reuse its nonces (replay protection)
        self.wall = 1_700_000_000.0

    async def start(self, i: int, join: bool = True) -> Node:
        self.lives += 1
        node = Node(self.net, i, self.base / f"n{i}.db", lambda: self.wall, self.lives)
        await self.nursery.start(node.run)
        self.nodes[i] = node
        if join and i != 1:
            assert await node.driver.join([addr(1)]) == 1
            node.rep.reconcile_after_join()  # as the agent's _join does
        return node

    def stop(self, i: int) -> Node:
        node = self.nodes.pop(i)
        node.scope.cancel()
        self.net.kill(addr(i))
        node.persist.close()
        return node


@asynccontextmanager
async def cluster(tmp_path: Path, n: int = 3) -> AsyncIterator[Cluster]:
    net = MemoryNetwork(rng=random.Random(SEED), latency_s=0.002)
    async with trio.open_nursery() as nursery:
        c = Cluster(net, nursery, tmp_path)
        for i in range(1, n + 1):
            await c.start(i)
        with trio.fail_after(30):
            while not all(
                sum(m.state == State.ALIVE for m in node.core.members()) == n
                for node in c.nodes.values()
            ):
                await trio.sleep(0.1)
        yield c
        for node in c.nodes.values():
            node.persist.close()
        nursery.cancel_scope.cancel()


async def eventually(pred: Callable[[], bool], timeout_s: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.05)
    return trio.current_time() - start


def counter(node: Node, name: str) -> int:
    return node.driver.counters.values.get(f"store.{name}", 0)


async def test_put_and_delete_replicate_by_broadcast(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as c:
        c.nodes[1].rep.put("kv", "a", b"1")
        took = await eventually(lambda: c.nodes[3].value("a") == b"1", 3.0)
        assert took < 2.0  # gossip rounds, not the 5 s anti-entropy interval
        assert counter(c.nodes[1], "broadcast.entry") == 1
        c.nodes[2].rep.delete("kv", "a")
        await eventually(lambda: all(n.value("a") is None for n in c.nodes.values()), 3.0)
        # The tombstone reached SQLite everywhere.
        entries, _ = c.nodes[3].persist.load_store()
        assert [(e.key, e.tombstone) for e in entries] == [("a", True)]


async def test_write_many_is_durable_and_replicated_and_stops_at_a_refusal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A registration's entries are one batch: on disk together, one index, sent to all."""
    async with cluster(tmp_path) as c:
        rep = c.nodes[1].rep
        rep.put("kv", "stale", b"x")
        written = rep.write_many(
            [
                Write.put("kv", "svc", b"s"),
                Write.put("kv", "chk", b"c"),
                Write.delete("kv", "stale"),
            ]
        )
        assert [(e.key, e.tombstone) for e in written] == [
            ("svc", False),
            ("chk", False),
            ("stale", True),
        ]
        # Durable on return: another connection to the file sees the whole batch.
        with Persistence.open(tmp_path / "n1.db") as reader:
            on_disk = {e.key: e.tombstone for e in reader.load_store()[0]}
        assert on_disk == {"svc": False, "chk": False, "stale": True}
        # One change: every entry of the batch has the same ModifyIndex.
        assert len({rep.entry_indexes("kv", k)[1] for k in ("svc", "chk", "stale")}) == 1
        await eventually(
            lambda: c.nodes[3].value("chk") == b"c" and c.nodes[3].value("stale") is None, 3.0
        )

        # A refused write stops the batch after the writes before it were committed.
        too_big = b"v" * (rep.store.limits.value_max_bytes + 1)
        with pytest.raises(EntryTooLarge):
            rep.write_many(
                [
                    Write.put("kv", "first", b"1"),
                    Write.put("kv", "big", too_big),
                    Write.put("kv", "after", b"3"),
                ]
            )
        assert c.nodes[1].value("first") == b"1"
        assert c.nodes[1].value("after") is None
        with Persistence.open(tmp_path / "n1.db") as reader:
            keys = {e.key for e in reader.load_store()[0]}
        assert "first" in keys and "big" not in keys and "after" not in keys


async def test_big_value_goes_as_notice_and_tcp_fetch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as c:
        big = random.Random(1).randbytes(200 * 1024)
        c.nodes[1].rep.put("kv", "big", big)
        assert counter(c.nodes[1], "broadcast.notice") == 1
        took = await eventually(lambda: c.nodes[3].value("big") == big, 3.0)
        assert took < 2.0
        assert counter(c.nodes[3], "fetch.ok") + counter(c.nodes[3], "anti_entropy.done") >= 1


async def test_partitioned_node_catches_up_by_anti_entropy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as c:
        cut = addr(3)
        c.net.blocked = lambda src, dst: cut in (src, dst)
        for k in range(20):
            c.nodes[1].rep.put("kv", f"k{k}", b"v%d" % k)
        c.nodes[2].rep.put("kv", "big", bytes(100_000))
        # Long enough for every broadcast's transmit limit to run out.
        await trio.sleep(30)
        assert c.nodes[3].value("k0") is None
        c.net.blocked = lambda src, dst: False
        await eventually(
            lambda: (
                all(c.nodes[3].value(f"k{k}") == b"v%d" % k for k in range(20))
                and c.nodes[3].value("big") == bytes(100_000)
            ),
            3 * CONFIG.anti_entropy_interval_s,
        )
        assert counter(c.nodes[3], "anti_entropy.done") >= 1
        assert c.nodes[3].rep.store.digest() == c.nodes[1].rep.store.digest()


async def test_restart_loads_entries_clock_and_reconciles(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as c:
        e = c.nodes[2].rep.put("kv", "x", b"before")
        c.stop(2)
        c.nodes[1].rep.put("kv", "y", b"while away")
        n2 = await c.start(2)
        assert n2.value("x") == b"before"
        assert n2.rep.store.clock >= e.version.lamport
        assert n2.rep.entry_indexes("kv", "x") == (2, 2)
        await eventually(lambda: n2.value("y") == b"while away", 3 * CONFIG.anti_entropy_interval_s)
        # A new local write beats what was written before the restart.
        assert n2.rep.put("kv", "x", b"after").version > e.version


async def test_blocking_wait_wakes_on_change_and_times_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, n=2) as c:
        rep = c.nodes[2].rep
        start = rep.tracker.topic_index("kv")
        assert await rep.wait_for_change("kv", start, 1.0) == start  # nothing: times out
        woke: list[int] = []

        async def waiter() -> None:
            woke.append(await rep.wait_for_change("kv", start, 60.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1.0)
            c.nodes[1].rep.put("kv", "w", b"1")
        assert woke and woke[0] > start
        # An index from before a restart (above ours) answers at once, not after the wait.
        before = trio.current_time()
        assert await rep.wait_for_change("kv", rep.tracker.index + 100, 60.0) == woke[0]
        assert trio.current_time() == before


async def test_garbage_on_store_channels_is_dropped_and_counted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, n=2) as c:
        node = c.nodes[1]
        src = addr(2)
        bad_entry = Entry("kv", "k", b"v", Version(0, "n2"))  # Lamport 0 is invalid
        payloads = [
            bytes([CHANNEL_STORE_ENTRY]),
            bytes([CHANNEL_STORE_ENTRY]) + b"\xff\x00garbage",
            bytes([CHANNEL_STORE_ENTRY]) + store_codec.encode_digest(node.rep.store.digest()),
            bytes([CHANNEL_STORE_NOTICE]) + b"\x83\x01\x02",
            bytes([CHANNEL_STORE_NOTICE]) + b"not cbor \xff",
        ]
        for payload in payloads:
            assert node.rep.on_user(payload, src) is True
        assert counter(node, "rejected") == len(payloads)
        assert node.rep.on_user(b"\x01keyring", src) is False  # another channel: not ours
        # An invalid entry inside a well-formed message is dropped by merge.
        assert node.rep.merge([bad_entry], src) == 0
        assert counter(node, "rejected") == len(payloads) + 1
        # A garbage store stream on the gossip port: rejected, the node serves on.
        stream = await c.nodes[2].driver.transport.connect_stream(addr(1))
        await stream.send_all(bytes([STREAM_STORE]) + b"\x00\x00\x00\x05hello")
        await trio.sleep(1.0)
        await stream.aclose()
        assert counter(node, "rejected") == len(payloads) + 2
        assert len(node.rep.store) == 0
        c.nodes[2].rep.put("kv", "still", b"works")
        await eventually(lambda: node.value("still") == b"works", 3.0)


async def test_tombstones_are_collected_from_memory_and_sqlite(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, n=2) as c:
        rep = c.nodes[1].rep
        rep.put("kv", "gone", b"x")
        rep.delete("kv", "gone")
        assert rep.collect_tombstones() == 0
        c.wall += rep.store.limits.tombstone_max_age_s + 1
        assert rep.collect_tombstones() == 1
        assert c.nodes[1].persist.load_store()[0] == []
        assert rep.store.get("kv", "gone", tombstones=True) is None


async def test_periodic_anti_entropy_repairs_a_missed_broadcast(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as c:
        # Written to n1's replica without a broadcast: only the periodic round can carry it.
        c.nodes[1].rep.store.put("kv", "quiet", b"q")
        took = await eventually(
            lambda: all(n.value("quiet") == b"q" for n in c.nodes.values()),
            4 * CONFIG.anti_entropy_interval_s,
        )
        assert took > 0.5
        assert [e.key for e in c.nodes[3].persist.load_store()[0]] == ["quiet"]


async def test_a_store_step_larger_than_its_byte_cap_is_refused() -> None:
    """A peer with the key still cannot make us buffer an unbounded step."""
    from meshnode.store.replication import StoreMessageError, _Steps

    wire = Wire(None)
    client, server = trio.testing.memory_stream_pair()
    entry = Entry("kv", "k", b"x" * 1000, Version(1, "n1"))
    (message,) = store_codec.encode_entries([entry])
    frames = [wire.frame(struct.pack(">I", 10))] + [wire.frame(message)] * 10
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"".join(frames))
        steps = _Steps(server, wire, max_step_bytes=5 * len(message))
        with pytest.raises(StoreMessageError, match="exceeds"):
            await steps.read()


async def test_a_write_reaches_thirty_nodes_by_relay_well_before_anti_entropy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The writer alone gossips a change ~6 times to 3 random members: it
    # cannot reach 30 nodes by itself. Relays on first receipt must.
    async with cluster(tmp_path, n=30) as c:
        c.nodes[7].rep.put("kv", "flag", b"on")
        took = await eventually(
            lambda: all(node.value("flag") == b"on" for node in c.nodes.values()),
            CONFIG.anti_entropy_interval_s,
        )
        assert took < 2.0, took
        relayed = sum(n.driver.counters.values.get("store.relayed", 0) for n in c.nodes.values())
        assert relayed == 29  # each other node relays it once, not on every copy


async def test_a_deny_is_pushed_over_tcp_when_every_gossip_packet_is_lost(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, n=5) as c:
        c.net.loss = 1.0  # every datagram: the broadcast and every relay
        writer = c.nodes[1]
        writer.rep.put("intention", "web/db", b"deny")
        writer.rep.put("kv", "plain", b"x")  # not a security kind: gossip only
        await trio.sleep(1.0)
        others = [c.nodes[i] for i in range(2, 6)]
        reached = [n for n in others if n.rep.store.get("intention", "web/db") is not None]
        assert len(reached) == min(CONFIG.push_peers, 4) == 4
        assert all(n.value("plain") is None for n in others)
        assert counter(writer, "push.ok") == 4
        assert all(counter(n, "push.received") == 1 for n in others)
        # Pushed entries are persisted like any other merge.
        assert [e.key for e in reached[0].persist.load_store()[0]] == ["web/db"]


async def test_denies_reach_every_node_within_two_seconds_at_ten_percent_loss(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Gossip alone: about 1 deny in 30 misses a host for more than 2 s (here,
    # 5 of 150, the worst 17 s: only anti-entropy finds it).
    async with cluster(tmp_path, n=7) as c:
        c.net.loss = 0.1
        took_s: list[float] = []
        for k in range(60):
            key = f"web/db{k}"
            c.nodes[1 + k % 7].rep.put("intention", key, b"deny")

            def everywhere(key: str = key) -> bool:
                return all(n.rep.store.get("intention", key) is not None for n in c.nodes.values())

            took_s.append(await eventually(everywhere, 2.0))
            await trio.sleep(1.0)
        assert max(took_s) < 2.0, took_s


async def test_a_restarted_node_reconciles_with_several_peers_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Writes acknowledged just before a kill -9 (their broadcasts died with it) spread at once."""
    async with cluster(tmp_path, n=5) as c:
        cut = addr(2)
        c.net.blocked = lambda src, dst: cut in (src, dst)
        for k in range(200):
            c.nodes[2].rep.put("kv", f"acked/{k}", b"v%d" % k)
        c.stop(2)  # no time passed: the others never saw it fail
        c.net.blocked = lambda src, dst: False
        n2 = await c.start(2)
        others = [c.nodes[i] for i in (1, 3, 4, 5)]
        await eventually(
            lambda: all(n.value(f"acked/{k}") == b"v%d" % k for n in others for k in range(200)),
            1.0,  # the periodic round is 2.5-7.5 s away
        )
        assert counter(n2, "anti_entropy.restart") == 4


async def test_a_push_is_merged_relayed_and_acknowledged_and_a_bad_one_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def push(entries: list[Entry]) -> list[store_codec.StoreMessage]:
        stream = await c.nodes[2].driver.transport.connect_stream(addr(1))
        async with stream:
            steps = _Steps(stream, c.nodes[2].wire)
            await steps.send(store_codec.encode_entries(entries), prefix=bytes([STREAM_STORE]))
            return await steps.read()

    async with cluster(tmp_path) as c:
        n1 = c.nodes[1]
        bad = Entry("intention", "web/cache", b"deny", Version(0, "n2"))  # Lamport 0 is invalid
        with pytest.raises(trio.BrokenResourceError):
            await push([Entry("intention", "web/ok", b"deny", Version(40, "n2")), bad])
        assert counter(n1, "rejected") == 1 and len(n1.rep.store) == 0
        good = Entry("intention", "web/db", b"deny", Version(50, "n2"))
        assert await push([good]) == []  # the acknowledgement: an empty step
        assert n1.rep.store.get("intention", "web/db") == good
        assert counter(n1, "push.received") == 1
        # n1 relays what was news to it by gossip: n3 had no push.
        await eventually(lambda: c.nodes[3].rep.store.get("intention", "web/db") == good, 2.0)
