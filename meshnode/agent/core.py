"""The agent: wires persistence, gossip and the HTTP API into one trio program.

`run_agent(config)` is what `meshnode agent` calls. The agent owns no
protocol logic of its own; it persists what must survive a restart (node id,
keyring, known peers), translates between the gossip core and Consul's API
shapes, and turns signals into a graceful leave.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import random
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from .. import __version__
from ..addr import AddressError, format_host_port, parse_host_port
from ..api import build_router
from ..api.agent_service_endpoints import register_agent_service_routes
from ..api.audit_endpoints import register_audit_routes
from ..api.auth import token_guard
from ..api.ca_endpoints import register_ca_routes
from ..api.catalog_endpoints import register_catalog_routes
from ..api.event_endpoints import register_event_routes
from ..api.facade import (
    STATUS_ALIVE,
    STATUS_FAILED,
    STATUS_LEAVING,
    STATUS_LEFT,
    JoinError,
    KeyringError,
    KeyringReport,
    KvEntry,
    KvError,
    MemberView,
    ReloadError,
    UnknownMember,
)
from ..api.intention_endpoints import register_intention_routes
from ..api.proxy_endpoints import register_proxy_routes
from ..ca.records import META_SIGNER
from ..catalog.catalog import Catalog
from ..catalog.definitions import DefinitionError, parse_config_services
from ..catalog.dns_view import CatalogDnsView
from ..config import DEFAULT_GOSSIP_PORT, AgentConfig, ConfigError, reload_config
from ..dns import DnsBindError, DnsBound, DnsServer
from ..events.handler import EventHandlerRunner
from ..events.user_events import UserEvents
from ..gossip.driver import GossipDriver
from ..gossip.errors import LocalProtocolError
from ..gossip.events import (
    Event,
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberUpdated,
    UserMessage,
)
from ..gossip.keyring import Keyring
from ..gossip.membership import Membership
from ..gossip.messages import Addr, State
from ..gossip.store import DEFAULT_LIMITS, Store
from ..gossip.transport import UdpTcpTransport
from ..gossip.wire import Wire
from ..http.server import HttpBindError, serve_http
from ..intentions.audit import AuditLog
from ..intentions.replica import IntentionState
from ..logs import log, setup_logging
from ..sidecars.inproc import CatalogResolver, IntentionAuthorizer, LeafCertSource
from ..sidecars.manager import SidecarManager
from ..store.datadir import DataDirError, prepare_data_dir, restrict_umask
from ..store.persist import Persistence, PersistenceError
from ..store.replication import ReplicationConfig, Replicator
from ..store.state import TOPIC_MEMBERS
from . import keyring_ops
from .ca_wiring import build_ca
from .keys import KeyFormatError, decode_key
from .members import MemberNodes, decode_meta, encode_meta

_log = logging.getLogger("meshnode.agent")

# Settings a reload reads but cannot apply to a running agent.
_RESTART_FIELDS = (
    "node_name",
    "bind",
    "advertise",
    "http",
    "data_dir",
    "datacenter",
    "tags",
    "encrypt_key",
)

# How long a graceful leave waits for the notice to spread before exiting.
LEAVE_TIMEOUT_S = 5.0
# Known peers are saved at most this often: a join storm changes the member
# list hundreds of times a second and each save is an fsync.
MEMBERS_SAVE_INTERVAL_S = 2.0
# A keyring operation waits this long for every alive member to answer.
KEYRING_QUERY_TIMEOUT_S = 5.0
# The store kind that holds KV entries.
KIND_KV = "kv"

_STATUS = {
    State.ALIVE: (STATUS_ALIVE, "alive"),
    State.SUSPECT: (STATUS_ALIVE, "suspect"),
    State.LEAVING: (STATUS_LEAVING, "leaving"),
    State.LEFT: (STATUS_LEFT, "left"),
    State.DEAD: (STATUS_FAILED, "failed"),
}


class AgentStartError(Exception):
    """The agent cannot start (port taken, bad data dir...); one line for the user."""


def _advertise_host(bind_host: str) -> str:
    """The address others should use when we bind to a wildcard.

    A UDP `connect` only asks the kernel for a route; no packet is sent.
    """
    if bind_host not in ("0.0.0.0", "::"):
        return bind_host
    family = socket.AF_INET6 if bind_host == "::" else socket.AF_INET
    probe = "fd00::1" if family == socket.AF_INET6 else "10.255.255.255"
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"


class Agent:
    """One node: implements `AgentFacade` for the HTTP API."""

    def __init__(
        self,
        config: AgentConfig,
        data_dir: Path,
        *,
        replication: ReplicationConfig | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.persist = Persistence.open(data_dir / "meshnode.db")
        self.node_id = self.persist.node_id()
        self.started_wall_s = time.time()
        self.keyring = self._load_keyring()
        self.http_port = config.http[1]
        bind = Addr(*config.bind)
        if config.advertise is not None:
            advertise = Addr(*config.advertise)
        else:
            advertise = Addr(_advertise_host(bind.host), bind.port)
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
        self.core = Membership(
            name=config.node_name,
            addr=self.transport.local_addr,
            meta=encode_meta(self._meta),
            rng=random.Random(int.from_bytes(os.urandom(8), "big")),
            now=trio.current_time(),
        )
        self.wire = Wire(self.keyring)
        self.driver = GossipDriver(self.core, self.wire, self.transport, on_event=self._on_event)
        limits = dataclasses.replace(DEFAULT_LIMITS, tombstone_max_age_s=config.tombstone_ttl_s)
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
        self.replicator = Replicator(
            Store(config.node_name, limits),
            self.persist,
            self.core,
            self.driver,
            self.wire,
            self.transport,
            rng=random.Random(int.from_bytes(os.urandom(8), "big")),
            config=replication,
        )
        try:
            self.replicator.load()
        except LocalProtocolError as exc:
            raise AgentStartError(f"cannot load the replicated store: {exc}") from None
        self.nodes = MemberNodes(self.core)
        # After the store is loaded: the state reads it once at construction.
        # Client certificate URIs must be in our trust domain (the CA's check).
        self.intentions = IntentionState(
            self.replicator, service_from_uri=lambda uri: self.ca.service_from_uri(uri)
        )
        self.catalog = Catalog(
            self.replicator,
            self.nodes,
            node_name=config.node_name,
            datacenter=config.datacenter,
            node_address=advertise.host,
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
        )
        try:
            self._config_services = parse_config_services(config.services)
        except DefinitionError as exc:
            raise AgentStartError(str(exc)) from None
        # Managed sidecars ask the local replicas directly (no HTTP hop); their
        # public listeners bind the address other agents dial.
        try:
            self.audit = AuditLog(config.audit_log)
        except OSError as exc:
            raise AgentStartError(
                f"cannot open the audit log {config.audit_log}: {exc.strerror or exc}"
            ) from None
        self.sidecars = SidecarManager(
            certs_for=lambda service: LeafCertSource(self.leaves, service),
            authorizer=IntentionAuthorizer(self.intentions),
            resolver=CatalogResolver(self.catalog),
            default_address=advertise.host,
            audit=self.audit,
        )
        self.dns_bound: DnsBound | None = None
        self.dns_server = (
            None
            if config.dns is None
            else DnsServer(CatalogDnsView(self.catalog, config.dns_service_ttls), config.dns)
        )
        # The runner reads the handlers at each event, so a reload applies at once.
        self.event_runner = EventHandlerRunner(config.node_name, lambda: self.config.event_handlers)
        self.events = UserEvents(
            config.node_name,
            lambda payload: self.driver.apply(lambda now: self.core.broadcast_user(payload)),
            handler=self.event_runner,
            local_services=lambda: [(r.name, r.tags) for r in self.catalog.local_services()],
        )
        self._members_dirty = False
        # Names seen as members since start, to tell a returning member from
        # a newcomer.
        self._seen_members: set[str] = {config.node_name}
        self._seen_queries = keyring_ops.SeenQueries()
        self._tallies: dict[bytes, keyring_ops.Tally] = {}
        self._tally_events: dict[bytes, trio.Event] = {}
        self._left = trio.Event()

    # ------------------------------------------------------------------ setup

    def _load_keyring(self) -> Keyring | None:
        stored = self.persist.load_keyring()
        flag_key = self.config.encrypt_key
        if stored is not None:
            keys, primary = stored
            if flag_key is not None and decode_key(flag_key) not in keys:
                log(
                    _log,
                    "warning",
                    "ignoring --encrypt: the data dir has a keyring, "
                    "rotate keys with `meshnode keyring`",
                )
            return Keyring(keys, primary=primary)
        if flag_key is None:
            return None
        key = decode_key(flag_key)
        self.persist.save_keyring([key], key)
        return Keyring([key])

    def _save_keyring(self) -> None:
        if self.keyring is not None:
            self.persist.save_keyring(list(self.keyring.keys), self.keyring.primary_key)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.driver.run)
            await nursery.start(self.replicator.run)
            await nursery.start(self.catalog.checks.run)
            await nursery.start(self.event_runner.run)
            await nursery.start(self.ca.run)
            await nursery.start(self.leaves.run)
            try:
                self.catalog.sync_config(self._config_services)
            except (DefinitionError, LocalProtocolError) as exc:
                raise AgentStartError(f"cannot register the configured services: {exc}") from None
            await nursery.start(self.sidecars.run)
            nursery.start_soon(self._follow_sidecars)
            if self.dns_server is not None:
                self.dns_bound = await nursery.start(self.dns_server.run)
            router = build_router(self)
            router.add_guard(token_guard(lambda: self.config.api_token))
            register_intention_routes(router, self.intentions, self.audit)
            register_audit_routes(router, self.audit)
            register_event_routes(router, self.events)
            register_catalog_routes(router, self.catalog, datacenter=self.config.datacenter)
            register_agent_service_routes(router, self.catalog, datacenter=self.config.datacenter)
            register_proxy_routes(router, self.sidecars)
            register_ca_routes(
                router,
                self.ca,
                self.leaves,
                self.catalog.local_services,
                current_token=lambda: self.config.api_token,
            )
            self.http_port = await nursery.start(
                functools.partial(
                    serve_http, router, host=self.config.http[0], port=self.config.http[1]
                )
            )
            if self.http_port != self._meta["http"]:
                self._meta["http"] = self.http_port
                self.driver.apply(functools.partial(self.core.update_meta, encode_meta(self._meta)))
            nursery.start_soon(self._save_members_loop)
            log(
                _log,
                "info",
                "agent started",
                node=self.config.node_name,
                id=self.node_id,
                gossip=str(self.transport.local_addr),
                encrypted=self.keyring is not None,
            )
            await self._initial_join(nursery)
            task_status.started()
            await self._left.wait()
            nursery.cancel_scope.cancel()

    async def _follow_sidecars(self) -> None:
        """Run a proxy for every local connect-proxy record, after each catalog change."""
        index = self.catalog.index()
        while True:
            self.sidecars.update(self.catalog.local_services())
            index = await self.catalog.wait(index, 300.0)

    async def _initial_join(self, nursery: trio.Nursery) -> None:
        if self.config.join:
            addrs = await self._parse_addrs(list(self.config.join))
            if await self._join(addrs) == 0:
                raise AgentStartError("could not join any of " + ", ".join(self.config.join))
        if self.config.retry_join:
            retry = await self._parse_addrs(list(self.config.retry_join))
            interval_s = self.config.retry_join_interval_s
            nursery.start_soon(self._keep_joining, retry, "retry-join", interval_s, interval_s)
        known = [
            Addr(h, p)
            for _, h, p in self.persist.load_members()
            if Addr(h, p) != self.transport.local_addr
        ]
        if known and not self.config.join:
            # After a restart, find the cluster again through the peers we knew.
            nursery.start_soon(self._keep_joining, known, "rejoin known peers", 1.0, 30.0)

    async def _parse_addrs(self, texts: list[str]) -> list[Addr]:
        """Resolve join addresses without blocking the event loop (names may need DNS)."""
        out = []
        for text in texts:
            try:
                host, port = parse_host_port(
                    text, default_port=DEFAULT_GOSSIP_PORT, require_ip=False
                )
            except AddressError as exc:
                raise JoinError(str(exc)) from None
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise JoinError(f"cannot resolve {host!r}: {exc}") from None
            sockaddr = infos[0][4]
            out.append(Addr(str(sockaddr[0]), int(sockaddr[1])))
        return out

    async def _keep_joining(
        self, addrs: list[Addr], what: str, delay_s: float, max_delay_s: float
    ) -> None:
        """Try `addrs` until one answers, backing off from `delay_s` to `max_delay_s`."""
        while await self._join(addrs) == 0:
            await trio.sleep(delay_s)
            delay_s = min(delay_s * 2, max_delay_s)
        log(_log, "info", f"{what} succeeded", peers=len(addrs))

    async def _save_members_loop(self) -> None:
        while True:
            await trio.sleep(MEMBERS_SAVE_INTERVAL_S)
            if self._members_dirty:
                self._members_dirty = False
                self._save_members()

    def _save_members(self) -> None:
        self.persist.save_members(
            [
                (m.name, m.addr.host, m.addr.port)
                for m in self.core.members()
                if m.name != self.config.node_name and m.state not in (State.LEFT,)
            ]
        )

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, UserMessage):
            # Health answers depend on member states: wake blocking queries.
            self.replicator.tracker.touch(TOPIC_MEMBERS)
        match event:
            case MemberJoined(member=m):
                self._members_dirty = True
                log(_log, "info", "member joined", node=m.name, addr=str(m.addr))
                if m.name in self._seen_members:
                    # A member returning from failure (a restart, a pause, a
                    # healed partition) may hold writes we lack and lack ours.
                    # A newcomer reconciles by itself after its own join.
                    self.replicator.start_anti_entropy(m.addr)
                self._seen_members.add(m.name)
            case MemberLeft(member=m):
                self._members_dirty = True
                log(_log, "info", "member left", node=m.name)
            case MemberFailed(member=m):
                self._members_dirty = True
                log(_log, "warning", "member failed", node=m.name, addr=str(m.addr))
            case MemberReaped(name=name):
                self._members_dirty = True
                log(_log, "info", "member reaped", node=name)
            case MemberUpdated(member=m):
                log(_log, "debug", "member updated", node=m.name)
            case UserMessage():
                self._on_user(event)

    def _on_user(self, event: UserMessage) -> None:
        payload = event.payload
        if not payload or self.replicator.on_user(payload, event.source):
            return
        if self.events.on_user(payload):
            return
        try:
            if payload[0] == keyring_ops.CHANNEL_KEYRING_QUERY:
                self._answer_keyring_query(keyring_ops.decode_query(payload))
            elif payload[0] == keyring_ops.CHANNEL_KEYRING_REPLY:
                reply = keyring_ops.decode_reply(payload)
                tally = self._tallies.get(reply.query_id)
                if tally is not None:
                    tally.add(reply)
                    self._tally_events[reply.query_id].set()
        except keyring_ops.KeyringQueryError as exc:
            self.driver.counters.add("user.rejected")
            log(
                _log,
                "warning",
                "dropped malformed keyring message",
                source=str(event.source),
                reason=str(exc),
            )

    def _answer_keyring_query(self, q: keyring_ops.KeyringQuery) -> None:
        if not self._seen_queries.first_time(q.query_id) or self.keyring is None:
            return
        error = keyring_ops.apply_operation(self.keyring, q.op, q.key)
        if not error and q.op != "list":
            self._save_keyring()
            log(_log, "info", "keyring changed", op=q.op, by=q.origin)
        reply = keyring_ops.KeyringReply(
            q.query_id,
            self.config.node_name,
            error,
            tuple(self.keyring.keys),
            self.keyring.primary_key,
        )
        origin = Addr(q.origin_host, q.origin_port)
        if q.origin == self.config.node_name:
            self._tallies[q.query_id].add(reply)
            self._tally_events[q.query_id].set()
        else:
            self.core.send_user(origin, reply.encode())

    # ------------------------------------------------------------------ facade

    @property
    def node_name(self) -> str:
        return self.config.node_name

    def _member_view(self, m: Member) -> MemberView:
        status, state = _STATUS[m.state]
        tags = decode_meta(m.meta).get("tags", {})
        if not isinstance(tags, dict):
            tags = {}
        return MemberView(
            name=m.name,
            addr=m.addr.host,
            port=m.addr.port,
            tags={str(k): str(v) for k, v in tags.items()},
            status=status,
            state=state,
        )

    def members(self) -> list[MemberView]:
        return sorted((self._member_view(m) for m in self.core.members()), key=lambda v: v.name)

    async def _join(self, addrs: list[Addr]) -> int:
        """Join through `addrs`; once in, reconcile our store with one member.

        The joiner pulls what it missed itself, so members need not each
        start a round with every newcomer (N^2 exchanges in a join storm).
        """
        ok = await self.driver.join(addrs)
        if ok > 0:
            peers = [
                m.addr
                for m in self.core.members()
                if m.state == State.ALIVE and m.name != self.config.node_name
            ]
            if peers:
                self.replicator.start_anti_entropy(random.choice(peers))
        return ok

    async def join(self, addrs: list[str]) -> int:
        parsed = await self._parse_addrs(addrs)
        ok = await self._join(parsed)
        if ok == 0:
            raise JoinError(
                "no peer answered at "
                + ", ".join(addrs)
                + " (is an agent there, with the same encryption key?)"
            )
        return ok

    async def leave(self) -> None:
        log(_log, "info", "leaving the cluster")
        done = await self.driver.leave(LEAVE_TIMEOUT_S)
        if not done:
            log(_log, "warning", "leave notice not fully spread before the timeout")
        self._save_members()
        self._left.set()

    def force_leave(self, node: str) -> None:
        try:
            self.driver.apply(functools.partial(self.core.force_leave, node))
        except LocalProtocolError:
            raise UnknownMember(f"no member named {node!r}") from None

    def self_info(self) -> dict[str, Any]:
        me = self.core.member(self.config.node_name)
        assert me is not None
        view = self._member_view(me)
        return {
            "Config": {
                "NodeName": self.config.node_name,
                "NodeID": self.node_id,
                "Datacenter": self.config.datacenter,
                "Version": __version__,
                "Server": False,
                "DataDir": str(self.data_dir),
                "DNSAddr": (
                    format_host_port(self.dns_bound.host, self.dns_bound.udp_port)
                    if self.dns_bound is not None
                    else None
                ),
                "DNSDomain": self.config.dns.domain if self.config.dns is not None else None,
            },
            "Member": {
                "Name": view.name,
                "Addr": view.addr,
                "Port": view.port,
                "Tags": view.tags,
                "Status": view.status,
            },
            "Meta": dict(self.config.tags),
            "Stats": {
                "serf_lan": {
                    "members": str(self.core.num_alive()),
                    "incarnation": str(self.core.incarnation),
                    "health_score": str(self.core.awareness_score),
                    "encrypted": str(self.keyring is not None).lower(),
                    "event_queue": str(self.core.pending_broadcasts()),
                },
                "store": self._store_stats(),
            },
        }

    def _store_stats(self) -> dict[str, str]:
        """Entries and a digest of the replica: equal digests on two agents mean equal
        replicas (up to 64-bit collisions per bucket), without reading every key."""
        store = self.replicator.store
        packed = b"".join(b.to_bytes(8, "big") for b in store.digest().buckets)
        return {
            "entries": str(len(store)),
            "index": str(store.index),
            "digest": hashlib.blake2b(packed, digest_size=16).hexdigest(),
        }

    def metrics(self) -> dict[str, Any]:
        counters = dict(self.driver.counters.values)
        counters.update({f"core.{k}": v for k, v in self.core.counters.items()})
        counters.update({f"events.{k}": v for k, v in self.events.counters().items()})
        runner = self.event_runner
        counters.update(
            {
                "events.handler.ran": runner.ran,
                "events.handler.failed": runner.failed,
                "events.handler.timed_out": runner.timed_out,
                "events.handler.dropped": runner.dropped,
                "catalog.malformed_records": self.catalog.malformed_records,
                "intentions.malformed": self.intentions.malformed_total,
                "audit.recorded": self.audit.recorded_total,
                "audit.denied": self.audit.denied_total,
            }
        )
        if self.dns_server is not None:
            counters.update(
                {f"dns.{k}": v for k, v in dataclasses.asdict(self.dns_server.stats).items()}
            )
        states: dict[str, int] = {}
        for m in self.core.members():
            states[m.state.name.lower()] = states.get(m.state.name.lower(), 0) + 1
        gauges = {
            "members.alive": states.get("alive", 0),
            "members.suspect": states.get("suspect", 0),
            "members.failed": states.get("dead", 0),
            "members.left": states.get("left", 0),
            "health_score": self.core.awareness_score,
            "broadcast_queue": self.core.pending_broadcasts(),
        }
        return {
            "Timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime()),
            "Gauges": [
                {"Name": f"meshnode.gossip.{k}", "Value": v, "Labels": {}}
                for k, v in sorted(gauges.items())
            ],
            "Counters": [
                {
                    "Name": f"meshnode.gossip.{k}",
                    "Count": v,
                    "Sum": v,
                    "Rate": 0,
                    "Min": 0,
                    "Max": 0,
                    "Mean": 0,
                    "Stddev": 0,
                    "Labels": {},
                }
                for k, v in sorted(counters.items())
            ],
            "Samples": [],
        }

    async def _keyring_query(self, op: str, key_text: str | None) -> KeyringReport:
        if self.keyring is None:
            raise KeyringError("gossip encryption is off on this agent (started with --dev)")
        key = b""
        if key_text is not None:
            try:
                key = decode_key(key_text)
            except KeyFormatError as exc:
                raise KeyringError(str(exc)) from None
        qid = keyring_ops.new_query_id()
        me = self.transport.local_addr
        query = keyring_ops.KeyringQuery(qid, op, key, self.config.node_name, me.host, me.port)
        self._tallies[qid] = tally = keyring_ops.Tally()
        expected = {m.name for m in self.core.members() if m.state in (State.ALIVE, State.SUSPECT)}
        try:
            # Our own answer first, then everyone else's by gossip.
            self._tally_events[qid] = trio.Event()
            self._answer_keyring_query(query)
            self.driver.apply(lambda now: self.core.broadcast_user(query.encode()))
            with trio.move_on_after(KEYRING_QUERY_TIMEOUT_S):
                while not expected <= set(tally.replies):
                    self._tally_events[qid] = trio.Event()
                    await self._tally_events[qid].wait()
        finally:
            self._tallies.pop(qid, None)
            self._tally_events.pop(qid, None)
        messages = tally.errors()
        for name in sorted(expected - set(tally.replies)):
            messages[name] = "no answer before the timeout"
        return KeyringReport(
            keys=tally.keys_count(),
            primary_keys=tally.primary_count(),
            num_nodes=len(expected),
            messages=messages,
            datacenter=self.config.datacenter,
        )

    async def reload(self) -> None:
        """Apply what can change live from the config files; the rest waits for a restart."""
        try:
            new = reload_config(self.config)
            services = parse_config_services(new.services)
        except (ConfigError, DefinitionError) as exc:
            raise ReloadError(str(exc)) from None
        try:
            self.catalog.sync_config(services)
        except (DefinitionError, LocalProtocolError) as exc:
            raise ReloadError(f"cannot register the configured services: {exc}") from None
        self._config_services = services
        self._apply_reloadable(new)
        restart_needed = [
            name for name in _RESTART_FIELDS if getattr(new, name) != getattr(self.config, name)
        ]
        self.config = dataclasses.replace(
            self.config,
            log_level=new.log_level,
            api_token=new.api_token,
            event_handlers=new.event_handlers,
            services=new.services,
        )
        if restart_needed:
            log(
                _log,
                "warning",
                "config reloaded; some changes need a restart",
                fields=",".join(restart_needed),
            )
        else:
            log(_log, "info", "config reloaded")

    def _apply_reloadable(self, new: AgentConfig) -> None:
        """Validate first, then apply: a bad reload changes nothing."""
        if new.log_level != self.config.log_level:
            setup_logging(new.log_level)

    async def keyring_list(self) -> KeyringReport:
        return await self._keyring_query("list", None)

    async def keyring_install(self, key: str) -> KeyringReport:
        return await self._keyring_query("install", key)

    async def keyring_use(self, key: str) -> KeyringReport:
        return await self._keyring_query("use", key)

    async def keyring_remove(self, key: str) -> KeyringReport:
        return await self._keyring_query("remove", key)

    # ------------------------------------------------------------------ KV

    def _kv_entry(self, key: str, value: bytes) -> KvEntry:
        create, modify = self.replicator.entry_indexes(KIND_KV, key)
        return KvEntry(key, value, create, modify)

    def kv_get(self, key: str) -> KvEntry | None:
        entry = self.replicator.store.get(KIND_KV, key)
        return None if entry is None else self._kv_entry(key, entry.value)

    def kv_list(self, prefix: str) -> list[KvEntry]:
        return [
            self._kv_entry(e.key, e.value)
            for e in self.replicator.store.items(KIND_KV)
            if e.key.startswith(prefix)
        ]

    def kv_put(self, key: str, value: bytes) -> None:
        try:
            self.replicator.put(KIND_KV, key, value)
        except LocalProtocolError as exc:
            raise KvError(str(exc)) from None

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        if recurse:
            keys = [e.key for e in self.replicator.store.items(KIND_KV) if e.key.startswith(key)]
        else:
            keys = [key]
        try:
            self.replicator.delete_many(KIND_KV, keys)
        except LocalProtocolError as exc:
            raise KvError(str(exc)) from None

    def kv_index(self) -> int:
        return max(1, self.replicator.tracker.topic_index(KIND_KV))

    async def kv_wait(self, index: int, timeout_s: float) -> int:
        return max(1, await self.replicator.wait_for_change(KIND_KV, index, timeout_s))

    def close(self) -> None:
        self.transport.close()
        self.persist.close()
        self.audit.close()


def _data_dir(config: AgentConfig) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if config.data_dir is not None:
        prepare_data_dir(config.data_dir)
        return config.data_dir, None
    tmp = tempfile.TemporaryDirectory(prefix="meshnode-dev-")
    return Path(tmp.name), tmp


async def _reload_on_sighup(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                await agent.reload()
            except ReloadError as exc:
                log(_log, "error", "config reload failed; nothing changed", reason=str(exc))


async def _leave_on_signal(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log(
                _log,
                "info",
                "signal received, leaving gracefully",
                signal=signal.Signals(signum).name,
            )
            await agent.leave()
            return


async def _main(config: AgentConfig) -> None:
    data_dir, tmp = _data_dir(config)
    try:
        agent = Agent(config, data_dir)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_leave_on_signal, agent)
                nursery.start_soon(_reload_on_sighup, agent)
                await agent.run()  # returns once the agent has left
                nursery.cancel_scope.cancel()
        finally:
            agent.close()
    finally:
        if tmp is not None:
            tmp.cleanup()


_USER_ERRORS = (
    AgentStartError,
    JoinError,
    HttpBindError,
    DnsBindError,
    PersistenceError,
    DataDirError,
)


def _user_error(exc: BaseException) -> BaseException | None:
    """The one user-facing error inside `exc`, looking through exception groups."""
    if isinstance(exc, _USER_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


def run_agent(config: AgentConfig) -> int:
    """Run an agent in the foreground until it leaves; the process exit code."""
    restrict_umask()  # before anything is written: the data dir holds the keyring
    try:
        trio.run(_main, config)
    except BaseException as exc:
        found = _user_error(exc)
        if found is None:
            raise
        log(_log, "error", str(found))
        return 1
    return 0
