"""Requests, responses and the method + path router of the HTTP API.

No I/O here: the server (server.py) turns bytes into a `Request`, asks the
`Router` for a `Response`, and turns that back into bytes. Handlers are plain
``async def handler(request) -> Response``; they may await as long as they like
(long polls, later blocking queries).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = [
    "Guard",
    "Handler",
    "HttpError",
    "Request",
    "Response",
    "Router",
    "json_text",
    "parse_uint",
]

# Digits of a uint64 and then some: every count and index we take fits, and
# int() never meets Python's 4,300-digit conversion limit.
_UINT_MAX_DIGITS = 20


class HttpError(Exception):
    """Raised by a handler (or the router) to answer `status` with a one-line message."""

    def __init__(self, status: int, message: str, *, headers: Iterable[tuple[str, str]] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; header names are lower case, repeated headers joined by ', '."""

    method: str
    path: str  # as sent (still percent-encoded), without the query string
    query: Mapping[str, list[str]]  # parse_qs(keep_blank_values=True): `?passing` -> [""]
    headers: Mapping[str, str]
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)  # from `{name}` segments
    remote: str = ""  # the client's "host:port", for logs
    # Why the target cannot be read (its query is not UTF-8...): the router
    # answers 400 with it before any route or handler sees the request.
    bad_target: str | None = None
    # Set by the router from the route: the answer reveals a secret (a key, a
    # private key), so guards treat even a GET like a write.
    secret: bool = False

    @classmethod
    def from_target(
        cls,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
        remote: str = "",
    ) -> Request:
        """Build a request from a raw request-target such as ``/v1/x?a=1&b``."""
        raw_path, _, raw_query = target.partition("?")
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        bad_target = None
        try:
            # strict: `%ff` must not become U+FFFD, or two different keys collide.
            query = parse_qs(raw_query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            query, bad_target = {}, "query string is not valid UTF-8 after percent-decoding"
        return cls(
            method=method.upper(),
            path=raw_path,
            query=query,
            headers=joined,
            body=body,
            remote=remote,
            bad_target=bad_target,
        )

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name` ("" for a bare `?name`)."""
        values = self.query.get(name)
        return values[0] if values else default

    def has_query(self, name: str) -> bool:
        """True for `?name`, `?name=` and `?name=x` alike (Consul's flag style)."""
        return name in self.query

    def json_body(self) -> Any:
        """The body decoded as JSON; `HttpError(400)` when it is not."""
        if not self.body.strip():
            raise HttpError(400, "request body is empty, expected JSON")
        try:
            return json.loads(self.body)
        except RecursionError:
            raise HttpError(400, "request body is not valid JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None


def json_text(data: Any) -> str:
    """`data` as the API's compact JSON (Consul's spelling: no spaces, UTF-8 kept)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def parse_uint(text: str, name: str, *, max_value: int = 2**64 - 1) -> int:
    """`text` as a non-negative integer of ASCII digits up to `max_value`; 400 otherwise.

    `str.isdigit` alone lets through "²" and "١٢" (int() then raises) and
    numbers long enough to hit int()'s digit limit; both were answered 500.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= _UINT_MAX_DIGITS):
        raise HttpError(400, f"invalid {name} {text[:40]!r}: expected a non-negative integer")
    value = int(text)
    if value > max_value:
        raise HttpError(400, f"invalid {name} {text!r}: the maximum is {max_value}")
    return value


def _decode_segment(text: str) -> str:
    """Percent-decode a path segment strictly: invalid UTF-8 is a 400, not U+FFFD."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(
            400, f"path segment {text[:60]!r} is not valid UTF-8 after percent-decoding"
        ) from None


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler returns: status, body bytes and headers (Content-Type included)."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    @classmethod
    def json(
        cls, data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """`data` as compact JSON (Consul's default content type)."""
        body = json_text(data).encode("utf-8")
        return cls(status=status, body=body, headers=tuple(headers))

    @classmethod
    def empty(cls, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """No body, as Consul answers join, leave and keyring writes."""
        return cls(status=status, headers=tuple(headers))

    @classmethod
    def error(cls, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A one-line JSON error: ``{"error": "..."}``."""
        one_line = " ".join(message.split())
        return cls.json({"error": one_line}, status=status, headers=headers)


Handler = Callable[[Request], Awaitable[Response]]
# Runs before a handler; refuses the request by raising `HttpError` (auth, for one).
Guard = Callable[[Request], None]

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_TAIL = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\*\}$")


@dataclass(frozen=True, slots=True)
class _Route:
    segments: tuple[str, ...]  # literal segments, or "{name}" placeholders
    handlers: dict[str, Handler]
    secret_methods: set[str] = field(default_factory=set)
    # Parsed once, not on every request: each fixed segment as (literal, None)
    # or (placeholder, its name), and the name of a last "{name*}" segment.
    fixed: tuple[tuple[str, str | None], ...] = ()
    tail: str | None = None

    @classmethod
    def of(cls, segments: tuple[str, ...]) -> _Route:
        tail = _TAIL.match(segments[-1]) if segments else None
        fixed = segments[:-1] if tail else segments
        parsed = tuple((s, m.group(1) if (m := _PARAM.match(s)) else None) for s in fixed)
        return cls(segments, {}, fixed=parsed, tail=tail.group(1) if tail else None)

    def match(self, parts: list[str], trailing_slash: bool = False) -> dict[str, str] | None:
        fixed, tail = self.fixed, self.tail
        if len(parts) != len(fixed) and not (tail is not None and len(parts) >= len(fixed)):
            return None
        # Literals first: a path that matches no route is a 404 whatever its bytes.
        for (literal, name), part in zip(fixed, parts, strict=False):  # parts may run on (tail)
            if not part or (name is None and literal != part):
                return None
        params = {
            name: _decode_segment(part)
            for (_, name), part in zip(fixed, parts, strict=False)
            if name is not None
        }
        if tail is not None:
            rest = "/".join(parts[len(fixed) :])
            params[tail] = _decode_segment(rest) + ("/" if rest and trailing_slash else "")
        return params


def _split(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


class Router:
    """Maps (method, path pattern) to handlers; 404 for unknown paths, 405 for methods.

    Patterns are literal segments and ``{name}`` placeholders that match one
    non-empty segment, e.g. ``/v1/agent/force-leave/{node}``; the percent-decoded
    value lands in ``request.params["node"]``. A last segment ``{name*}`` takes the
    rest of the path, slashes included and possibly empty (``/v1/kv/{key*}``).
    Routes are tried in the order added.
    """

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        self._guards: list[Guard] = []

    def add_guard(self, guard: Guard) -> None:
        """Run `guard(request)` before every routed handler; it refuses by raising `HttpError`.

        Guards see only requests that reached a real route, so an unknown path
        is still a 404 and a wrong method a 405, whatever the guard thinks.
        """
        self._guards.append(guard)

    def add(
        self,
        methods: str | Iterable[str],
        pattern: str,
        handler: Handler,
        *,
        secret: bool = False,
    ) -> None:
        """Register `handler` for `methods` (``"GET"`` or ``["PUT", "POST"]``) on `pattern`.

        `secret`: the answer reveals a secret; requests reach the handler with
        ``request.secret`` set, so a token guard protects the read too.
        """
        names = [methods] if isinstance(methods, str) else list(methods)
        segments = tuple(_split(pattern))
        route = next((r for r in self._routes if r.segments == segments), None)
        if route is None:
            route = _Route.of(segments)
            self._routes.append(route)
        for method in names:
            if method.upper() in route.handlers:
                raise ValueError(f"{method.upper()} {pattern} is already routed")
            route.handlers[method.upper()] = handler
            if secret:
                route.secret_methods.add(method.upper())

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str], bool]:
        """The handler, path parameters and secrecy of a request; raises `HttpError` 404/405."""
        parts = _split(path)
        allowed: set[str] = set()
        for route in self._routes:
            params = route.match(parts, path.endswith("/"))
            if params is None:
                continue
            handler = route.handlers.get(method.upper())
            if handler is not None:
                return handler, params, method.upper() in route.secret_methods
            allowed.update(route.handlers)
        if allowed:
            allow = ", ".join(sorted(allowed))
            raise HttpError(
                405,
                f"method {method} not allowed on {path} (allowed: {allow})",
                headers=[("Allow", allow)],
            )
        raise HttpError(404, f"no such endpoint: {path}")

    async def dispatch(self, request: Request) -> Response:
        """Route `request`; `HttpError` from routing or the handler becomes its response."""
        try:
            if request.bad_target is not None:
                raise HttpError(400, request.bad_target)
            handler, params, secret = self.resolve(request.method, request.path)
            request = replace(request, params=params, secret=secret)
            for guard in self._guards:
                guard(request)
            return await handler(request)
        except HttpError as exc:
            return Response.error(exc.status, exc.message, headers=exc.headers)
