"""The three sources over the local agent's HTTP API, with blocking queries (`connect proxy`).

- Certificates: ``GET /v1/agent/connect/ca/leaf/<service>`` (CertPEM is the
  leaf then its chain) and ``GET /v1/agent/connect/ca/roots``, each followed
  with ``?index=&wait=``; new material as soon as either changes.
- Intentions: ``GET /v1/connect/intentions`` followed the same way into an
  `IntentionIndex`, so each connection is decided here in microseconds, not
  by an HTTP round trip (``/v1/agent/connect/authorize``) per connection.
  Until the first list arrives every connection is denied: failing closed.
- Instances: ``GET /v1/health/connect/<destination>?passing``, fetched on
  the first connection to a destination and then followed.
- Revocations: ``GET /v1/connect/ca/revocations`` followed into a
  `RevocationSet`. Until the first list arrives nothing is revoked: an
  agent that cannot be reached must not stop every connection (the roots
  and the leaf stop new ones when they expire).

A failed request is logged and retried with a doubling delay (1 s to 30 s);
what was last fetched stays in use meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import h11
import trio

from ..ca.revocation import Revocation, RevocationError, RevocationSet, parse_serial
from ..intentions.rules import Intention, IntentionError, IntentionIndex, make_intention
from ..logs import get_logger, log
from ..proxy.revocation import RevocationList
from ..proxy.sources import Instance, TlsMaterial, Versioned

__all__ = [
    "AgentHttp",
    "HttpAuthorizer",
    "HttpCertSource",
    "HttpError",
    "HttpResolver",
    "HttpRevocations",
]

_log = get_logger("proxy")
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0
_WAIT = "300s"  # Consul's blocking-query maximum is 10 min; 5 is its default
_WAIT_S = 300.0
_BODY_MAX_BYTES = 16 * 1024 * 1024  # a catalog answer, never unbounded
_TOKEN_HEADER = "X-Consul-Token"


class HttpError(Exception):
    """The agent answered an error status or could not be reached (one line)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class AgentHttp:
    """Where the agent's HTTP API is, and the token for requests that need one."""

    host: str
    port: int
    token: str | None = None
    timeout_s: float = 10.0

    async def request(
        self, method: str, path: str, body: Any = None, *, wait_s: float = 0.0
    ) -> tuple[Any, int]:
        """(decoded JSON body, X-Consul-Index) of one request; `HttpError` on failure."""
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [("Host", f"{self.host}:{self.port}"), ("Connection", "close")]
        if payload or method in ("PUT", "POST"):
            headers.append(("Content-Length", str(len(payload))))
        if self.token:
            headers.append((_TOKEN_HEADER, self.token))
        where = f"{method} {path.split('?')[0]}"
        with trio.move_on_after(self.timeout_s + wait_s * 1.1) as timer:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise HttpError(f"{where}: cannot reach the agent: {exc}") from None
            async with stream:
                status, index, data = await _exchange(stream, method, path, headers, payload)
        if timer.cancelled_caught:
            raise HttpError(f"{where}: no answer from the agent in time")
        if status >= 400:
            raise HttpError(f"{where}: {status} {_error_text(data)}", status)
        try:
            return (json.loads(data) if data.strip() else None), index
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(f"{where}: the agent's answer is not JSON") from None


