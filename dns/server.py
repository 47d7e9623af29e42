"""The trio driver: UDP and TCP listeners around the `Responder`.

UDP is served from a non-blocking stdlib socket drained in a loop: trio is
awaited only when the socket is empty (and every `_UDP_BURST` packets, so
other tasks run during a flood). Awaiting trio's recvfrom per packet costs a
scheduler round trip per query: 0.22x dnsmasq's rate against 0.95x drained.
On Linux the loop takes a batch of datagrams per system call (udp_batch.py),
which is what brings it level with dnsmasq.

TCP carries RFC 1035 length-prefixed messages, several per connection, in
order. Connections are bounded in number, in all and per client address
(below the total, so held connections from one address cannot lock others
out; one more is closed at once); reading one query and writing one answer
each have a deadline, so a silent or slow client loses its slot.

Names outside the zones go to the recursors in order, each given
`recursor_timeout_s`, over the transport the client used; when none answers,
the client gets SERVFAIL.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
from functools import partial
from typing import Any, NamedTuple

import trio

from meshnode.addr import format_host_port

from ..per_client import PerClientLimit, client_address
from . import wire
from .catalog_view import DnsCatalog
from .config import DnsConfig
from .errors import DnsBindError
from .responder import DnsStats, Forward, Responder
from .udp_batch import SLOT_BYTES, UdpBatch, batching_available

__all__ = ["DnsBound", "DnsServer", "serve_dns"]

log = logging.getLogger("meshnode.dns")

# Yield to trio after this many packets in a row, so that a flood on UDP
# cannot starve TCP, recursions or the rest of the agent.
_UDP_BURST = 64
# A query is one question plus an OPT record: far below this; anything
# larger is not a query we would answer.
_MAX_QUERY_BYTES = 4096
_MAX_MESSAGE_BYTES = 0xFFFF
_UDP_RCVBUF_BYTES = 4 * 1024 * 1024  # absorbs bursts while the loop answers
_BIND_ATTEMPTS_PORT_0 = 8  # port 0: UDP's free port may be taken for TCP; retry
_LENGTH = struct.Struct("!H")

_Peer = tuple[Any, ...]  # a socket address as recvfrom returns it


class DnsBound(NamedTuple):
    """Where the server listens (the ports the OS chose when the config said 0)."""

    host: str
    udp_port: int
    tcp_port: int


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on the same port; DnsBindError with one line on failure."""
    attempts = _BIND_ATTEMPTS_PORT_0 if port == 0 else 1
    where = format_host_port(host, port)
    for attempt in range(attempts):
        udp = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF_BYTES)
            udp.bind((host, port))
        except OSError as exc:
            udp.close()
            raise DnsBindError(f"cannot listen for DNS on UDP {where}: {exc.strerror}") from None
        udp.setblocking(False)
        bound_port = udp.getsockname()[1]
        tcp = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, bound_port))
            tcp.listen(128)
        except OSError as exc:
            tcp.close()
            udp.close()
            if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                continue
            raise DnsBindError(
                f"cannot listen for DNS on TCP {format_host_port(host, bound_port)}: {exc.strerror}"
            ) from None
        return udp, tcp
    raise AssertionError("unreachable: the last attempt raises")


