"""`BlockingService`: the native API for threads and plain blocking sockets.

A `Service` needs a trio loop; here it runs in one helper thread per
service, and each call is handed to it with `trio.from_thread`. What comes
back is an ordinary blocking `ssl.SSLSocket` (dial) or `ssl.SSLContext`
(serve with any server, then `admit` each client). Both kinds of connection
stay tracked by the loop, so a deny still cuts them: the socket is shut
down, which also wakes a thread blocked in ``recv``.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
import types
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from .service import ConnectError, Service

__all__ = ["BlockingService"]

_T = TypeVar("_T")
# Beyond the first-leaf wait: the thread's own start and the agent's first answers.
_START_MARGIN_S = 5.0
_STOP_TIMEOUT_S = 5.0


class BlockingService:
    """`Service` `name` with a blocking API; `close()` (or ``with``) stops its thread."""

    def __init__(
        self,
        name: str,
        *,
        http_addr: str | None = None,
        token: str | None = None,
        first_leaf_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self._opening = Service.open(
            name, http_addr=http_addr, token=token, first_leaf_timeout_s=first_leaf_timeout_s
        )
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._service: Service | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=trio.run, args=(self._main,), name=f"meshnode-connect-{name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(first_leaf_timeout_s + _START_MARGIN_S):
            raise ConnectError(f"{name!r}: the native service did not start in time")
        if self._error is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            raise self._error

    async def _main(self) -> None:
        try:
            async with self._opening as service:
                self._service = service
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:
            self._error = exc if isinstance(exc, ConnectError) else ConnectError(str(exc))
        finally:
            self._ready.set()

    def _running(self) -> tuple[Service, trio.lowlevel.TrioToken]:
        if self._service is None or self._token is None or not self._thread.is_alive():
            raise ConnectError(f"{self.name!r}: the native service is closed")
        return self._service, self._token

    def _call(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        _, token = self._running()
        return trio.from_thread.run(fn, *args, trio_token=token)

    def _call_sync(self, fn: Callable[..., _T], *args: Any) -> _T:
        _, token = self._running()
        return trio.from_thread.run_sync(fn, *args, trio_token=token)

    def dial(self, destination: str, *, timeout_s: float | None = None) -> ssl.SSLSocket:
        """A blocking, verified mTLS socket to `destination`; `ConnectError` / `Denied`."""
        service, _ = self._running()
        stream = self._call(functools.partial(service.dial, destination, timeout_s=timeout_s))
        sock = stream.socket
        sock.setblocking(True)
        return sock

    def server_ssl_context(self) -> ssl.SSLContext:
        """See `Service.server_ssl_context`: then call `admit` for each accepted client."""
        service, _ = self._running()
        return self._call_sync(service.server_ssl_context)

    def client_ssl_context(self, destination: str) -> ssl.SSLContext:
        service, _ = self._running()
        return self._call_sync(service.client_ssl_context, destination)

    def admit(self, sock: ssl.SSLSocket) -> str:
        """The client's service if an intention allows it (the socket is then tracked); `Denied`."""
        service, _ = self._running()
        return self._call(service.admit, sock).service

    def close(self) -> None:
        """Cut the live connections and stop the helper thread."""
        if self._stop is not None and self._token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):  # already stopping
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(_STOP_TIMEOUT_S)

    def __enter__(self) -> BlockingService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()
