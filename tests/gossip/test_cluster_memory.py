"""Whole clusters of real drivers over the in-memory network, in virtual time.

These run the same `GossipDriver` the agent runs, under trio's autojump
clock, so a minute of cluster life costs a fraction of a second.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from meshnode.gossip.driver import GossipDriver
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Addr, State
from meshnode.gossip.testing import MemoryNetwork
from meshnode.gossip.wire import Wire

KEY = bytes(range(32))
SEED = 20261122


def addr(i: int) -> Addr:
    return Addr(f"10.0.{i // 250}.{i % 250 + 1}", 7946)


class Cluster:
    def __init__(self, net: MemoryNetwork, nursery: trio.Nursery) -> None:
        self.net = net
        self.nursery = nursery
        self.drivers: dict[str, GossipDriver] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, i: int, seed: int) -> GossipDriver:
        name = f"n{i}"
        core = Membership(
            name=name, addr=addr(i), rng=random.Random(seed * 1000 + i), now=trio.current_time()
        )
        wire = Wire(Keyring([KEY]), nonce_source=random.Random(seed + i).randbytes)
        driver = GossipDriver(core, wire, self.net.transport(addr(i)))
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await driver.run(task_status=task_status)

        await self.nursery.start(run)
        self.drivers[name] = driver
        self.scopes[name] = scope
        return driver

    async def join_all(self) -> None:
        """Every node joins n0, one after the other; returns once all see all alive."""
        for name, d in self.drivers.items():
            if name != "n0":
                await d.join([addr(0)])
        await wait_until(lambda: self.converged(len(self.drivers)), timeout_s=30.0)

    def kill(self, name: str) -> None:
        self.scopes.pop(name).cancel()
        self.net.kill(self.drivers.pop(name).core.local_addr)

    def states_of(self, name: str) -> dict[str, State | None]:
        out: dict[str, State | None] = {}
        for observer, d in self.drivers.items():
            m = d.core.member(name)
            out[observer] = None if m is None else m.state
        return out

    def converged(self, n: int) -> bool:
        return all(
            sum(1 for m in d.core.members() if m.state == State.ALIVE) == n
            for d in self.drivers.values()
        )


@asynccontextmanager
async def cluster(n: int, *, seed: int = SEED, loss: float = 0.0) -> AsyncIterator[Cluster]:
    print(f"reproduce with seed={seed}")
    net = MemoryNetwork(rng=random.Random(seed), latency_s=0.002, loss=loss)
    async with trio.open_nursery() as nursery:
        c = Cluster(net, nursery)
        for i in range(n):
            await c.start(i, seed)
        yield c
        nursery.cancel_scope.cancel()


async def wait_until(pred: object, timeout_s: float, step_s: float = 0.1) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not pred():  # type: ignore[operator]
            await trio.sleep(step_s)
    return trio.current_time() - start


async def test_fifty_nodes_converge_after_joining_one_seed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster(50) as c:
        async with trio.open_nursery() as nursery:
            for name, d in c.drivers.items():
                if name != "n0":
                    nursery.start_soon(d.join, [addr(0)])
        took_s = await wait_until(lambda: c.converged(50), timeout_s=30.0)
        assert took_s < 5.0, f"join convergence took {took_s:.1f} s"


async def test_killed_node_is_declared_dead_by_all(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(20) as c:
        await c.join_all()
        c.kill("n7")
        took_s = await wait_until(
            lambda: all(s == State.DEAD for s in c.states_of("n7").values()), timeout_s=60.0
        )
        # memberlist's figures for 20 nodes: suspicion 4 * log10(20) = 5.2 s after detection.
        assert took_s < 15.0


async def test_slow_node_is_not_declared_dead(autojump_clock: trio.testing.MockClock) -> None:
    """Lifeguard: a node that loses 30 % of what it sends stays a member."""
    async with cluster(10) as c:
        await c.join_all()
        slow = addr(3)
        rng = random.Random(SEED)
        c.net.blocked = lambda src, dst: src == slow and rng.random() < 0.3
        deadline = trio.current_time() + 120.0
        while trio.current_time() < deadline:
            states = c.states_of("n3")
            assert State.DEAD not in states.values(), states
            await trio.sleep(0.5)


async def test_graceful_leave_is_seen_as_left(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(8) as c:
        await c.join_all()
        assert await c.drivers["n5"].leave(timeout_s=5.0)
        c.kill("n5")
        await wait_until(
            lambda: all(s == State.LEFT for s in c.states_of("n5").values()), timeout_s=10.0
        )


async def test_partition_heals(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(10) as c:
        await c.join_all()
        left = {addr(i) for i in range(5)}
        c.net.blocked = lambda src, dst: (src in left) != (dst in left)
        await wait_until(
            lambda: (
                all(s == State.DEAD for s in c.states_of("n9").values() if s != State.ALIVE)
                and c.states_of("n9")["n0"] == State.DEAD
            ),
            timeout_s=120.0,
        )
        c.net.blocked = lambda src, dst: False
        took_s = await wait_until(lambda: c.converged(10), timeout_s=120.0)
        assert took_s < 30.0, f"partition healed in {took_s:.1f} s"