async def _exchange(
    stream: trio.SocketStream,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    payload: bytes,
) -> tuple[int, int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
    if payload:
        out += conn.send(h11.Data(data=payload)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    try:
        await stream.send_all(out)
        status, index, body = 0, 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name.lower() == b"x-consul-index" and value.isdigit():
                        index = int(value)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _BODY_MAX_BYTES:
                    raise HttpError(f"{method} {path}: answer over {_BODY_MAX_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, index, bytes(body)
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise HttpError(f"{method} {path}: {exc}") from None


def _error_text(data: bytes) -> str:
    try:
        found = json.loads(data)
        if isinstance(found, dict) and isinstance(found.get("error"), str):
            return str(found["error"])[:300]
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return data.decode("utf-8", "replace").strip()[:300]


async def _follow(
    agent: AgentHttp,
    path: str,
    apply: Any,
    what: str,
    first: trio.Event | None = None,
    note_error: Callable[[HttpError], None] | None = None,
) -> None:
    """Blocking-query `path` forever, calling `apply(body)` with each new answer."""
    index = 0
    delay_s = _RETRY_MIN_S
    sep = "&" if "?" in path else "?"
    while True:
        try:
            query = f"{path}{sep}index={index}&wait={_WAIT}" if index else path
            body, new_index = await agent.request("GET", query, wait_s=_WAIT_S if index else 0)
        except HttpError as exc:
            log(_log, "warning", f"cannot follow {what}", error=exc)
            if note_error is not None:
                note_error(exc)
            if first is not None:
                first.set()
            await trio.sleep(delay_s)
            delay_s = min(_RETRY_MAX_S, delay_s * 2)
            continue
        delay_s = _RETRY_MIN_S
        # An index that went backwards is an agent restart: start over (Consul's rule).
        if new_index < index:
            new_index = 0
        if new_index != index or index == 0:
            apply(body)
        if first is not None:
            first.set()
        index = max(new_index, 1)


class HttpCertSource:
    """A `CertSource` following the agent's leaf for one service and its roots."""

    def __init__(self, agent: AgentHttp, service: str) -> None:
        self._agent = agent
        self.service = service
        self._versions = Versioned()
        self._material: TlsMaterial | None = None
        self._leaf: dict[str, Any] | None = None
        self._roots: dict[str, Any] | None = None
        self.last_error: HttpError | None = None  # why there is no material, for the CLI

    def current(self) -> TlsMaterial | None:
        return self._material

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)

    def _note_error(self, exc: HttpError) -> None:
        self.last_error = exc

    def _set_leaf(self, body: Any) -> None:
        if isinstance(body, dict) and isinstance(body.get("CertPEM"), str):
            self._leaf = body
            self._rebuild()

    def _set_roots(self, body: Any) -> None:
        if isinstance(body, dict) and isinstance(body.get("Roots"), list):
            self._roots = body
            self._rebuild()

    def _rebuild(self) -> None:
        leaf, roots = self._leaf, self._roots
        if leaf is None or roots is None or not roots["Roots"]:
            return
        pems = "".join(str(r.get("RootCert", "")) for r in roots["Roots"] if isinstance(r, dict))
        material = TlsMaterial(
            service=self.service,
            spiffe_id=str(leaf.get("ServiceURI", "")),
            trust_domain=str(roots.get("TrustDomain", "")),
            cert_chain_pem=str(leaf["CertPEM"]),
            key_pem=str(leaf.get("PrivateKeyPEM", "")),
            roots_pem=pems,
            generation=self._versions.generation + 1,
        )
        old = self._material
        if old is not None and (old.cert_chain_pem, old.roots_pem) == (
            material.cert_chain_pem,
            material.roots_pem,
        ):
            return
        self._material = material
        self._versions.bump()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow leaf and roots until cancelled; started after the first try of each."""
        leaf_tried, roots_tried = trio.Event(), trio.Event()
        leaf_path = f"/v1/agent/connect/ca/leaf/{quote(self.service, safe='')}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _follow,
                self._agent,
                leaf_path,
                self._set_leaf,
                "the leaf",
                leaf_tried,
                self._note_error,
            )
            nursery.start_soon(
                _follow,
                self._agent,
                "/v1/agent/connect/ca/roots",
                self._set_roots,
                "the CA roots",
                roots_tried,
                self._note_error,
            )
            await leaf_tried.wait()
            await roots_tried.wait()
            task_status.started()


class HttpAuthorizer:
    """An `Authorizer` over the agent's intention list, followed by blocking queries."""

    def __init__(self, agent: AgentHttp) -> None:
        self._agent = agent
        self._versions = Versioned()
        self._index: IntentionIndex | None = None

    @property
    def generation(self) -> int:
        return self._versions.generation

    def allowed(self, source: str, destination: str) -> tuple[bool, str]:
        if self._index is None:
            return False, "the intentions are not loaded from the agent yet"
        decision = self._index.decide(source, destination)
        return decision.allowed, decision.reason

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)

    def _apply(self, body: Any) -> None:
        if not isinstance(body, list):
            return
        found: list[Intention] = []
        for item in body:
            if not isinstance(item, dict):
                continue
            try:
                found.append(
                    make_intention(
                        str(item.get("SourceName", "")),
                        str(item.get("DestinationName", "")),
                        str(item.get("Action", "")),
                    )
                )
            except IntentionError as exc:
                log(_log, "warning", "skipped an intention from the agent", error=exc)
        self._index = IntentionIndex(found)
        self._versions.bump()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tried = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _follow, self._agent, "/v1/connect/intentions", self._apply, "intentions", tried
            )
            await tried.wait()
            task_status.started()


