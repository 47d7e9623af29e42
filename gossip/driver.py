"""The trio driver: one loop around the sans-IO membership core.

It waits for a packet, a push/pull stream or the core's next timer, feeds the
core with the current time, then sends what the core returns. It also carries
the core's TCP fallback pings (memberlist #37): a stream that starts with
`STREAM_PING`, then one sealed frame each way (the ping, the ack). Remote errors
(bad bytes, failed authentication, replays, refused connections) are logged,
counted and dropped here; they never end the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from . import codec
from .errors import RemoteProtocolError
from .events import Event
from .membership import Membership, TcpPing
from .messages import Addr, PushPull
from .transport import Transport
from .wire import FrameReader, Wire

log = logging.getLogger("meshnode.gossip")

# Serves a TCP stream whose first byte selected it: (stream, peer, first bytes read).
StreamHandler = Callable[[trio.abc.Stream, Addr, bytes], Awaitable[None]]

_READ_CHUNK_BYTES = 65536
# Rejected input is logged at most once per kind and source in this interval.
_LOG_EVERY_S = 10.0
_LOG_SOURCES_MAX = 10_000
# First byte of a TCP ping stream (push/pull frames start with 0x00; the store
# and the CA took 0xA5 and 0xA6).
STREAM_PING = 0xA7
# A ping or an ack is one small packet; anything bigger is not one.
_PING_FRAME_MAX_BYTES = 4096


@dataclass
class DriverCounters:
    """Cumulative counters, exported by the agent as `meshnode.gossip.*` metrics."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount


