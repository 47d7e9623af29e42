"""Managed sidecars: a `Proxy` per local connect-proxy service, following the catalog.

The agent feeds `SidecarManager.update` with this node's service records
(`Catalog.local_services()`) once, then `SidecarManager.apply` with the
records that changed (`Catalog.subscribe_local`): a change costs O(the
changed records), not O(local services) (issue 6). Records of kind
``connect-proxy`` with a ``Proxy`` block become proxies (the catalog makes
one ``<id>-sidecar-proxy`` per ``connect.sidecar_service``); a record that
disappears stops its proxy and closes its connections; a record whose
proxy settings changed restarts its proxy (its live connections end: the
listener may have moved).

Several agents on one host all start their sidecar ports at 21000: a port of
that range found taken by another process moves to the next free one, and
`move_port` (the catalog) is told, so the catalog and DNS show the port that
really serves. The "listening" check of a managed sidecar is answered by
`listening_status` from the proxy's own state, never by dialling the port,
where another agent's sidecar could answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from ..catalog.checks import CheckSpec, Probe, run_probe
from ..catalog.plan import SIDECAR_PORT_MAX, SIDECAR_PORT_MIN
from ..catalog.records import ServiceRecord
from ..logs import get_logger, log
from ..proxy.revocation import RevocationSource
from ..proxy.sidecar import Limits, Proxy, ProxyConfig, UpstreamConfig
from ..proxy.sources import Authorizer, CertSource, DecisionLog, Resolver

__all__ = [
    "FollowingCertSource",
    "ProxyRegistry",
    "SidecarManager",
    "SidecarProbe",
    "sidecar_configs",
]

_log = get_logger("proxy")


class FollowingCertSource(CertSource, Protocol):
    """A `CertSource` that keeps itself current while its `run` is running."""

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


class ProxyRegistry(Protocol):
    """What `GET /v1/agent/connect/proxies` lists: each proxy's `Proxy.snapshot()`."""

    def snapshot(self) -> list[dict[str, Any]]: ...


def sidecar_configs(
    records: Iterable[ServiceRecord], *, default_address: str, limits: Limits
) -> dict[str, ProxyConfig]:
    """Proxy configs of the connect-proxy records among `records`, by proxy service ID.

    The public listener binds the record's address, else `default_address`
    (the agent's advertised IP), which is where other agents will dial it.
    """
    found: dict[str, ProxyConfig] = {}
    for record in records:
        proxy = record.proxy
        if record.kind != "connect-proxy" or proxy is None or record.port <= 0:
            continue
        found[record.service_id] = ProxyConfig(
            proxy_id=record.service_id,
            service=proxy.destination_service_name,
            listen_address=record.address or default_address,
            listen_port=record.port,
            # A port from the automatic range may move within it (see the module doc).
            listen_port_range=(SIDECAR_PORT_MIN, SIDECAR_PORT_MAX)
            if SIDECAR_PORT_MIN <= record.port <= SIDECAR_PORT_MAX
            else None,
            local_service_address=proxy.local_service_address or "127.0.0.1",
            local_service_port=proxy.local_service_port,
            upstreams=tuple(
                UpstreamConfig(u.destination_name, u.local_bind_port, u.local_bind_address)
                for u in proxy.upstreams
            ),
            limits=limits,
        )
    return found