def _instances(body: Any) -> list[Instance]:
    found: list[Instance] = []
    for entry in body if isinstance(body, list) else []:
        if not isinstance(entry, dict):
            continue
        node, service = entry.get("Node"), entry.get("Service")
        if not isinstance(node, dict) or not isinstance(service, dict):
            continue
        port = service.get("Port")
        if not isinstance(port, int) or not 0 < port < 65536:
            continue
        address = str(service.get("Address") or node.get("Address") or "")
        if address:
            found.append(
                Instance(address, port, str(node.get("Node", "")), str(service.get("ID", "")))
            )
    return found


class HttpResolver:
    """A `Resolver` over ``/v1/health/connect/<destination>?passing``, one follower each."""

    def __init__(self, agent: AgentHttp) -> None:
        self._agent = agent
        self._versions = Versioned()
        self._table: dict[str, list[Instance]] = {}
        self._tried: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def generation(self) -> int:
        return self._versions.generation

    def _setter(self, destination: str) -> Any:
        def apply(body: Any) -> None:
            self._table[destination] = _instances(body)
            self._versions.bump()

        return apply

    async def instances(self, destination: str) -> Sequence[Instance]:
        tried = self._tried.get(destination)
        if tried is None:
            if self._nursery is None:
                raise RuntimeError("HttpResolver.run is not running")
            tried = self._tried[destination] = trio.Event()
            path = f"/v1/health/connect/{quote(destination, safe='')}?passing"
            what = f"{destination}'s proxies"
            self._nursery.start_soon(
                _follow, self._agent, path, self._setter(destination), what, tried
            )
        await tried.wait()  # every first caller waits for the first answer, not just one
        return self._table.get(destination, [])

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()


def _revocations(body: Any) -> list[Revocation]:
    found: list[Revocation] = []
    for item in body if isinstance(body, list) else []:
        if not isinstance(item, dict):
            continue
        try:
            serial = parse_serial(str(item.get("SerialNumber", "")))
            key = bytes.fromhex(str(item.get("PublicKeySHA256", "")))
        except (RevocationError, ValueError) as exc:
            log(_log, "warning", "skipped a revocation from the agent", error=exc)
            continue
        # Only what a check needs: times stay on the agent.
        found.append(Revocation(serial, key, 0.0, 0.0, str(item.get("Reason", ""))[:256], "agent"))
    return found


class HttpRevocations(RevocationList):
    """A `RevocationSource` over the agent's revocation list, followed by blocking queries."""

    def __init__(self, agent: AgentHttp) -> None:
        super().__init__()
        self._agent = agent

    def _apply(self, body: Any) -> None:
        if isinstance(body, list):
            self.replace(RevocationSet(_revocations(body)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tried = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _follow,
                self._agent,
                "/v1/connect/ca/revocations",
                self._apply,
                "revocations",
                tried,
            )
            await tried.wait()
            task_status.started()