class GossipDriver:
    def __init__(
        self,
        core: Membership,
        wire: Wire,
        transport: Transport,
        *,
        clock: Callable[[], float] = trio.current_time,
        on_event: Callable[[Event], None] | None = None,
        push_pull_timeout_s: float = 10.0,
    ) -> None:
        self.core = core
        self.wire = wire
        self.transport = transport
        self.counters = DriverCounters()
        self._clock = clock
        self._on_event = on_event
        # A stalled peer must not hold a push/pull (and its memory) forever.
        self._push_pull_timeout_s = push_pull_timeout_s
        self._wakeup = trio.Event()
        self._left = trio.Event()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self._max_frame_bytes = core.config.push_pull_max_bytes + 64
        self._stream_handlers: dict[int, StreamHandler] = {STREAM_PING: self._serve_tcp_ping}

    def add_stream_handler(self, first_byte: int, handler: StreamHandler) -> None:
        """Serve incoming TCP streams that start with `first_byte` with `handler`.

        A push/pull stream starts with a frame length whose high byte is 0x00
        under any sane frame limit, so other exchanges (the store's
        anti-entropy) share the gossip port by starting with a byte >= 0x80.
        The handler owns the stream's timeouts and errors; the driver closes it.
        """
        if not 0x80 <= first_byte <= 0xFF or first_byte in self._stream_handlers:
            raise ValueError(f"stream type byte {first_byte:#x} is taken or below 0x80")
        self._stream_handlers[first_byte] = handler

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.transport.serve_streams, self._serve_push_pull)
            nursery.start_soon(self._recv_loop)
            nursery.start_soon(self._timer_loop)
            task_status.started()

    async def _recv_loop(self) -> None:
        while True:
            data, src = await self.transport.recv_packet()
            self.counters.add("udp.recv_bytes", len(data))
            self.counters.add("udp.recv_packets")
            now = self._clock()
            try:
                plain = self.wire.open(data, now)
                self.core.receive_packet(plain, src, now)
            except RemoteProtocolError as exc:
                self._count_remote_error(exc, src, "udp")
            self._flush()

    async def _timer_loop(self) -> None:
        while True:
            with trio.move_on_at(self.core.get_timer()):
                await self._wakeup.wait()
            self.core.handle_timer(self._clock())
            self._flush()
            # Only inputs from other tasks may wake us early; our own flush
            # has just been accounted for by get_timer().
            self._wakeup = trio.Event()

    def _count_remote_error(self, exc: RemoteProtocolError, src: Addr, via: str) -> None:
        """Count every rejection; log the first of a kind per source each interval.

        An operator must see "wrong key from 10.0.0.9" once, but a flood of
        garbage must not become a flood of log lines.
        """
        kind = type(exc).__name__
        self.counters.add(f"{via}.rejected.{kind}")
        now = self._clock()
        key = (kind, src.host)
        if now - self._last_logged.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            if len(self._last_logged) > _LOG_SOURCES_MAX:
                self._last_logged.clear()
            self._last_logged[key] = now
            log.warning("rejected %s input from %s: %s: %s", via, src, kind, exc)

    def _flush(self) -> None:
        """Send what the core produced, start its push/pulls and hand out its events."""
        for addr, plain in self.core.packets_to_send():
            sealed = self.wire.seal(plain)
            if self.transport.send_packet(sealed, addr):
                self.counters.add("udp.sent_bytes", len(sealed))
                self.counters.add("udp.sent_packets")
            else:
                self.counters.add("udp.send_dropped")
        for addr, join in self.core.push_pulls_to_start():
            if self._nursery is not None:
                self._nursery.start_soon(self._push_pull, addr, join)
        for ping in self.core.tcp_pings_to_start():
            if self._nursery is not None:
                self._nursery.start_soon(self._tcp_ping, ping)
        while (event := self.core.next_event()) is not None:
            if self._on_event is not None:
                self._on_event(event)
        if self.core.leave_done:
            self._left.set()
        self._wakeup.set()

    # ------------------------------------------------------------------ commands

    async def join(self, addrs: list[Addr]) -> int:
        """Push/pull with each seed concurrently; returns how many answered."""
        self.core.join([], self._clock())
        ok = 0

        async def one(addr: Addr) -> None:
            nonlocal ok
            if await self._push_pull(addr, True):
                ok += 1

        async with trio.open_nursery() as nursery:
            for addr in addrs:
                nursery.start_soon(one, addr)
        self._flush()
        return ok

    async def leave(self, timeout_s: float) -> bool:
        """Announce our leave and wait (bounded) until it has been gossiped."""
        self.core.leave(self._clock())
        self._flush()
        with trio.move_on_after(timeout_s):
            await self._left.wait()
        return self.core.leave_done

    def apply(self, fn: Callable[[float], None]) -> None:
        """Run a core command at the current time and send what it produced."""
        fn(self._clock())
        self._flush()

    # ------------------------------------------------------------------ push/pull

    async def _push_pull(self, addr: Addr, join: bool) -> bool:
        """One full-state exchange as the client."""
        self.counters.add("push_pull.started")
        try:
            with trio.fail_after(self._push_pull_timeout_s):
                stream = await self.transport.connect_stream(addr)
                async with stream:
                    await self._send_frame(
                        stream, codec.encode_push_pull(self.core.local_state(join=join))
                    )
                    reply = await self._read_push_pull(stream)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.counters.add("push_pull.failed")
            log.debug("push/pull with %s failed: %s", addr, exc or type(exc).__name__)
            return False
        except RemoteProtocolError as exc:
            self.counters.add("push_pull.failed")
            self._count_remote_error(exc, addr, "tcp")
            return False
        try:
            self.core.merge_remote_state(reply, self._clock())
        except RemoteProtocolError as exc:
            # The core merged every acceptable entry and rejected the rest;
            # out of this task it would have ended the whole driver.
            self._count_remote_error(exc, addr, "tcp")
        self._flush()
        return True

    # ------------------------------------------------------------------ TCP ping

    async def _tcp_ping(self, ping: TcpPing) -> None:
        """Send the core's fallback ping over TCP and report whether its ack came in time."""
        self.counters.add("tcp_ping.sent")
        acked = False
        with trio.move_on_after(max(0.0, ping.deadline_s - self._clock())):
            try:
                stream = await self.transport.connect_stream(ping.addr)
                async with stream:
                    await stream.send_all(bytes((STREAM_PING,)) + self.wire.frame(ping.payload))
                    reply = await self._read_frame(stream, _PING_FRAME_MAX_BYTES)
                acked = self.core.tcp_ping_answered(ping.seq, reply, self._clock())
            except (OSError, trio.BrokenResourceError) as exc:
                log.debug("TCP ping to %s failed: %s", ping.addr, exc or type(exc).__name__)
            except RemoteProtocolError as exc:
                self._count_remote_error(exc, ping.addr, "tcp")
        if acked:
            self.counters.add("tcp_ping.acked")
        else:
            self.core.tcp_ping_failed(ping.seq, self._clock())
        self._flush()

    async def _serve_tcp_ping(self, stream: trio.abc.Stream, peer: Addr, first: bytes) -> None:
        """Answer a peer's TCP ping with an ack (bounded in time and size)."""
        with trio.fail_after(self.core.config.probe_interval_s * 2):
            request = await self._read_frame(stream, _PING_FRAME_MAX_BYTES, first[1:])
            reply = self.core.answer_tcp_ping(request)
            await self._send_frame(stream, reply)
        self.counters.add("tcp_ping.answered")

    async def _serve_push_pull(self, stream: trio.abc.Stream, peer: Addr) -> None:
        handler: StreamHandler | None = None
        first = b""
        try:
            with trio.fail_after(self._push_pull_timeout_s):
                if self._stream_handlers:
                    first = bytes(await stream.receive_some(_READ_CHUNK_BYTES))
                    handler = self._stream_handlers.get(first[0]) if first else None
                if handler is None:
                    request = await self._read_push_pull(stream, first)
                    reply = self.core.receive_push_pull(request, self._clock())
                    self._flush()
                    await self._send_frame(stream, codec.encode_push_pull(reply))
            if handler is not None:
                await handler(stream, peer, first)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.counters.add("push_pull.serve_failed")
            log.debug("serving push/pull to %s failed: %s", peer, exc or type(exc).__name__)
        except RemoteProtocolError as exc:
            self._count_remote_error(exc, peer, "tcp")
        finally:
            await trio.aclose_forcefully(stream)

    async def _send_frame(self, stream: trio.abc.Stream, payload: bytes) -> None:
        framed = self.wire.frame(payload)
        await stream.send_all(framed)
        self.counters.add("tcp.sent_bytes", len(framed))

    async def _read_push_pull(self, stream: trio.abc.Stream, initial: bytes = b"") -> PushPull:
        frame = await self._read_frame(stream, self._max_frame_bytes, initial)
        return codec.decode_push_pull(frame, max_bytes=self._max_frame_bytes)

    async def _read_frame(
        self, stream: trio.abc.Stream, max_frame_bytes: int, initial: bytes = b""
    ) -> bytes:
        """One opened frame from `stream` (`initial`: bytes already read from it)."""
        reader = FrameReader(self.wire, max_frame_bytes=max_frame_bytes)
        if initial:
            self.counters.add("tcp.recv_bytes", len(initial))
            reader.feed(initial)
        while True:
            frame = reader.next_frame(self._clock())
            if frame is not None:
                return frame
            chunk = await stream.receive_some(_READ_CHUNK_BYTES)
            if not chunk:
                raise trio.BrokenResourceError("peer closed the stream mid-frame")
            self.counters.add("tcp.recv_bytes", len(chunk))
            reader.feed(chunk)
