"""How gossip bytes reach the network: a four-method interface and real sockets.

`Transport` is what the driver needs (memberlist's `transport.go`); the real
one speaks UDP for packets and TCP for push/pull streams on the same port,
and `testing.MemoryNetwork` provides a fake with loss and partitions.

UDP is driven through a non-blocking stdlib socket: sends never wait (a full
buffer drops the packet, as the network would), and receives drain the
socket in a loop and only wait on trio when it is empty.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from .messages import Addr

StreamHandler = Callable[[trio.abc.Stream, Addr], Awaitable[None]]
MAX_UDP_PACKET_BYTES = 65535
_PORT_ZERO_ATTEMPTS = 16


class Transport(Protocol):
    @property
    def local_addr(self) -> Addr: ...

    def send_packet(self, data: bytes, addr: Addr) -> bool:
        """Send without waiting; False when the packet was dropped locally."""
        ...

    async def recv_packet(self) -> tuple[bytes, Addr]: ...

    async def connect_stream(self, addr: Addr) -> trio.abc.Stream: ...

    async def serve_streams(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpTcpTransport:
    """Real sockets: UDP and TCP bound to the same address and port."""

    def __init__(
        self, bind: Addr, *, advertise: Addr | None = None, max_streams: int = 128
    ) -> None:
        # Push/pulls are rare (one per node per 30 s, plus joins); 128 at once
        # is a join storm of 128 nodes, far beyond normal and far below the
        # file-descriptor limit.
        self._max_streams = max_streams
        self.streams_refused = 0
        # Port 0 picks a free UDP port, whose TCP twin may be taken: try others.
        attempts = _PORT_ZERO_ATTEMPTS if bind.port == 0 else 1
        for attempt in range(attempts):
            self._udp = socket.socket(_family(bind.host), socket.SOCK_DGRAM)
            try:
                self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                self._udp.bind((bind.host, bind.port))
            except OSError:
                self._udp.close()
                raise
            port = self._udp.getsockname()[1]
            tcp = socket.socket(_family(bind.host), socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((bind.host, port))
                tcp.listen(128)
                break
            except OSError as exc:
                tcp.close()
                self._udp.close()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
        self._udp.setblocking(False)
        self.bind = Addr(bind.host, port)
        self._advertise = advertise or self.bind
        if self._advertise.port == 0:
            self._advertise = Addr(self._advertise.host, port)
        self._tcp = trio.socket.from_stdlib_socket(tcp)

    @property
    def local_addr(self) -> Addr:
        return self._advertise

    def send_packet(self, data: bytes, addr: Addr) -> bool:
        try:
            self._udp.sendto(data, (addr.host, addr.port))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # An unreachable, unroutable or wrong-family destination (a peer
            # may advertise anything) is the network's business, not a crash.
            # Only a closed socket is our own bug.
            if exc.errno == errno.EBADF:
                raise
            return False
        return True

    async def recv_packet(self) -> tuple[bytes, Addr]:
        while True:
            try:
                data, peer = self._udp.recvfrom(MAX_UDP_PACKET_BYTES)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_readable(self._udp)
                continue
            except ConnectionRefusedError:
                continue  # an ICMP error for an earlier send; not ours to handle
            # Yield so a flood on this socket cannot starve the other tasks.
            await trio.lowlevel.checkpoint()
            return data, Addr(peer[0], peer[1])

    async def connect_stream(self, addr: Addr) -> trio.abc.Stream:
        return await trio.open_tcp_stream(addr.host, addr.port)

    async def serve_streams(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = trio.SocketListener(self._tcp)
        slots = trio.Semaphore(self._max_streams)

        async def handle(stream: trio.SocketStream) -> None:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                # Full: shed the newcomer at once rather than let half-open
                # connections pile up file descriptors until the agent dies.
                self.streams_refused += 1
                await trio.aclose_forcefully(stream)
                return
            try:
                host, port = stream.socket.getpeername()[:2]
                await handler(stream, Addr(host, port))
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()
