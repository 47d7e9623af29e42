"""The CLI's HTTP client for the local agent (stdlib http.client, blocking).

Every failure becomes a `ClientError` whose message is one line saying what
went wrong and where, so the CLI can print it as is and exit 1.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import quote

from .addr import AddressError, format_host_port, parse_host_port

__all__ = [
    "DEFAULT_HTTP_ADDR",
    "ENV_HTTP_ADDR",
    "ENV_HTTP_ADDRS",
    "ENV_HTTP_TOKENS",
    "TOKEN_META_KEY",
    "AgentClient",
    "ClientError",
    "resolve_http_addr",
    "resolve_token",
]

# Consul's default HTTP address; the agent listens there unless told otherwise.
DEFAULT_HTTP_ADDR = "127.0.0.1:8500"
ENV_HTTP_ADDR = "MESHNODE_HTTP_ADDR"
# Where the agent is, ours first: Consul's variable works too, so a shell set
# up for Consul's tools drives meshnode unchanged.
ENV_HTTP_ADDRS = (ENV_HTTP_ADDR, "CONSUL_HTTP_ADDR")
# The agent token for writes (the agent's --api-token); Consul's variable works too.
ENV_HTTP_TOKENS = ("MESHNODE_HTTP_TOKEN", "CONSUL_HTTP_TOKEN")
# Where the CLI's --token option leaves its value (click's per-invocation context).
TOKEN_META_KEY = "meshnode.token"


class ClientError(Exception):
    """A request to the agent failed; the message is one line for the user."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


def resolve_http_addr(flag_value: str | None) -> tuple[str, int]:
    """The agent address: the flag, else $MESHNODE_HTTP_ADDR, $CONSUL_HTTP_ADDR, 127.0.0.1:8500.

    ``http://`` in front is accepted (as CONSUL_HTTP_ADDR allows); https is not served.
    """
    from_env = (os.environ.get(name) for name in ENV_HTTP_ADDRS)
    text = flag_value or next((v for v in from_env if v), None) or DEFAULT_HTTP_ADDR
    raw = text.strip()
    if raw.startswith("https://"):
        raise ClientError(f"bad agent address {text!r}: the agent serves plain http")
    raw = raw.removeprefix("http://").rstrip("/")
    try:
        return parse_host_port(raw, default_port=8500, require_ip=False)
    except AddressError as exc:
        raise ClientError(f"bad agent address: {exc}") from None


def resolve_token(explicit: str | None = None) -> str | None:
    """The token to send: given, else the CLI's --token, else the environment."""
    if explicit:
        return explicit
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(TOKEN_META_KEY):
        return str(ctx.meta[TOKEN_META_KEY])
    for name in ENV_HTTP_TOKENS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _error_text(body: bytes) -> str:
    """The one-line message of an error response (JSON ``{"error": ...}`` or text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        text = data["error"]
    return " ".join(text.split()) or "(no message)"


class AgentClient:
    """Calls the agent's HTTP API; one short-lived connection per call."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0, token: str | None = None):
        # 30 s: a graceful leave waits for the broadcast to go out, which takes
        # seconds on a large cluster; every other call answers in milliseconds.
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.token = token
        self.addr = format_host_port(host, port)

    @classmethod
    def from_flag(
        cls, flag_value: str | None, *, timeout_s: float = 30.0, token: str | None = None
    ) -> AgentClient:
        host, port = resolve_http_addr(flag_value)
        return cls(host, port, timeout_s=timeout_s, token=resolve_token(token))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer (None for an empty body)."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        status, data = self._exchange(method, path, payload, headers)
        if status >= 400:
            raise ClientError(f"the agent answered {status}: {_error_text(data)}", status=status)
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise ClientError(f"the agent at {self.addr} sent a reply that is not JSON") from None

    def request_raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send raw bytes; (status, body) for any status below 500 (404 is an answer)."""
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        status, data = self._exchange(method, path, body, headers)
        if status >= 400 and status != 404:
            raise ClientError(f"the agent answered {status}: {_error_text(data)}", status=status)
        return status, data

    def _exchange(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        if self.token:
            headers = {**headers, "X-Consul-Token": self.token}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ConnectionRefusedError:
            raise ClientError(
                f"cannot reach the agent at {self.addr}: connection refused"
                " — is `meshnode agent` running?"
            ) from None
        except TimeoutError:
            raise ClientError(
                f"the agent at {self.addr} did not answer within {self.timeout_s:g} s"
            ) from None
        except socket.gaierror as exc:
            raise ClientError(
                f"cannot resolve the agent address {self.addr}: {exc.strerror}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ClientError(f"cannot talk to the agent at {self.addr}: {reason}") from None
        finally:
            conn.close()
        return response.status, data

    # The endpoints the CLI uses, with Consul's paths.

    def _get(self, path: str, kind: type[Any]) -> Any:
        result = self.request("GET", path)
        if not isinstance(result, kind):
            raise ClientError(f"unexpected answer from {path}: not a JSON {kind.__name__}")
        return result

    def members(self) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = self._get("/v1/agent/members", list)
        return members

    def join(self, address: str) -> None:
        self.request("PUT", f"/v1/agent/join/{quote(address, safe=':[]')}")

    def leave(self) -> None:
        self.request("PUT", "/v1/agent/leave")

    def force_leave(self, node: str) -> None:
        self.request("PUT", f"/v1/agent/force-leave/{quote(node, safe='')}")

    def self_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._get("/v1/agent/self", dict)
        return info

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self._get("/v1/agent/metrics", dict)
        return metrics

    def keyring_list(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self._get("/v1/operator/keyring", list)
        return entries

    def keyring_install(self, key: str) -> None:
        self.request("POST", "/v1/operator/keyring", {"Key": key})

    def keyring_use(self, key: str) -> None:
        self.request("PUT", "/v1/operator/keyring", {"Key": key})

    def keyring_remove(self, key: str) -> None:
        self.request("DELETE", "/v1/operator/keyring", {"Key": key})

    # KV: raw bytes in, Consul's JSON (or raw bytes) out.

    @staticmethod
    def _kv_path(key: str, query: str = "") -> str:
        return f"/v1/kv/{quote(key, safe='/')}" + (f"?{query}" if query else "")

    def kv_put(self, key: str, value: bytes) -> None:
        self.request_raw("PUT", self._kv_path(key), value)

    def kv_get_raw(self, key: str) -> bytes | None:
        """The value's bytes, or None when the key does not exist."""
        status, data = self.request_raw("GET", self._kv_path(key, "raw"))
        return None if status == 404 else data

    def _kv_list_at(self, path: str) -> list[Any]:
        """The JSON list a recurse/keys read answers ([] on 404: nothing there)."""
        status, data = self.request_raw("GET", path)
        if status == 404:
            return []
        try:
            found = json.loads(data)
        except ValueError:
            raise ClientError(f"the agent at {self.addr} sent a reply that is not JSON") from None
        if not isinstance(found, list):
            raise ClientError(f"unexpected answer from {path}: not a JSON list")
        return found

    def kv_list(self, prefix: str) -> list[dict[str, Any]]:
        """Consul's entries under `prefix` ([] when none)."""
        return [
            e for e in self._kv_list_at(self._kv_path(prefix, "recurse")) if isinstance(e, dict)
        ]

    def kv_keys(self, prefix: str, separator: str = "") -> list[str]:
        query = "keys" + (f"&separator={quote(separator, safe='')}" if separator else "")
        return [str(k) for k in self._kv_list_at(self._kv_path(prefix, query))]

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        self.request_raw("DELETE", self._kv_path(key, "recurse" if recurse else ""))