class DnsServer:
    """Serves one `DnsCatalog` on UDP and TCP; start with `nursery.start(server.run)`."""

    def __init__(
        self,
        catalog: DnsCatalog,
        config: DnsConfig,
        *,
        rng: random.Random | None = None,
        stats: DnsStats | None = None,
        udp_batching: bool = True,
    ) -> None:
        # udp_batching=False forces the per-packet loop (tests cover both).
        self._udp_batching = udp_batching and batching_available()
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self.responder = Responder(catalog, config, self._rng, stats)
        self.stats = self.responder.stats
        self._tcp_open = 0
        self._tcp_clients = PerClientLimit(config.tcp_connections_per_client_max)
        self._forwards = trio.Semaphore(config.forwards_max)

    async def run(
        self, *, task_status: trio.TaskStatus[DnsBound] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report the bound address through task_status, serve until cancelled."""
        udp, tcp = _bind(self.config.host, self.config.port)
        try:
            port = udp.getsockname()[1]
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
            async with trio.open_nursery() as nursery:
                if self._udp_batching:
                    nursery.start_soon(self._serve_udp_batched, udp, nursery)
                else:
                    nursery.start_soon(self._serve_udp, udp, nursery)
                nursery.start_soon(
                    partial(
                        trio.serve_listeners,
                        self._serve_tcp_client,
                        [listener],
                        handler_nursery=nursery,
                    )
                )
                log.info("DNS listening on %s", format_host_port(self.config.host, port))
                task_status.started(DnsBound(self.config.host, port, port))
        finally:
            udp.close()
            tcp.close()

    async def _serve_udp(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        respond, stats = self.responder.respond, self.stats
        handled = 0  # since the last trio checkpoint; added to the stats then
        while True:
            try:
                data, peer = recvfrom(_MAX_QUERY_BYTES)
            except (BlockingIOError, InterruptedError):
                stats.udp_queries += handled
                handled = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                continue  # an ICMP error for an earlier send: nothing to answer
            reply = respond(data, False)
            if type(reply) is bytes:
                try:
                    sendto(reply, peer)
                except OSError:
                    stats.udp_send_failures += 1  # full buffer or unreachable: the client retries
            elif reply is not None:
                assert isinstance(reply, Forward)
                self._start_forward(nursery, reply, sock, peer)
            handled += 1
            if handled >= _UDP_BURST:
                stats.udp_queries += handled
                handled = 0
                await trio.lowlevel.checkpoint()

    async def _serve_udp_batched(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        """The same loop as `_serve_udp`, a batch of datagrams per system call."""
        batch = UdpBatch(sock)
        respond, stats = self.responder.respond, self.stats
        since_checkpoint = 0
        while True:
            try:
                count = batch.receive()
            except OSError:
                continue  # an ICMP error for an earlier send: nothing to answer
            if count == 0:
                since_checkpoint = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            for slot in range(count):
                reply = respond(batch.datagram(slot), False)
                if type(reply) is bytes and len(reply) <= SLOT_BYTES:
                    batch.answer(slot, reply)
                    continue
                batch.skip(slot)
                if isinstance(reply, Forward):
                    self._start_forward(nursery, reply, sock, batch.peer(slot))
                elif reply is not None:
                    self._send(sock, reply, batch.peer(slot))
            stats.udp_send_failures += batch.send(count)
            stats.udp_queries += count
            since_checkpoint += count
            if since_checkpoint >= _UDP_BURST:
                since_checkpoint = 0
                await trio.lowlevel.checkpoint()

    def _send(self, sock: socket.socket, reply: bytes, peer: _Peer) -> None:
        try:
            sock.sendto(reply, peer)
        except OSError:
            self.stats.udp_send_failures += 1  # full buffer or unreachable: the client retries

    def _start_forward(
        self, nursery: trio.Nursery, forward: Forward, sock: socket.socket, peer: _Peer
    ) -> None:
        try:
            self._forwards.acquire_nowait()
        except trio.WouldBlock:
            self.responder.forward_failed()
            self._send(sock, forward.servfail, peer)
        else:
            nursery.start_soon(self._forward_udp, forward, sock, peer)

    async def _forward_udp(self, forward: Forward, sock: socket.socket, peer: _Peer) -> None:
        try:
            reply = await self._recurse(forward, tcp=False)
        finally:
            self._forwards.release()
        self._send(sock, reply, peer)

    async def _recurse(self, forward: Forward, *, tcp: bool) -> bytes:
        """Ask each recursor in turn; the first answer, with the client's ID, or SERVFAIL."""
        query = forward.query
        for host, port in self.config.recursor_addrs:
            upstream_id = self._rng.getrandbits(16)
            upstream_query = _LENGTH.pack(upstream_id) + query[2:]
            answer: bytes | None = None
            with trio.move_on_after(self.config.recursor_timeout_s):
                try:
                    if tcp:
                        answer = await _exchange_tcp(host, port, upstream_query)
                    else:
                        answer = await _exchange_udp(host, port, upstream_query)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.debug("DNS recursor %s failed: %s", format_host_port(host, port), exc)
            if (
                answer is not None
                and len(answer) >= wire.HEADER_BYTES
                and answer[:2] == upstream_query[:2]
                and answer[2] & 0x80
            ):
                return query[:2] + answer[2:]
        self.responder.forward_failed()
        return forward.servfail

    async def _serve_tcp_client(self, stream: trio.SocketStream) -> None:
        address = client_address(stream.socket)
        if self._tcp_open >= self.config.tcp_connections_max:
            admitted = False
        else:
            admitted = self._tcp_clients.admit(address)
        if not admitted:
            self.stats.tcp_refused += 1
            await trio.aclose_forcefully(stream)
            return
        self._tcp_open += 1
        try:
            await self._tcp_session(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to answer
        finally:
            self._tcp_open -= 1
            self._tcp_clients.release(address)
            await trio.aclose_forcefully(stream)

    async def _tcp_session(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        timeout_s = self.config.tcp_idle_timeout_s
        while True:
            message: bytes | None = None
            with trio.move_on_after(timeout_s):
                message = await _read_message(stream, buffer, _MAX_QUERY_BYTES)
            if message is None:
                if not buffer or len(buffer) >= 2:
                    self.stats.tcp_timeouts += 1
                return
            if not message:
                self.stats.tcp_oversized += 1
                return
            self.stats.tcp_queries += 1
            reply = self.responder.respond(message, True)
            if isinstance(reply, Forward):
                reply = await self._recurse(reply, tcp=True)
            if reply is None:
                return  # not a query: the peer is not a DNS client
            with trio.move_on_after(timeout_s) as scope:
                await stream.send_all(_LENGTH.pack(len(reply)) + reply)
            if scope.cancelled_caught:
                self.stats.tcp_timeouts += 1
                return


async def _read_message(
    stream: trio.abc.ReceiveStream, buffer: bytearray, limit: int
) -> bytes | None:
    """The next length-prefixed message; b"" when it is over `limit`, None at EOF.

    `buffer` keeps bytes read past this message (pipelined queries).
    """
    while True:
        if len(buffer) >= 2:
            length = _LENGTH.unpack_from(buffer)[0]
            if length > limit or length == 0:
                return b""
            if len(buffer) >= 2 + length:
                message = bytes(buffer[2 : 2 + length])
                del buffer[: 2 + length]
                return message
        chunk = await stream.receive_some(_MAX_MESSAGE_BYTES)
        if not chunk:
            return None
        buffer += chunk


async def _exchange_udp(host: str, port: int, query: bytes) -> bytes:
    """Send one query and wait for the datagram answering it (same ID, from that peer)."""
    with trio.socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        await sock.connect((host, port))
        await sock.send(query)
        while True:
            answer = await sock.recv(_MAX_MESSAGE_BYTES)
            if answer[:2] == query[:2]:
                return answer


async def _exchange_tcp(host: str, port: int, query: bytes) -> bytes | None:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(_LENGTH.pack(len(query)) + query)
        return await _read_message(stream, bytearray(), _MAX_MESSAGE_BYTES) or None


async def serve_dns(
    catalog: DnsCatalog,
    config: DnsConfig,
    *,
    rng: random.Random | None = None,
    stats: DnsStats | None = None,
    task_status: trio.TaskStatus[DnsBound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve DNS for `catalog` until cancelled; `nursery.start` returns the `DnsBound`."""
    server = DnsServer(catalog, config, rng=rng, stats=stats)
    await server.run(task_status=task_status)