@dataclass(slots=True)
class _Running:
    config: ProxyConfig
    proxy: Proxy
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class SidecarManager:
    """The agent's sidecars; `run` in the agent's nursery, then `update` on catalog changes."""

    def __init__(
        self,
        *,
        certs_for: Callable[[str], FollowingCertSource],
        authorizer: Authorizer,
        resolver: Resolver,
        default_address: str,
        limits: Limits | None = None,
        rng: random.Random | None = None,
        audit: DecisionLog | None = None,
        revocations: RevocationSource | None = None,
        move_port: Callable[[str, int], None] | None = None,
    ) -> None:
        """`move_port(proxy_id, port)`: record that a proxy serves on another port than asked."""
        self._certs_for = certs_for
        self._move_port = move_port
        self._revocations = revocations
        self._audit = audit
        self._authorizer = authorizer
        self._resolver = resolver
        self.default_address = default_address
        self.limits = limits or Limits()
        self._rng = rng or random.Random()
        self._running: dict[str, _Running] = {}
        self._nursery: trio.Nursery | None = None
        self._records: dict[str, ServiceRecord] = {}  # this node's, by service ID

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the sidecars until cancelled (then every one stops)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._reconcile(list(self._records))
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def update(self, records: Iterable[ServiceRecord]) -> None:
        """Reconcile with all of this node's service records: start, restart and stop sidecars."""
        old = set(self._records)
        self._records = {r.service_id: r for r in records}
        self._reconcile([*old, *self._records])

    def apply(self, changes: dict[str, ServiceRecord | None]) -> None:
        """Reconcile only these service IDs (None: removed); other sidecars are not looked at."""
        for service_id, record in changes.items():
            if record is None:
                self._records.pop(service_id, None)
            else:
                self._records[service_id] = record
        self._reconcile(list(changes))

    def _reconcile(self, service_ids: list[str]) -> None:
        if self._nursery is None:
            return  # `run` reconciles everything when it starts
        records = [self._records[i] for i in service_ids if i in self._records]
        wanted = sidecar_configs(records, default_address=self.default_address, limits=self.limits)
        for proxy_id in dict.fromkeys(service_ids):
            running = self._running.get(proxy_id)
            if running is not None and wanted.get(proxy_id) != running.config:
                self._stop(proxy_id, "sidecar removed" if proxy_id not in wanted else "restarted")
        for proxy_id, config in wanted.items():
            if proxy_id not in self._running:
                self._start(config)

    def _start(self, config: ProxyConfig) -> None:
        assert self._nursery is not None
        certs = self._certs_for(config.service)
        proxy = Proxy(
            config,
            certs=certs,
            authorizer=self._authorizer,
            resolver=self._resolver,
            rng=random.Random(self._rng.random()),
            audit=self._audit,
            revocations=self._revocations,
        )
        running = _Running(config, proxy)
        self._running[config.proxy_id] = running
        self._nursery.start_soon(self._serve, running, certs)

    async def _serve(self, running: _Running, certs: FollowingCertSource) -> None:
        with running.scope:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(certs.run)
                    await nursery.start(running.proxy.run)
                    self._moved(running)
            except* OSError as group:  # the port is taken: its catalog check fails too
                log(
                    _log,
                    "error",
                    "sidecar could not start",
                    id=running.config.proxy_id,
                    error=group.exceptions[0],
                )
        if self._running.get(running.config.proxy_id) is running:
            del self._running[running.config.proxy_id]

    def _moved(self, running: _Running) -> None:
        """Tell the catalog when the proxy had to take another port than its record's."""
        port = running.proxy.inbound_port
        if port is None or port == running.config.listen_port:
            return
        # Before the catalog write: the record it triggers then equals the running config,
        # so the proxy is not restarted for its own move.
        running.config = replace(running.config, listen_port=port)
        if self._move_port is None:
            return
        try:
            self._move_port(running.config.proxy_id, port)
        except Exception as exc:  # the store refused: the check says where we listen
            log(_log, "error", "sidecar port not recorded", id=running.config.proxy_id, error=exc)

    def listening_status(self, spec: CheckSpec) -> tuple[str, str] | None:
        """(status, output) of a managed sidecar's TCP check, from its own listener; else None.

        A check is a sidecar's when its ID is ``service:<proxy id>`` of a local
        connect-proxy record and it targets that record's port.
        """
        proxy_id = spec.check_id.removeprefix("service:")
        record = self._records.get(proxy_id)
        if spec.kind != "tcp" or proxy_id == spec.check_id or record is None:
            return None
        if record.kind != "connect-proxy" or record.proxy is None:
            return None
        _, _, port_text = spec.tcp.rpartition(":")
        if port_text != str(record.port):
            return None
        running = self._running.get(proxy_id)
        if running is None or not running.proxy.listening:
            return "critical", f"sidecar {proxy_id} is not listening on {spec.tcp}"
        if running.proxy.inbound_port != record.port:
            return "critical", (
                f"sidecar {proxy_id} listens on port {running.proxy.inbound_port},"
                f" not on {spec.tcp}"
            )
        return "passing", f"TCP connect {spec.tcp}: Success (sidecar {proxy_id} is listening)"

    def _stop(self, proxy_id: str, reason: str) -> None:
        running = self._running.pop(proxy_id)
        running.proxy.stop(reason)
        running.scope.cancel()
        log(_log, "info", "sidecar stopped", id=proxy_id, reason=reason)

    def proxies(self) -> list[Proxy]:
        return [r.proxy for _, r in sorted(self._running.items())]

    def snapshot(self) -> list[dict[str, Any]]:
        return [p.snapshot() for p in self.proxies()]


class SidecarProbe:
    """The check runner's probe: a sidecar's listening check asks the sidecar, others dial.

    Built before the manager (the catalog owns the runner); `manager` is set
    once the agent has one.
    """

    def __init__(self, fallback: Probe = run_probe) -> None:
        self._fallback = fallback
        self.manager: SidecarManager | None = None

    async def __call__(self, spec: CheckSpec, timeout_s: float) -> tuple[str, str]:
        if self.manager is not None:
            answer = self.manager.listening_status(spec)
            if answer is not None:
                return answer
        return await self._fallback(spec, timeout_s)
