"""One run of a TCP or HTTP health check: dial, ask, and turn the answer into a status.

Rules that live here (Consul's, see agent/checks/check.go):
- a TCP check passes when a connection opens within the timeout;
- an HTTP check passes on 2xx, warns on 429 and is critical on anything else,
  on a connect or TLS error, or when no response head arrives in time;
- redirects are followed (at most 10) as Go's default HTTP client does;
- outputs read like Consul's (``dial tcp 127.0.0.1:9: connect: connection
  refused``, ``HTTP GET <url>: 200 OK Output: <body>``) so that operators can
  grep for the same strings;
- nothing a peer does escapes a probe: every failure becomes a critical result.
  A probe never takes longer than its timeout, even against a server that
  accepts and then never answers.
"""

from __future__ import annotations

import base64
import functools
import os
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

import h11
import trio

from ..addr import AddressError, format_host_port, parse_host_port

__all__ = ["OUTPUT_MAX_BYTES", "probe_http", "probe_tcp"]

# Consul keeps 4 KiB of a check's output (`check_output_max_size`).
OUTPUT_MAX_BYTES = 4 * 1024
# A health endpoint's body past this is never looked at; stop reading there so a
# huge or endless body costs neither memory nor time.
BODY_READ_MAX_BYTES = 64 * 1024
# Response heads beyond this are an attack or a bug; h11's default is also 16 KiB.
_HEAD_MAX_BYTES = 16 * 1024
# Go's http.Client gives up after 10 redirects; Consul's checks inherit that.
_REDIRECTS_MAX = 10
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Dropped when a redirect leaves the original host, as Go's client does.
_SENSITIVE_HEADERS = ("authorization", "www-authenticate", "cookie", "cookie2")
_RECEIVE_BYTES = 16 * 1024
_URL_SAFE = "/%!$&'()*+,;=:@~"
_USER_AGENT = "meshnode Health Check"


class _ProbeFailed(Exception):
    """A failure whose message is the check's output (without the method and URL prefix)."""


async def probe_tcp(address: str, timeout_s: float) -> tuple[str, str]:
    """(status, output) of one TCP connect to `address` ("host:port", IPv6 in brackets)."""
    try:
        host, port = parse_host_port(address, require_ip=False)
    except AddressError as exc:
        return "critical", f"dial tcp: {exc}"
    with trio.move_on_after(timeout_s):
        try:
            stream = await _dial(host, port)
        except _ProbeFailed as exc:
            return "critical", str(exc)
        await trio.aclose_forcefully(stream)
        return "passing", f"TCP connect {address}: Success"
    return "critical", f"dial tcp {format_host_port(host, port)}: i/o timeout"


async def _dial(host: str, port: int) -> trio.SocketStream:
    """A connected stream, or `_ProbeFailed` with Go's wording of what went wrong."""
    try:
        return await trio.open_tcp_stream(host, port)
    except trio.socket.gaierror as exc:
        raise _ProbeFailed(f"dial tcp: lookup {host}: {_lower(exc.strerror)}") from None
    except OSError as exc:
        where = format_host_port(host, port)
        raise _ProbeFailed(f"dial tcp {where}: connect: {_os_reason(exc)}") from None


def _os_reason(exc: BaseException) -> str:
    """An OSError's reason as Go words it, looking inside trio's per-address group."""
    group = exc.__cause__
    causes = group.exceptions if isinstance(group, BaseExceptionGroup) else ()
    for candidate in (exc, *causes):
        if isinstance(candidate, OSError) and candidate.errno:
            return _lower(os.strerror(candidate.errno))
    return _lower(str(exc) or type(exc).__name__)


def _lower(text: str | None) -> str:
    """Go's error strings start lower case ("connection refused")."""
    text = text or "unknown error"
    return text[:1].lower() + text[1:]


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One context per verification mode: loading the system CAs per run costs milliseconds."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class _Progress:
    """What one HTTP run has got so far; still readable after the timeout cut it short."""

    target: str  # the URL being asked now (changes with redirects)
    method: str
    status_code: int = 0  # set once the final response's head has arrived
    status_line: str = ""  # "200 OK"
    body: bytearray = field(default_factory=bytearray)


async def probe_http(
    url: str,
    *,
    method: str = "GET",
    header: dict[str, list[str]] | None = None,
    body: str = "",
    tls_skip_verify: bool = False,
    timeout_s: float,
) -> tuple[str, str]:
    """(status, output) of one HTTP request to `url`, redirects included, within `timeout_s`."""
    first_method = (method or "GET").upper()
    progress = _Progress(url, first_method)
    headers = [(name, value) for name, values in (header or {}).items() for value in values]
    with trio.move_on_after(timeout_s):
        try:
            await _follow(progress, headers, body.encode("utf-8"), tls_skip_verify)
        except _ProbeFailed as exc:
            return "critical", f'{_go_op(progress.method)} "{_redacted(progress.target)}": {exc}'
    if not progress.status_code:
        return "critical", (
            f'{_go_op(progress.method)} "{_redacted(progress.target)}": timeout ({timeout_s:g}s) '
            "exceeded while awaiting headers"
        )
    # A timeout while reading the body still reports the status, as Consul does.
    text = bytes(progress.body[:OUTPUT_MAX_BYTES]).decode("utf-8", "replace")
    output = f"HTTP {first_method} {_redacted(url)}: {progress.status_line} Output: {text}"
    if 200 <= progress.status_code <= 299:
        return "passing", output
    if progress.status_code == 429:  # Too Many Requests (RFC 6585): up, but shedding load
        return "warning", output
    return "critical", output


def _go_op(method: str) -> str:
    """Go's url.Error prefix spells the method "Get", "Post"."""
    return method[:1] + method[1:].lower()


