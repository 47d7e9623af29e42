"""A small HTTP/1.1 server: trio streams around h11's sans-IO state machine.

Rules that live here:
- every connection is its own task; at most `max_connections` run at once (the
  accept loop waits for a free slot, so the kernel backlog absorbs bursts);
- at most `max_connections_per_client` of them per client IP address (Consul's
  `limits.http_max_conns_per_client`), below the global cap so that one client
  cannot take every slot; one more is answered 429, as Consul does, and
  closed (at most `_REFUSING_MAX` such answers at once, the rest are closed
  unanswered);
- a new connection must send its first byte within `first_byte_timeout_s`, so
  idle connections hold a slot for seconds, not the keep-alive minute;
- a request must arrive within the limits of `HttpLimits` (header bytes, header
  count, target length, body bytes, time) or it is answered 400/413/414/431/408
  and the connection is closed;
- nothing a peer sends and nothing a handler raises escapes a connection task:
  a handler's exception is logged and answered 500, and the server keeps serving;
- keep-alive follows h11 (HTTP/1.1 default, HTTP/1.0 and `Connection: close` end it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from ..addr import format_host_port
from ..logs import get_logger, log
from ..per_client import PerClientLimit, client_address
from .router import Request, Response, Router

__all__ = ["HttpBindError", "HttpLimits", "serve_http"]

_log = get_logger("http")

_RECEIVE_BYTES = 64 * 1024
_SERVER_HEADER = ("Server", "meshnode")
# 429 answers being written at once; past that an over-limit connection is
# closed unanswered (a flood of them needs no courtesy).
_REFUSING_MAX = 64
# How long an over-limit connection gets to send its request before the 429:
# read first, so our close does not reset a request still unread.
_REFUSE_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class HttpLimits:
    # Consul's own cap on a request body is larger, but nothing meshnode
    # accepts (keys, service definitions, intentions) comes close to 1 MiB.
    max_body_bytes: int = 1024 * 1024
    # The request line plus all headers; 16 KiB is h11's default and what
    # common proxies allow, far above any real client's needs.
    max_header_bytes: int = 16 * 1024
    # More headers than this is an attack or a bug, never a client of ours.
    max_headers: int = 100
    # Request targets (path + query) longer than this are refused with 414.
    max_target_bytes: int = 8 * 1024
    # A keep-alive connection with no request for this long is closed, so
    # idle clients cannot pin connection slots forever.
    idle_timeout_s: float = 60.0
    # Once a request has started, all of it must arrive within this time
    # (slow-loris defence); handlers themselves are not limited (long polls).
    request_timeout_s: float = 30.0
    # A client that stops reading its response is dropped after this long.
    write_timeout_s: float = 30.0
    # Each connection costs a task and a socket; 512 covers CLI calls,
    # long polls and proxies on one host with room to spare.
    max_connections: int = 512
    # Consul's limits.http_max_conns_per_client default; below the global cap,
    # so one client address (a flood of idle connections) leaves room for others.
    max_connections_per_client: int = 200
    # A new connection that has sent nothing for this long is closed: every
    # client of ours sends its request at once, and an idle flood frees its
    # slots in seconds rather than after the keep-alive `idle_timeout_s`.
    first_byte_timeout_s: float = 5.0
    # After refusing an oversized body we keep reading (and dropping) for a
    # moment, so the client sees our 413 instead of a connection reset.
    linger_s: float = 2.0


class HttpBindError(Exception):
    """The listening socket could not be opened (address in use, bad address...)."""


class _RequestRejected(Exception):
    """The request broke a limit: answer `status` and close the connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Connection:
    """One client connection: reads requests, dispatches, writes responses."""

    def __init__(self, stream: trio.SocketStream, app: Router, limits: HttpLimits, remote: str):
        self.stream = stream
        self.app = app
        self.limits = limits
        self.remote = remote
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.served = 0  # requests answered on this connection

    async def run(self) -> None:
        try:
            while await self._exchange():
                self.conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the peer went away or stopped reading; nothing to answer
        except Exception as exc:  # a bug of ours: log it, lose only this connection
            log(_log, "error", "connection failed", exc_info=exc, remote=self.remote)
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _next_event(self, deadline: float) -> object:
        """The next h11 event, reading from the socket as needed until `deadline`."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_at(deadline):
                data = await self.stream.receive_some(_RECEIVE_BYTES)
                self.conn.receive_data(data)
                continue
            raise trio.TooSlowError

    async def _read_request(self) -> Request | None:
        """A whole request, or None when the client closed (or idled out) between requests."""
        wait_s = self.limits.idle_timeout_s if self.served else self.limits.first_byte_timeout_s
        idle_deadline = trio.current_time() + wait_s
        # Wait for the first bytes with the idle timeout; after that, the whole
        # request must follow within request_timeout_s.
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            with trio.move_on_at(idle_deadline) as scope:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            if scope.cancelled_caught or not data:
                return None  # idle or closed keep-alive connection: close quietly
            self.conn.receive_data(data)
        deadline = trio.current_time() + self.limits.request_timeout_s
        try:
            event = await self._next_event(deadline)
        except trio.TooSlowError:
            raise _RequestRejected(408, "request not received in time") from None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _RequestRejected(400, "expected a request")
        target = event.target.decode("ascii", "replace")
        if len(event.target) > self.limits.max_target_bytes:
            raise _RequestRejected(414, "request target too long")
        if len(event.headers) > self.limits.max_headers:
            raise _RequestRejected(431, "too many request headers")
        # h11 only bounds a head that arrives in pieces; bound a whole one too.
        head_bytes = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if head_bytes > self.limits.max_header_bytes:
            raise _RequestRejected(431, "request headers too large")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
        declared = next((v for n, v in headers if n.lower() == "content-length"), None)
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            raise _RequestRejected(413, f"request body over {self.limits.max_body_bytes} bytes")
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            try:
                part = await self._next_event(deadline)
            except trio.TooSlowError:
                raise _RequestRejected(408, "request body not received in time") from None
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.limits.max_body_bytes:
                    raise _RequestRejected(
                        413, f"request body over {self.limits.max_body_bytes} bytes"
                    )
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return None  # closed mid-body
        return Request.from_target(
            event.method.decode("ascii", "replace"), target, headers, bytes(body), self.remote
        )

    async def _exchange(self) -> bool:
        """Serve one request; True when the connection may carry another."""
        try:
            request = await self._read_request()
        except h11.RemoteProtocolError as exc:
            await self._reject(exc.error_status_hint, f"malformed request: {exc}")
            return False
        except _RequestRejected as exc:
            await self._reject(exc.status, exc.message)
            return False
        if request is None:
            return False
        started_s = trio.current_time()
        try:
            response = await self.app.dispatch(request)
        except Exception as exc:
            log(
                _log,
                "error",
                "handler failed",
                exc_info=exc,
                method=request.method,
                path=request.path,
            )
            response = Response.error(500, f"internal error: {type(exc).__name__}: {exc}")
        if _log.isEnabledFor(logging.DEBUG):  # skip building the fields on every request
            log(
                _log,
                "debug",
                "request",
                method=request.method,
                path=request.path,
                status=response.status,
                remote=self.remote,
                duration_ms=round((trio.current_time() - started_s) * 1000, 3),
            )
        await self._respond(response, head=request.method == "HEAD")
        self.served += 1
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def _respond(
        self, response: Response, *, close: bool = False, head: bool = False
    ) -> None:
        headers = [
            _SERVER_HEADER,
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        # Head, body and end as one write: one send() and one timeout scope per
        # answer instead of three (a measurable share of a small request's CPU).
        events: list[h11.Event] = [
            h11.Response(
                status_code=response.status, headers=headers, reason=_reason(response.status)
            )
        ]
        # No body after HEAD, 204 or 304 (h11 refuses one; it never reached the client).
        if response.body and not head and response.status not in (204, 304):
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        await self._send_bytes(b"".join(self.conn.send(e) or b"" for e in events))

    async def _reject(self, status: int, message: str) -> None:
        """Answer a broken request when h11 still lets us, then linger and close."""
        log(_log, "debug", "request rejected", status=status, reason=message, remote=self.remote)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._respond(Response.error(status, message), close=True)
        except h11.LocalProtocolError:
            return
        await self._linger()

    async def _linger(self) -> None:
        """Drop what the client is still sending for a moment so it reads our answer."""
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        budget = 4 * self.limits.max_body_bytes
        with trio.move_on_after(self.limits.linger_s):
            while budget > 0:
                try:
                    data = await self.stream.receive_some(_RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                budget -= len(data)

    async def _send(self, event: h11.Event) -> None:
        await self._send_bytes(self.conn.send(event))

    async def _send_bytes(self, data: bytes | None) -> None:
        if data:
            with trio.fail_after(self.limits.write_timeout_s):
                await self.stream.send_all(data)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "?"
    return format_host_port(str(host), int(port))


@dataclass(slots=True)
class _Admission:
    """What the accept loops of one server share: the slots and the per-client counts."""

    limits: HttpLimits
    slots: trio.Semaphore
    clients: PerClientLimit
    refusing: trio.Semaphore


async def _serve_listener(
    listener: trio.SocketListener, app: Router, admission: _Admission
) -> None:
    async with listener, trio.open_nursery() as nursery:
        while True:
            await admission.slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                admission.slots.release()
                log(_log, "warning", "accept failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            except BaseException:
                admission.slots.release()
                raise
            address = client_address(stream.socket)
            if admission.clients.admit(address):
                nursery.start_soon(_serve_one, stream, app, admission, address)
                continue
            admission.slots.release()
            try:
                admission.refusing.acquire_nowait()
            except trio.WouldBlock:
                stream.socket.close()  # a flood: no answer
            else:
                nursery.start_soon(_too_many, stream, admission, address)


async def _serve_one(
    stream: trio.SocketStream, app: Router, admission: _Admission, address: str
) -> None:
    try:
        await _Connection(stream, app, admission.limits, _peer(stream)).run()
    finally:
        admission.clients.release(address)
        admission.slots.release()


async def _too_many(stream: trio.SocketStream, admission: _Admission, address: str) -> None:
    """Answer 429 to a client over its connection limit (after its request), then close."""
    limit = admission.limits.max_connections_per_client
    body = (
        f"too many connections from {address} (at most {limit} per client address,"
        " limits.http_max_conns_per_client)\n"
    ).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nServer: meshnode\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with trio.move_on_after(_REFUSE_WAIT_S):
            if await stream.receive_some(_RECEIVE_BYTES):
                await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        admission.refusing.release()
        await trio.aclose_forcefully(stream)
    log(_log, "debug", "connection over the per-client limit refused", remote=address)


async def serve_http(
    app: Router,
    *,
    host: str,
    port: int,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port until cancelled; ``task_status.started(bound_port)``.

    Use ``port = await nursery.start(functools.partial(serve_http, router,
    host=..., port=...))``; with ``port=0`` the returned port is the one the
    kernel picked. Raises `HttpBindError` (before `started`) when it cannot listen.
    """
    limits = limits or HttpLimits()
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HttpBindError(
            f"cannot listen for HTTP on {format_host_port(host, port)}: {reason}"
        ) from None
    if port == 0 and len(listeners) > 1:
        # Each address family would get its own random port; keep one so the
        # port we report is the port that answers.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port = int(listeners[0].socket.getsockname()[1])
    admission = _Admission(
        limits,
        trio.Semaphore(max(1, limits.max_connections)),
        PerClientLimit(max(1, limits.max_connections_per_client)),
        trio.Semaphore(_REFUSING_MAX),
    )
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_serve_listener, listener, app, admission)
            log(_log, "info", "HTTP API listening", addr=format_host_port(host, bound_port))
            task_status.started(bound_port)
            await trio.sleep(math.inf)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
