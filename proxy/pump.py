"""The data plane: non-blocking sockets (plain or `ssl.SSLSocket`) driven by trio's waits.

Why not `trio.SSLStream`: it runs TLS through MemoryBIOs, copying every
byte twice more in Python and taking locks per call; a pair of them reached
about 0.3x stunnel here. An `ssl.SSLSocket` in non-blocking mode reads and
writes the kernel socket from OpenSSL directly: Python sees one call per TLS
record, and `SSLWantReadError` / `BlockingIOError` say when to park on
`trio.lowlevel.wait_readable` / `wait_writable`.

Rules that live here:

- One task per direction; each reads at most `buffer_bytes`, and reads again
  only when the last chunk is fully written: memory per connection is two
  buffers, and a slow reader slows the writer (backpressure), never a queue.
- A TLS read returns one record (16 KiB); after a full one the pump reads
  on while records are waiting, up to the buffer, and then sends once.
  After a read that emptied the socket (short, nothing left in OpenSSL) it
  waits for readability instead of trying a read that would fail.
- Half-close: EOF on one side becomes ``shutdown(SHUT_WR)`` on the other,
  and the other direction keeps flowing until its own EOF. On a TLS socket
  the TCP FIN itself is the signal (a "ragged" EOF, which both peers accept,
  as stunnel does): OpenSSL's ``SSL_shutdown`` as Python calls it also tries
  to read the peer's close_notify and fails with "application data after
  close notify" when the peer is still sending, which a half-closed stream
  always may be.
- Any socket error aborts both directions (`SpliceError`); the caller closes
  both sockets, which the peer sees as an EOF or a reset.
- `Flow` counts bytes each way and the last activity, for counters and the
  idle timeout.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import trio
from trio.lowlevel import wait_readable, wait_writable

__all__ = [
    "Flow",
    "SpliceError",
    "accept",
    "close_quietly",
    "connect",
    "handshake",
    "listen",
    "splice",
]

# A peer that must write while we read (a TLS 1.3 KeyUpdate reply into a full
# send buffer) cannot park on wait_writable, which the other direction may
# hold: it retries after this much instead. Never seen in a normal transfer.
_WANT_WRITE_RETRY_S = 0.002
# The largest TLS record's plaintext: an `SSLSocket` read returns at most one.
_TLS_RECORD_BYTES = 16 * 1024


class SpliceError(Exception):
    """A socket of a spliced connection failed (a remote error: the connection ends)."""


@dataclass(slots=True)
class Flow:
    """Bytes each way and the last time any moved (the splice's clock)."""

    last_activity_s: float = 0.0
    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    # Request/response traffic must not wait for Nagle; bulk writes are
    # already large (a whole buffer per send).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listen(address: str, port: int, backlog: int = 1024) -> socket.socket:
    """A non-blocking listening TCP socket (SO_REUSEADDR, so a restart rebinds at once)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept(listener: socket.socket) -> socket.socket:
    """The next connection, non-blocking, with TCP_NODELAY."""
    while True:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            await wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE):
                # A client gone before accept, or out of descriptors: wait a little.
                await trio.sleep(0.01 if exc.errno in (errno.EMFILE, errno.ENFILE) else 0)
                continue
            raise
        try:
            _tune(sock)
        except OSError:
            sock.close()
            continue
        return sock


def _established(sock: socket.socket) -> bool:
    """Whether a connect in progress is already done: one syscall instead of a trio wait.

    On loopback (a sidecar dialling its app, or a proxy on the same host)
    the kernel has usually finished the three-way handshake by the time
    ``connect`` returns EINPROGRESS.
    """
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


async def connect(address: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket; `OSError` on refusal (the caller bounds the time)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        _tune(sock)
        code = sock.connect_ex((address, port))
        if code == errno.EINPROGRESS:
            if not _established(sock):
                await wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            raise OSError(code, f"connect to {address}:{port}: {errno.errorcode.get(code, code)}")
    except BaseException:
        sock.close()
        raise
    return sock


async def handshake(sock: ssl.SSLSocket) -> None:
    """Run the TLS handshake to completion; `ssl.SSLError`/`OSError` on failure."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await wait_readable(sock)
        except ssl.SSLWantWriteError:
            await wait_writable(sock)


def close_quietly(sock: socket.socket | None) -> None:
    """Close a socket whose waits are all over; errors at close are not news."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.close()


def _shutdown_write(sock: socket.socket) -> None:
    # The base class's shutdown: SSLSocket.shutdown would drop its SSL object,
    # and the read direction still needs it. An error means the peer is gone,
    # which its own direction will tell.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)


async def _pump(
    src: socket.socket,
    dst: socket.socket,
    buffer_bytes: int,
    flow: Flow,
    forward: bool,
    now: Callable[[], float],
) -> None:
    buf = bytearray(buffer_bytes)
    view = memoryview(buf)
    recv_into = src.recv_into
    send = dst.send
    # After a full TLS record, read on while more are already waiting, so one
    # send (and one Python round) carries up to the buffer, not a record.
    batch = isinstance(src, ssl.SSLSocket)
    pending = src.pending if isinstance(src, ssl.SSLSocket) else None
    # The last read emptied the socket (a short plain read, or a short TLS
    # record with nothing left decrypted): wait before reading again instead
    # of a read that fails (an exception, and for TLS a costly error object).
    drained = False
    while True:
        if drained:
            await wait_readable(src)
        try:
            n = recv_into(buf, buffer_bytes)
        except (BlockingIOError, ssl.SSLWantReadError):
            await wait_readable(src)
            continue
        except ssl.SSLWantWriteError:
            await trio.sleep(_WANT_WRITE_RETRY_S)
            continue
        except ssl.SSLZeroReturnError:
            n = 0
        except OSError as exc:
            raise SpliceError(f"read: {exc}") from None
        if n == 0:
            _shutdown_write(dst)
            return
        eof = False
        last = n
        drained = False
        while batch and last == _TLS_RECORD_BYTES and n < buffer_bytes:
            try:
                last = recv_into(view[n:], buffer_bytes - n)
            except (BlockingIOError, ssl.SSLWantReadError):
                drained = True
                break
            except ssl.SSLWantWriteError:
                break
            except ssl.SSLZeroReturnError:
                last = 0
            except OSError as exc:
                raise SpliceError(f"read: {exc}") from None
            eof = last == 0
            n += last
        if pending is None:
            drained = n < buffer_bytes
        elif 0 < last < _TLS_RECORD_BYTES and not pending():
            drained = True
        if forward:
            flow.bytes_a_to_b += n
        else:
            flow.bytes_b_to_a += n
        flow.last_activity_s = now()
        sent = 0
        while sent < n:
            try:
                sent += send(view[sent:n])
            except (BlockingIOError, ssl.SSLWantWriteError):
                await wait_writable(dst)
            except ssl.SSLWantReadError:
                await trio.sleep(_WANT_WRITE_RETRY_S)
            except OSError as exc:
                raise SpliceError(f"write: {exc}") from None
        if eof:
            _shutdown_write(dst)
            return


async def splice(
    a: socket.socket,
    b: socket.socket,
    *,
    flow: Flow,
    buffer_bytes: int,
    clock: Callable[[], float] = trio.current_time,
) -> None:
    """Copy a->b and b->a until both reach EOF; `SpliceError` when a socket fails.

    The sockets stay open: the caller owns them. The idle timeout is the
    caller's too (one sweeper per proxy costs less than a timer per
    connection); `clock` stamps `flow.last_activity_s` for it.
    """
    flow.last_activity_s = clock()
    done = 0
    failure: SpliceError | None = None

    async with trio.open_nursery() as nursery:

        async def direction(src: socket.socket, dst: socket.socket, forward: bool) -> None:
            nonlocal done, failure
            try:
                await _pump(src, dst, buffer_bytes, flow, forward, clock)
            except SpliceError as exc:
                # Raised here, it would reach the caller wrapped in an ExceptionGroup.
                failure = failure or exc
                nursery.cancel_scope.cancel()

        nursery.start_soon(direction, a, b, True)
        await direction(b, a, False)
    if failure is not None:
        raise failure
