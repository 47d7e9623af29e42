"""An in-memory network for testing code that uses gossip (memberlist's mock transport).

It ships with the package so that every user of `meshnode.gossip` can test
against it under trio's autojump clock: packets take `latency_s`, are lost
with probability `loss` (from a seeded `random.Random`), and a `blocked`
predicate models partitions, one-way failures and killed nodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio
import trio.testing

from .messages import Addr
from .transport import StreamHandler

Packet = tuple[float, bytes, Addr]


class MemoryNetwork:
    def __init__(self, *, rng: random.Random, latency_s: float = 0.001, loss: float = 0.0) -> None:
        self.rng = rng
        self.latency_s = latency_s
        self.loss = loss
        # (src, dst) -> True drops the packet or refuses the connection.
        self.blocked: Callable[[Addr, Addr], bool] = lambda src, dst: False
        self._inboxes: dict[Addr, trio.MemorySendChannel[Packet]] = {}
        self._acceptors: dict[Addr, trio.MemorySendChannel[tuple[trio.abc.Stream, Addr]]] = {}
        self.packets_sent = 0
        self.packets_dropped = 0

    def transport(self, addr: Addr) -> MemoryTransport:
        return MemoryTransport(self, addr)

    def kill(self, addr: Addr) -> None:
        """The host disappears: its packets and connections go nowhere."""
        self._inboxes.pop(addr, None)
        self._acceptors.pop(addr, None)

    def _deliver(self, data: bytes, src: Addr, dst: Addr) -> None:
        self.packets_sent += 1
        inbox = self._inboxes.get(dst)
        if inbox is None or self.blocked(src, dst) or self.rng.random() < self.loss:
            self.packets_dropped += 1
            return
        try:
            inbox.send_nowait((trio.current_time() + self.latency_s, data, src))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.packets_dropped += 1


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, addr: Addr) -> None:
        self._net = network
        self._addr = addr
        send, self._inbox = trio.open_memory_channel[Packet](10_000)
        network._inboxes[addr] = send

    @property
    def local_addr(self) -> Addr:
        return self._addr

    def send_packet(self, data: bytes, addr: Addr) -> bool:
        if self._addr not in self._net._inboxes:
            return False  # killed
        self._net._deliver(data, self._addr, addr)
        return True

    async def recv_packet(self) -> tuple[bytes, Addr]:
        deliver_at_s, data, src = await self._inbox.receive()
        await trio.sleep_until(deliver_at_s)
        return data, src

    async def connect_stream(self, addr: Addr) -> trio.abc.Stream:
        await trio.sleep(self._net.latency_s)
        acceptor = self._net._acceptors.get(addr)
        if (
            acceptor is None
            or self._net.blocked(self._addr, addr)
            or (self._net.blocked(addr, self._addr))
        ):
            raise OSError(f"connection to {addr} refused (memory network)")
        client, server = trio.testing.memory_stream_pair()
        acceptor.send_nowait((server, self._addr))
        return client

    async def serve_streams(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[trio.abc.Stream, Addr]](100)
        self._net._acceptors[self._addr] = send
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for stream, peer in receive:
                nursery.start_soon(handler, stream, peer)
