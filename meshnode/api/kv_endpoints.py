"""/v1/kv/<key>: Consul's KV shapes over meshnode's last-writer-wins replicated store.

- ``PUT`` takes the raw value bytes as the body and answers ``true``.
- ``GET`` answers ``[{"Key", "Value" (base64), "Flags": 0, "CreateIndex",
  "ModifyIndex", "LockIndex": 0, "Session": ""}]`` or 404; ``?recurse`` lists a
  prefix, ``?keys`` lists key names, ``?raw`` answers the value's bytes.
  ``X-Consul-Index`` is the KV index; ``?index=N&wait=5s`` blocks until it
  moves past N (default wait 5 min, at most 10 min, as Consul).
- ``DELETE`` (``?recurse`` for a prefix) answers ``true``.
- No check-and-set, sessions or locks: ``?cas``, ``?acquire``, ``?release``
  answer 400 saying so, rather than silently doing an unconditional write.
"""

from __future__ import annotations

import base64
import re

from ..durations import DurationError, DurationRangeError, parse_duration_s
from ..http import HttpError, Request, Response, Router, parse_uint
from .errors import facade_errors
from .facade import AgentFacade, KvEntry

__all__ = [
    "KEY_MAX_BYTES",
    "VALUE_MAX_BYTES",
    "parse_index",
    "parse_wait",
    "register_kv_routes",
    "validate_key",
]

# gossip/store.py's StoreLimits: Consul's practical key size and kv_max_value_size.
KEY_MAX_BYTES = 512
VALUE_MAX_BYTES = 512 * 1024
# Consul's blocking query defaults: 5 minutes unless told, never more than 10.
WAIT_DEFAULT_S = 300.0
WAIT_MAX_S = 600.0
_KIND_INDEX_HEADER = "X-Consul-Index"
# A bare number is seconds: Consul needs a unit, but this API always took one.
_BARE_SECONDS = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")

_NO_CAS = "meshnode KV is last-writer-wins; check-and-set is not supported"
_NO_LOCKS = (
    "meshnode KV is last-writer-wins; sessions and locks (?acquire, ?release) are not supported"
)


def validate_key(key: str, *, allow_empty: bool = False) -> None:
    """400 unless `key` is a valid KV key: non-empty, no leading '/', at most 512 bytes."""
    if not key:
        if allow_empty:
            return
        raise HttpError(400, "missing key: use /v1/kv/<key>")
    if key.startswith("/"):
        raise HttpError(400, f"key {key[:60]!r} must not start with '/'")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise HttpError(400, "key is not valid UTF-8") from None
    if size > KEY_MAX_BYTES:
        raise HttpError(400, f"key is {size} bytes, the limit is {KEY_MAX_BYTES}")


def parse_wait(text: str | None) -> float:
    """Consul's ``wait`` (``10s``, ``500ms``, ``1m30s``, bare seconds), capped at 10 minutes.

    The grammar is `meshnode.durations` (Go's, as Consul parses it).
    """
    if text is None or text == "":
        return WAIT_DEFAULT_S
    raw = text.strip()
    if _BARE_SECONDS.match(raw):
        return min(float(raw), WAIT_MAX_S)
    try:
        return min(parse_duration_s(raw), WAIT_MAX_S)
    except DurationRangeError:
        return WAIT_MAX_S  # longer than any wait: the cap, as before
    except DurationError:
        raise HttpError(400, f"invalid wait {text!r}: use a duration such as 10s or 5m") from None


def parse_index(text: str | None) -> int | None:
    """Consul's ``?index=`` of a blocking query; None when absent, 400 when not a number."""
    if text is None or text == "":
        return None
    return parse_uint(text, "index")


def kv_json(entry: KvEntry) -> dict[str, object]:
    return {
        "Key": entry.key,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
        "Flags": 0,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
        "LockIndex": 0,
        "Session": "",
    }


def _refuse_unsupported(request: Request) -> None:
    if request.has_query("cas"):
        raise HttpError(400, _NO_CAS)
    if request.has_query("acquire") or request.has_query("release"):
        raise HttpError(400, _NO_LOCKS)


def register_kv_routes(router: Router, agent: AgentFacade) -> None:
    """Add /v1/kv/<key> (GET, PUT, DELETE) backed by `agent`."""

    async def get(request: Request) -> Response:
        key = request.params.get("key", "")
        recurse = request.has_query("recurse") or request.has_query("keys")
        validate_key(key, allow_empty=recurse)
        index = parse_index(request.query_value("index"))
        if index is not None:
            wait_s = parse_wait(request.query_value("wait"))
            current = await agent.kv_wait(index, wait_s)
        else:
            current = agent.kv_index()
        headers = [(_KIND_INDEX_HEADER, str(max(1, current)))]
        if request.has_query("keys"):
            separator = request.query_value("separator") or ""
            names: list[str] = []
            for entry in agent.kv_list(key):
                name = entry.key
                if separator:
                    cut = name.find(separator, len(key))
                    if cut >= 0:
                        name = name[: cut + len(separator)]
                if not names or names[-1] != name:
                    names.append(name)
            if not names:
                raise HttpError(404, f"no key exists under {key!r}", headers=headers)
            return Response.json(names, headers=headers)
        if request.has_query("recurse"):
            found = agent.kv_list(key)
            if not found:
                raise HttpError(404, f"no key exists under {key!r}", headers=headers)
            return Response.json([kv_json(e) for e in found], headers=headers)
        one = agent.kv_get(key)
        if one is None:
            raise HttpError(404, f"no key exists at {key!r}", headers=headers)
        if request.has_query("raw"):
            return Response(
                body=one.value, headers=tuple(headers), content_type="application/octet-stream"
            )
        return Response.json([kv_json(one)], headers=headers)

    async def put(request: Request) -> Response:
        key = request.params.get("key", "")
        _refuse_unsupported(request)
        validate_key(key)
        if request.has_query("flags") and request.query_value("flags") not in ("", "0"):
            raise HttpError(400, "meshnode KV does not store flags; omit ?flags or use 0")
        if len(request.body) > VALUE_MAX_BYTES:
            raise HttpError(
                413, f"value is {len(request.body)} bytes, the limit is {VALUE_MAX_BYTES}"
            )
        with facade_errors():
            agent.kv_put(key, request.body)
        return Response.json(True)

    async def delete(request: Request) -> Response:
        key = request.params.get("key", "")
        _refuse_unsupported(request)
        recurse = request.has_query("recurse")
        validate_key(key, allow_empty=recurse)
        with facade_errors():
            agent.kv_delete(key, recurse=recurse)
        return Response.json(True)

    router.add("GET", "/v1/kv/{key*}", get)
    router.add("PUT", "/v1/kv/{key*}", put)
    router.add("DELETE", "/v1/kv/{key*}", delete)