async def _follow(
    progress: _Progress, headers: list[tuple[str, str]], payload: bytes, tls_skip_verify: bool
) -> None:
    """Ask `progress.target`, following redirects as Go's default client does."""
    for _hop in range(_REDIRECTS_MAX + 1):
        redirect = await _exchange(progress, headers, payload, tls_skip_verify)
        if redirect is None:
            return
        code, location = redirect
        try:
            next_target = urljoin(progress.target, location)
        except ValueError:
            raise _ProbeFailed(f"bad redirect location {location[:200]!r}") from None
        # A Host given in the check's headers names the first server only.
        headers = [h for h in headers if h[0].lower() != "host"]
        if _split(next_target).hostname != _split(progress.target).hostname:
            headers = [h for h in headers if h[0].lower() not in _SENSITIVE_HEADERS]
        if code in (301, 302, 303) and progress.method not in ("GET", "HEAD"):
            progress.method, payload = "GET", b""
        progress.target = next_target
    raise _ProbeFailed(f"stopped after {_REDIRECTS_MAX} redirects")


async def _exchange(
    progress: _Progress, headers: list[tuple[str, str]], payload: bytes, tls_skip_verify: bool
) -> tuple[int, str] | None:
    """One request on a fresh connection; (code, location) when it answers a redirect."""
    parts = _split(progress.target)
    if parts.scheme not in ("http", "https"):
        raise _ProbeFailed(f"unsupported protocol scheme {parts.scheme!r}")
    if not parts.hostname:
        raise _ProbeFailed("no host in request URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _ProbeFailed("invalid port in request URL") from None
    stream: trio.abc.Stream = await _dial(parts.hostname, port)
    try:
        if parts.scheme == "https":
            context = _tls_context(verify=not tls_skip_verify)
            stream = trio.SSLStream(
                stream, context, server_hostname=parts.hostname, https_compatible=True
            )
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                raise _ProbeFailed(f"tls: {_tls_reason(exc)}") from None
        return await _request(stream, progress, _request_headers(headers, parts), payload)
    finally:
        await trio.aclose_forcefully(stream)


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL" and friends
        raise _ProbeFailed(f"invalid URL: {exc}") from None


def _redacted(url: str) -> str:
    """`url` with its password replaced, as Go prints URLs: outputs are gossiped to all."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:xxxxx@{hostport}").geturl()


def _tls_reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"failed to verify certificate: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return _lower(cause.reason or str(cause))
    return _os_reason(cause or exc)


def _request_headers(headers: list[tuple[str, str]], parts: SplitResult) -> list[tuple[str, str]]:
    """The check's headers plus the ones Consul adds when they are missing."""
    # We frame the body and close the connection ourselves.
    framed = ("content-length", "transfer-encoding", "connection")
    out = [(n, v) for n, v in headers if n.lower() not in framed]
    names = {name.lower() for name, _ in out}
    if "host" not in names:
        out.insert(0, ("Host", parts.netloc.rpartition("@")[2]))
    if "user-agent" not in names:
        out.append(("User-Agent", _USER_AGENT))
    if "accept" not in names:
        out.append(("Accept", "text/plain, text/*, */*"))
    if parts.username is not None and "authorization" not in names:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        out.append(("Authorization", "Basic " + base64.b64encode(userinfo.encode()).decode()))
    # Consul's checks do not keep connections alive between runs, and neither do we.
    out.append(("Connection", "close"))
    return out


async def _request(
    stream: trio.abc.Stream,
    progress: _Progress,
    headers: list[tuple[str, str]],
    payload: bytes,
) -> tuple[int, str] | None:
    """Send the request and read the answer into `progress`; (code, location) on a redirect."""
    parts = _split(progress.target)
    # Spaces and non-ASCII are escaped (and escapes kept) as Go's url package does.
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE + "?/")
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_MAX_BYTES)
    if payload or progress.method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
        headers = [*headers, ("Content-Length", str(len(payload)))]
    try:
        data = conn.send(h11.Request(method=progress.method, target=target, headers=headers))
        if payload:
            data = (data or b"") + (conn.send(h11.Data(data=payload)) or b"")
        data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    except (h11.LocalProtocolError, UnicodeError) as exc:  # h11 wants ASCII names and values
        raise _ProbeFailed(f"invalid request: {exc}") from None
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _ProbeFailed(f"write: {_os_reason(exc.__cause__ or exc)}") from None
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Response):
            break
        if not isinstance(event, h11.InformationalResponse):  # 1xx: the answer follows
            raise _ProbeFailed("EOF")
    location = dict(event.headers).get(b"location")
    if event.status_code in _REDIRECT_STATUSES and location:
        return event.status_code, location.decode("latin-1")
    progress.status_code = event.status_code
    reason = event.reason.decode("latin-1") or _phrase(event.status_code)
    progress.status_line = f"{event.status_code} {reason}".rstrip()
    progress.body.clear()
    try:
        while len(progress.body) < BODY_READ_MAX_BYTES:
            part = await _next_event(conn, stream)
            if not isinstance(part, h11.Data):
                break
            progress.body += part.data
    except _ProbeFailed:
        pass  # a body cut short still carries the status, as in Consul
    return None


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Event:
    """The next h11 event of the response, reading from `stream` as needed."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _ProbeFailed(f"malformed HTTP response: {exc}") from None
        if isinstance(event, h11.Event):
            return event
        if event is h11.PAUSED:
            raise _ProbeFailed("unexpected data after the response")
        try:
            data = await stream.receive_some(_RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ProbeFailed(f"read: {_os_reason(exc.__cause__ or exc)}") from None
        conn.receive_data(bytes(data))
