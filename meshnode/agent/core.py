"""The agent: one object that builds every part of a node and runs them in one nursery.

`Agent` owns no protocol logic of its own. It opens the data dir, builds the
gossip core and driver, the replicated store and the views over it (catalog,
intentions, CA, KV), the sidecars, DNS and the HTTP API, and starts them in
order. The behaviours live in the modules next to this one:

- `membership.py`: join, leave, force-leave, the member list;
- `known_peers.py`: peers saved so a restart finds the cluster again;
- `gossip_events.py`: what each gossip event does;
- `keyring_service.py` (+ `keyring_ops.py`, `keys.py`): the gossip keyring;
- `kv.py`: /v1/kv; `status.py`: /v1/agent/self and /v1/agent/metrics;
- `http_routes.py`: every route; `reload.py`: SIGHUP and `meshnode reload`;
- `ca_wiring.py`: the CA parts; `lifecycle.py`: `run_agent`, signals, exit code.

The agent takes one `random.Random` and one `Clock` (`inputs.py`) and passes
them down; nothing below reads the system's clock or randomness for a decision.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from pathlib import Path
from typing import Any

import trio

from .. import __version__
from ..api.facade import KeyringReport, KvEntry, MemberView
from ..api.ui_endpoints import ui_url
from ..ca.records import META_SIGNER
from ..ca.revocation_replica import RevocationReplica
from ..catalog.catalog import Catalog
from ..catalog.checks import CheckRunner
from ..catalog.definitions import DefinitionError, parse_config_services
from ..catalog.dns_view import CatalogDnsView
from ..catalog.reaper import DEREGISTER_AFTER_MIN_S
from ..config import AgentConfig
from ..dns import DnsBound, DnsServer
from ..events.handler import EventHandlerRunner
from ..events.user_events import UserEvents
from ..gossip.config import GossipConfig
from ..gossip.driver import GossipDriver
from ..gossip.errors import LocalProtocolError
from ..gossip.events import Event
from ..gossip.membership import Membership
from ..gossip.messages import Addr
from ..gossip.store import DEFAULT_LIMITS, Store
from ..gossip.transport import UdpTcpTransport
from ..gossip.wire import Wire
from ..http.server import HttpLimits, serve_http
from ..intentions.audit import AuditLog
from ..intentions.replica import IntentionState
from ..logs import log
from ..sidecars.inproc import CatalogResolver, IntentionAuthorizer, LeafCertSource
from ..sidecars.manager import SidecarManager, SidecarProbe
from ..store.persist import Persistence
from ..store.replication import ReplicationConfig, Replicator
from . import status
from .advertise import advertise_host
from .ca_wiring import build_ca
from .errors import AgentStartError
from .gossip_events import GossipEventRouter
from .http_routes import agent_router
from .inputs import Clock, child_rng
from .keyring_service import ClusterKeyring, load_keyring
from .known_peers import KnownPeers
from .kv import KIND_KV, AgentKv
from .members import MemberNodes, encode_meta
from .membership import ClusterMembership
from .reload import reload_agent_config
from .revocation_wiring import run_revocations

__all__ = ["Agent", "AgentStartError"]

_log = logging.getLogger("meshnode.agent")


class Agent:
    """One node: implements `AgentFacade` for the HTTP API."""

    def __init__(
        self,
        config: AgentConfig,
        data_dir: Path,
        *,
        rng: random.Random,
        clock: Clock,
        replication: ReplicationConfig | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.clock = clock
        self.persist = Persistence.open(data_dir / "meshnode.db")
        self.node_id = self.persist.node_id()
        self.keyring = load_keyring(self.persist, config.encrypt_key)
        self.http_port = config.http[1]
        bind = Addr(*config.bind)
        if config.advertise is not None:
            advertise = Addr(*config.advertise)
        else:
            advertise = Addr(advertise_host(bind.host), bind.port)
        try:
            self.transport = UdpTcpTransport(bind, advertise=advertise)
        except OSError as exc:
            raise AgentStartError(f"cannot bind gossip to {bind}: {exc.strerror or exc}") from None
        self._meta = {
            "id": self.node_id,
            "dc": config.datacenter,
            "version": __version__,
            "http": config.http[1],
            "tags": dict(config.tags),
        }
        if config.ca_signer:
            self._meta[META_SIGNER] = True
        self.wire = Wire(self.keyring, label=config.cluster_label)
        self.core = Membership(
            name=config.node_name,
            addr=self.transport.local_addr,
            meta=encode_meta(self._meta),
            config=self.wire.packing(GossipConfig()),
            rng=child_rng(rng),
            now=clock.monotonic_s(),
        )
        self.driver = GossipDriver(
            self.core, self.wire, self.transport, on_event=self._on_event, clock=clock.monotonic_s
        )
        self.replicator = self._build_replicator(replication, rng)
        self.nodes = MemberNodes(self.core)
        # After the store is loaded: the state reads it once at construction.
        # Client certificate URIs must be in our trust domain (the CA's check).
        self.intentions = IntentionState(
            self.replicator,
            wall_clock=clock.wall_s,
            service_from_uri=lambda uri: self.ca.service_from_uri(uri),
        )
        self.revocations = RevocationReplica(self.replicator)
        sidecar_probe = SidecarProbe()  # sidecar checks ask the sidecar, not the port
        self.catalog = Catalog(
            self.replicator,
            self.nodes,
            node_name=config.node_name,
            datacenter=config.datacenter,
            node_address=advertise.host,
            runner=functools.partial(CheckRunner, rng=child_rng(rng), probe=sidecar_probe),
            clock=clock.monotonic_s,
            # Consul's one-minute floor of DeregisterCriticalServiceAfter; a dev
            # agent (a throwaway, for trying things) takes durations down to 1 s.
            deregister_after_min_s=1.0 if config.dev else DEREGISTER_AFTER_MIN_S,
        )
        self.ca, self.leaves = build_ca(
            config,
            self.node_id,
            data_dir,
            self.replicator,
            self.nodes,
            self.catalog,
            self.core,
            self.driver,
            self.wire,
            self.transport,
            rng=rng,
            clock=clock,
        )
        try:
            self._config_services = parse_config_services(config.services)
        except DefinitionError as exc:
            raise AgentStartError(str(exc)) from None
        try:
            self.audit = AuditLog(config.audit_log, clock=clock.wall_s)
        except OSError as exc:
            raise AgentStartError(
                f"cannot open the audit log {config.audit_log}: {exc.strerror or exc}"
            ) from None
        # Managed sidecars ask the local replicas directly (no HTTP hop); their
        # public listeners bind the address other agents dial.
        self.sidecars = SidecarManager(
            certs_for=lambda service: LeafCertSource(self.leaves, service),
            authorizer=IntentionAuthorizer(self.intentions),
            resolver=CatalogResolver(self.catalog),
            default_address=advertise.host,
            rng=child_rng(rng),
            audit=self.audit,
            revocations=self.revocations,
            move_port=self.catalog.move_sidecar_port,
        )
        sidecar_probe.manager = self.sidecars
        self.dns_bound: DnsBound | None = None
        self.dns_server = (
            None
            if config.dns is None
            else DnsServer(
                CatalogDnsView(self.catalog, config.dns_service_ttls),
                # Answers name the local datacenter and this agent as the zone's NS.
                dataclasses.replace(
                    config.dns, datacenter=config.datacenter, node_name=config.node_name
                ),
                rng=child_rng(rng),
            )
        )
        # The runner reads the handlers at each event, so a reload applies at once.
        self.event_runner = EventHandlerRunner(config.node_name, lambda: self.config.event_handlers)
        self.events = UserEvents(
            config.node_name,
            lambda payload: self.driver.apply(lambda now: self.core.broadcast_user(payload)),
            handler=self.event_runner,
            local_services=lambda: [(r.name, r.tags) for r in self.catalog.local_services()],
        )
        self.known_peers = KnownPeers(self.persist, self.core, node_name=config.node_name)
        self.membership = ClusterMembership(
            self.core,
            self.driver,
            self.replicator,
            self.known_peers,
            node_name=config.node_name,
        )
        self.cluster_keyring = ClusterKeyring(
            self.keyring,
            self.persist,
            self.core,
            self.driver,
            node_name=config.node_name,
            datacenter=config.datacenter,
            local_addr=lambda: self.transport.local_addr,
        )
        self.kv = AgentKv(self.replicator)
        self.gossip_events = GossipEventRouter(
            replicator=self.replicator,
            known_peers=self.known_peers,
            events=self.events,
            keyring=self.cluster_keyring,
            driver=self.driver,
        )
        self._left = trio.Event()

    def _build_replicator(
        self, replication: ReplicationConfig | None, rng: random.Random
    ) -> Replicator:
        """The replicated store, loaded from SQLite; tombstones kept `tombstone_ttl_s`."""
        config = self.config
        limits = dataclasses.replace(
            DEFAULT_LIMITS.with_budget(KIND_KV, config.kv_max_mib * 1024 * 1024),
            tombstone_max_age_s=config.tombstone_ttl_s,
        )
        if replication is None:
            # Collect at least four times per TTL, so a tombstone outlives it by < 25 %.
            default = ReplicationConfig()
            replication = dataclasses.replace(
                default,
                tombstone_gc_interval_s=min(
                    default.tombstone_gc_interval_s, config.tombstone_ttl_s / 4
                ),
            )
        # Versions carry the member name: it is what peers know us by.
        replicator = Replicator(
            Store(config.node_name, limits),
            self.persist,
            self.core,
            self.driver,
            self.wire,
            self.transport,
            rng=child_rng(rng),
            config=replication,
            wall_clock=self.clock.wall_s,
        )
        try:
            replicator.load()
        except LocalProtocolError as exc:
            raise AgentStartError(f"cannot load the replicated store: {exc}") from None
        return replicator

    def _on_event(self, event: Event) -> None:
        # The router is built after the driver, which needs this callback first.
        self.gossip_events(event)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.driver.run)
            await nursery.start(self.replicator.run)
            await nursery.start(self.catalog.checks.run)
            await nursery.start(self.catalog.run_reaper)
            await nursery.start(self.event_runner.run)
            await nursery.start(self.ca.run)
            await nursery.start(self.leaves.run)
            await nursery.start(
                run_revocations, self.revocations, self.leaves, self.catalog.local_services
            )
            try:
                self.catalog.sync_config(self._config_services)
            except (DefinitionError, LocalProtocolError) as exc:
                raise AgentStartError(f"cannot register the configured services: {exc}") from None
            await nursery.start(self.sidecars.run)
            nursery.start_soon(self._follow_sidecars)
            if self.dns_server is not None:
                self.dns_bound = await nursery.start(self.dns_server.run)
            self.http_port = await nursery.start(
                functools.partial(
                    serve_http,
                    agent_router(self),
                    host=self.config.http[0],
                    port=self.config.http[1],
                    limits=HttpLimits(
                        max_connections_per_client=self.config.http_max_conns_per_client
                    ),
                )
            )
            if self.http_port != self._meta["http"]:
                self._meta["http"] = self.http_port
                self.driver.apply(functools.partial(self.core.update_meta, encode_meta(self._meta)))
            nursery.start_soon(self.known_peers.run)
            log(
                _log,
                "info",
                "agent started",
                node=self.config.node_name,
                id=self.node_id,
                gossip=str(self.transport.local_addr),
                encrypted=self.keyring is not None,
                ui=ui_url(self.config.http[0], self.http_port),
            )
            await self.membership.join_at_start(
                nursery,
                join=list(self.config.join),
                retry_join=list(self.config.retry_join),
                retry_interval_s=self.config.retry_join_interval_s,
                local_addr=self.transport.local_addr,
            )
            task_status.started()
            await self._left.wait()
            nursery.cancel_scope.cancel()

    async def _follow_sidecars(self) -> None:
        """Run a proxy for every local connect-proxy record; then follow only changed ones."""
        self.sidecars.update(self.catalog.local_services())
        self.catalog.subscribe_local(self.sidecars.apply)

    def close(self) -> None:
        self.transport.close()
        self.persist.close()
        self.audit.close()

    # ------------------------------------------------------------------ facade

    @property
    def node_name(self) -> str:
        return self.config.node_name

    def members(self) -> list[MemberView]:
        return self.membership.members()

    async def join(self, addrs: list[str]) -> int:
        return await self.membership.join(addrs)

    async def leave(self) -> None:
        await self.membership.leave()
        self._left.set()

    def force_leave(self, node: str) -> None:
        self.membership.force_leave(node)

    def self_info(self) -> dict[str, Any]:
        return status.self_info(self)

    def metrics(self) -> dict[str, Any]:
        return status.metrics(self)

    async def reload(self) -> None:
        """Apply what can change live from the config files; the rest waits for a restart."""
        self.config = reload_agent_config(self.config, self.catalog)

    async def keyring_list(self) -> KeyringReport:
        return await self.cluster_keyring.query("list", None)

    async def keyring_install(self, key: str) -> KeyringReport:
        return await self.cluster_keyring.query("install", key)

    async def keyring_use(self, key: str) -> KeyringReport:
        return await self.cluster_keyring.query("use", key)

    async def keyring_remove(self, key: str) -> KeyringReport:
        return await self.cluster_keyring.query("remove", key)

    def kv_get(self, key: str) -> KvEntry | None:
        return self.kv.get(key)

    def kv_list(self, prefix: str) -> list[KvEntry]:
        return self.kv.entries(prefix)

    def kv_put(self, key: str, value: bytes) -> None:
        self.kv.put(key, value)

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        self.kv.delete(key, recurse=recurse)

    def kv_index(self) -> int:
        return self.kv.index()

    async def kv_wait(self, index: int, timeout_s: float) -> int:
        return await self.kv.wait(index, timeout_s)
