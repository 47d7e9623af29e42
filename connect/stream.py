"""`MeshStream`: a trio stream over a verified, non-blocking `ssl.SSLSocket`.

Why not `trio.SSLStream`: the proxy measured it at about 0.3x stunnel
(MemoryBIOs copied in Python). Here OpenSSL reads and writes the kernel
socket itself, as in `meshnode.proxy.pump`, and Python parks on
`wait_readable` / `wait_writable` only when OpenSSL says it must.

Rules that live here:

- `send_eof` is a TCP half-close (``SHUT_WR``) without close_notify, as the
  proxy's data plane does: both ends accept a FIN as EOF
  (`OP_IGNORE_UNEXPECTED_EOF`), and the other direction keeps flowing.
- `cut(reason)` closes the socket from outside (a deny): a task waiting on it
  wakes at once, and every later call raises `trio.BrokenResourceError`
  naming the reason.
- One task may send and one may receive at the same time; two of either is
  `trio.BusyResourceError`, as for trio's own streams.
- Every call is a cancel point; a schedule point only when it must wait, or
  at least every `_SCHEDULE_EVERY` calls. A full trio checkpoint per TLS
  record (16 KiB) cost more than the record's decryption here, and frequent
  ones lower the throughput of several streams sharing a loop; the proxy's
  pump never yields while data flows either.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    notify_closing,
    wait_readable,
    wait_writable,
)

from ..proxy.tls import close_tls

__all__ = ["MeshStream"]

_T = TypeVar("_T")

# A TLS 1.3 KeyUpdate can make a read need a write (and the reverse); it is
# retried after this long rather than parked on the other direction's wait.
_WANT_OTHER_RETRY_S = 0.002
# Bytes handed to one SSL_write: four full records, one Python call.
_SEND_CHUNK_BYTES = 64 * 1024
# OpenSSL returns at most one record (16 KiB) per read, and Python allocates
# the whole request first: a larger buffer only costs (an mmap past 128 KiB).
_RECEIVE_MAX_BYTES = 64 * 1024
# Calls between two schedule points when data never makes us wait (16 MiB of
# records at most). Four bulk streams in one process: a median of 1.1 Gb/s
# with one every 16 calls, 1.7 Gb/s with one every 1,024 (12 runs each on the
# shared VM, 0.5 to 7.1 Gb/s); a single stream does not care.
_SCHEDULE_EVERY = 1024


class MeshStream(trio.abc.HalfCloseableStream):
    """A mutually authenticated connection to `peer_service` (its SPIFFE ID is `peer_uri`)."""

    def __init__(
        self, sock: ssl.SSLSocket, *, local_service: str, peer_uri: str, peer_service: str
    ) -> None:
        self.socket = sock
        self.local_service = local_service
        self.peer_uri = peer_uri
        self.peer_service = peer_service
        self.cut_reason = ""
        self._closed = False
        self._busy: set[str] = set()
        self._calls = 0
        self.on_close: Callable[[], None] | None = None  # the owner's bookkeeping, called once

    def _check_open(self) -> None:
        if self.cut_reason:
            raise trio.BrokenResourceError(f"connection cut: {self.cut_reason}")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")

    @contextlib.contextmanager
    def _one_task(self, doing: str) -> Iterator[None]:
        if doing in self._busy:
            raise trio.BusyResourceError(f"another task is {doing} on this stream")
        self._busy.add(doing)
        try:
            self._check_open()
            yield
        except trio.ClosedResourceError as exc:  # closed while we waited
            if self.cut_reason:
                raise self._broken(exc) from None
            raise
        finally:
            self._busy.discard(doing)

    async def _checkpoint(self) -> None:
        """Cancel point always; schedule point every `_SCHEDULE_EVERY` calls."""
        self._calls += 1
        await checkpoint_if_cancelled()
        if self._calls % _SCHEDULE_EVERY == 0:
            await cancel_shielded_checkpoint()

    def _broken(self, exc: BaseException) -> trio.BrokenResourceError:
        if self.cut_reason:
            return trio.BrokenResourceError(f"connection cut: {self.cut_reason}")
        return trio.BrokenResourceError(f"{type(exc).__name__}: {exc}")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._one_task("sending"):
            await self._checkpoint()
            view = memoryview(data).cast("B")
            sent = 0
            while sent < len(view):
                try:
                    sent += self.socket.send(view[sent : sent + _SEND_CHUNK_BYTES])
                except (BlockingIOError, ssl.SSLWantWriteError):
                    await wait_writable(self.socket)
                except ssl.SSLWantReadError:
                    await trio.sleep(_WANT_OTHER_RETRY_S)
                except (OSError, ValueError) as exc:  # ValueError: closed under us by a cut
                    raise self._broken(exc) from None

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await wait_writable(self.socket)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = min(max_bytes or _RECEIVE_MAX_BYTES, _RECEIVE_MAX_BYTES)
        return await self._receive(functools.partial(self.socket.recv, size), b"")

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """Like `receive_some` into `buffer` (0 at EOF): no allocation per TLS record.

        Not part of trio's Stream interface; for bulk readers, where a fresh
        bytes object per 16 KiB record halved the throughput of four streams.
        """
        return await self._receive(functools.partial(self.socket.recv_into, buffer), 0)

    async def _receive(self, read: Callable[[], _T], eof: _T) -> _T:
        with self._one_task("receiving"):
            await self._checkpoint()
            while True:
                try:
                    return read()
                except (BlockingIOError, ssl.SSLWantReadError):
                    await wait_readable(self.socket)
                except ssl.SSLWantWriteError:
                    await trio.sleep(_WANT_OTHER_RETRY_S)
                except ssl.SSLZeroReturnError:
                    return eof
                except (OSError, ValueError) as exc:
                    raise self._broken(exc) from None

    async def send_eof(self) -> None:
        self._check_open()
        await checkpoint()
        # The base class's shutdown: SSLSocket.shutdown would drop the SSL object
        # that the read direction still needs (see meshnode.proxy.pump).
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.socket, socket.SHUT_WR)

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
        with contextlib.suppress(OSError, ValueError):
            if self.socket.fileno() >= 0:
                notify_closing(self.socket)
        close_tls(self.socket)

    def cut(self, reason: str) -> None:
        """Close now because the mesh no longer allows this connection (a deny)."""
        if not self.cut_reason:
            self.cut_reason = reason
        # SHUT_RDWR first: it also wakes a thread blocked in recv on this socket
        # (the blocking wrapper hands the socket itself out), which close does not.
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(self.socket, socket.SHUT_RDWR)
        self._close_now()

    async def aclose(self) -> None:
        self._close_now()
        await checkpoint()
