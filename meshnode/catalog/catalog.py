"""The service catalog: local registrations written to the replicated store, reads from it.

Rules that live here:

- This agent writes only its own services and checks (keys ``<node>/<id>``);
  every agent reads everyone's from its replica.
- A service is healthy when its node is alive and all its checks pass. A node
  that is suspect, leaving, left or failed adds a critical ``serfHealth``
  check (Consul's); a node no longer known at all (reaped) hides its services.
- Check results are written only when the status changes, or when the output
  changed and the last write is at least `RESULT_REWRITE_S` old: every write
  is gossiped to every node, and an HTTP check whose output carries a
  timestamp would otherwise make the whole cluster chatter every interval.
- Registrations made through the API are in the store, which is persisted,
  so they survive a restart; the runner is told about them at construction.
- A change costs O(the records it touches), never O(catalog): reads go
  through the `RecordIndex`, and the runner and the local-service listeners
  (the sidecar manager) hear only about this node's changed records.
- A check with no service is a node check (``/v1/agent/check/register``
  without ``ServiceID``, node maintenance): it counts for every service of
  its node, in health entries and DNS, as Consul's node checks do.
- A service re-registration replaces its checks, but keeps its maintenance
  check: a reload must not end maintenance an operator turned on.
- `run_reaper` deregisters a local service whose check has been critical
  longer than its ``DeregisterCriticalServiceAfter`` (reaper.py decides when).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

import trio

from ..gossip.errors import LocalProtocolError
from ..gossip.store import Entry
from ..logs import get_logger, log
from ..store.batch import Write
from ..store.state import TOPIC_MEMBERS, NodeInfo, NodeSource, ReplicatedState
from .checks import STATUSES, CheckError, CheckRunner, CheckSpec, Report, validate_spec
from .definitions import MAINTENANCE, CheckDefinition, DefinitionError, ServiceDefinition
from .maintenance import (
    NODE_MAINTENANCE_ID,
    is_maintenance,
    node_maintenance_check,
    service_maintenance_check,
    service_maintenance_id,
)
from .plan import INITIAL_STATUS, Plan, RegistrationError, plan_service
from .reaper import DEREGISTER_AFTER_MIN_S, CriticalReaper
from .records import (
    KIND_CHECK,
    KIND_SERVICE,
    CheckRecord,
    ServiceRecord,
    encode_check,
    encode_service,
    record_key,
    split_key,
)
from .views import (
    SERF_CHECK_ID,
    CheckView,
    HealthEntry,
    InstanceState,
    RecordCache,
    ServiceView,
    serf_check,
)

__all__ = [
    "OUTPUT_MAX_CHARS",
    "RESULT_REWRITE_S",
    "TOPICS",
    "Catalog",
    "CheckRunnerLike",
    "LocalServiceListener",
    "UnknownLocalCheck",
    "UnknownService",
]

_log = get_logger("catalog")

# Consul's check_output_max_size: a check's output is gossiped to every node.
OUTPUT_MAX_CHARS = 4096
# An unchanged status with a new output is written at most this often (see above).
RESULT_REWRITE_S = 300.0
# What catalog and health answers depend on; blocking queries wait on these.
TOPICS = (KIND_SERVICE, KIND_CHECK, TOPIC_MEMBERS)
HEALTH_STATES = ("any", *STATUSES)
_RANK = {"passing": 0, "warning": 1, "critical": 2}  # an unknown status counts as critical
_BY_RANK = ("passing", "warning", "critical")


# Told {service ID: record, or None when removed} after this node's services change.
LocalServiceListener = Callable[[dict[str, ServiceRecord | None]], None]


class UnknownService(LookupError):
    """No local service has that ID (one-line message)."""


class UnknownLocalCheck(LookupError):
    """No local check has that ID (one-line message)."""


class CheckRunnerLike(Protocol):
    """What the catalog uses of `CheckRunner` (a fake in tests)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the checks until cancelled (the agent starts it in its nursery)."""

    def set(self, specs: list[CheckSpec]) -> None:
        """Reconcile: start new checks, stop removed ones, restart changed ones."""

    def update(self, changed: list[CheckSpec], removed: list[str]) -> None:
        """Reconcile only these checks (new or changed specs, removed IDs); others untouched."""

    def ttl_update(self, check_id: str, status: str, output: str) -> None:
        """Record a TTL check's new status; `CheckError` subclasses for unknown or non-TTL."""


_R = TypeVar("_R")


class _Local(Mapping[str, _R]):
    """One node's records by ID, read through to the cache: no copy per write."""

    def __init__(self, node: str, records: dict[str, _R], group: Callable[[], Mapping[str, _R]]):
        self._node = node
        self._records = records  # by store key
        self._group = group  # this node's records by store key (an index table)

    def __getitem__(self, record_id: str) -> _R:
        return self._records[record_key(self._node, record_id)]

    def __iter__(self) -> Iterator[str]:
        return (split_key(key)[1] for key in list(self._group()))

    def __len__(self) -> int:
        return len(self._group())


def _spec(record: CheckRecord, *, resume: bool) -> CheckSpec | None:
    """What the runner runs for `record`; None for a maintenance check (nothing runs it).

    `resume`: a TTL check starts in the record's status (a registration's
    ``Status``, or the status it keeps when registered again). At the agent's
    start it does not: nobody knows how long the agent was down, so a TTL
    check is critical until its service speaks again.
    """
    d = record.definition
    kind = d.kind
    if kind == MAINTENANCE:
        return None
    return CheckSpec(
        check_id=record.check_id,
        kind=kind,
        interval_s=d.interval_s,
        timeout_s=d.timeout_s,
        tcp=d.tcp,
        http=d.http,
        method=d.method,
        header={k: list(v) for k, v in d.header.items()},
        body=d.body,
        tls_skip_verify=d.tls_skip_verify,
        ttl_s=d.ttl_s,
        success_before_passing=d.success_before_passing,
        failures_before_warning=d.failures_before_warning,
        failures_before_critical=d.failures_before_critical,
        initial_status=record.status if resume else "",
    )


class Catalog:
    """Services and checks of the whole cluster, as this agent sees and writes them."""

    def __init__(
        self,
        state: ReplicatedState,
        nodes: NodeSource,
        *,
        node_name: str,
        datacenter: str,
        node_address: str = "127.0.0.1",
        runner: Callable[[Report], CheckRunnerLike] = CheckRunner,
        clock: Callable[[], float] = trio.current_time,
        deregister_after_min_s: float = DEREGISTER_AFTER_MIN_S,
    ) -> None:
        """Build after the store is loaded: the cache and the runner start from its content.

        `deregister_after_min_s` is the floor of DeregisterCriticalServiceAfter
        (reaper.py); a dev agent lowers it so a test need not wait a minute.
        """
        self.state = state
        self._nodes = nodes
        self.node_name = node_name
        self.datacenter = datacenter
        self.node_address = node_address  # where this agent's sidecars listen
        self._clock = clock
        self._cache = RecordCache(state)
        self._index = self._cache.index
        self._written_at: dict[str, float] = {}  # check ID -> clock of its last result write
        self._local_listeners: list[LocalServiceListener] = []
        self.reaper = CriticalReaper(min_after_s=deregister_after_min_s)
        self._reaper_moved = trio.Event()
        self.checks: CheckRunnerLike = runner(self._on_check_result)
        self._tell_runner()
        # After the cache's own listeners: they run first, so the cache is current here.
        for kind in (KIND_SERVICE, KIND_CHECK):
            state.tracker.subscribe(kind, self._on_store_change)

    @property
    def malformed_records(self) -> int:
        """Catalog records from the store that could not be decoded (skipped)."""
        return self._cache.malformed

    # --- local writes -----------------------------------------------------------------------

    def _local(self) -> tuple[Mapping[str, ServiceRecord], Mapping[str, CheckRecord]]:
        """This node's services and checks by ID: live views, O(1) to make."""
        me, index = self.node_name, self._index
        services = _Local(me, self._cache.services, lambda: index.by_node.get(me, {}))
        checks = _Local(me, self._cache.checks, lambda: index.checks_by_node.get(me, {}))
        return services, checks

    def _sidecars_of(self, service_id: str) -> list[str]:
        return [
            r.service_id
            for r in self._index.sidecars.get((self.node_name, service_id), {}).values()
        ]

    def _checks_of(self, service_ids: Iterable[str]) -> list[str]:
        me, owners = self.node_name, self._index.checks_by_owner
        return [c.check_id for i in service_ids for c in owners.get((me, i), {}).values()]

    @staticmethod
    def _runnable(record: CheckRecord, *, resume: bool = True) -> CheckSpec | None:
        spec = _spec(record, resume=resume)
        if spec is None:
            return None
        try:
            validate_spec(spec)
        except CheckError as exc:  # a record from an older or buggy version of us
            log(_log, "warning", "check not run", exc_info=exc, check=record.check_id)
            return None
        return spec

    def _tell_runner(self) -> None:
        """The runner's whole set, once at construction; later changes go by `_on_store_change`."""
        _, checks = self._local()
        specs = [self._runnable(r, resume=False) for _, r in sorted(checks.items())]
        self.checks.set([s for s in specs if s is not None])
        for check_id, record in checks.items():
            self._observe(check_id, record)

    def subscribe_local(self, listener: LocalServiceListener) -> None:
        """Call `listener` with this node's changed services after each store change of them."""
        self._local_listeners.append(listener)

    def _on_store_change(self, entries: list[Entry]) -> None:
        """Tell the runner and local listeners about this node's changed records, and only those."""
        me = self.node_name
        changed: list[CheckSpec] = []
        removed: list[str] = []
        services: dict[str, ServiceRecord | None] = {}
        for entry in entries:
            node, record_id = split_key(entry.key)
            if node != me:
                continue
            if entry.kind == KIND_CHECK:
                check = self._cache.checks.get(entry.key)
                self._observe(record_id, check)
                spec = None if check is None else self._runnable(check)
                if spec is None:
                    removed.append(record_id)
                else:
                    changed.append(spec)
            else:
                services[record_id] = self._cache.services.get(entry.key)
        if changed or removed:
            self.checks.update(changed, removed)
        if services:
            for listener in self._local_listeners:
                listener(services)

    def _plan(
        self, defs: Iterable[ServiceDefinition], source: str
    ) -> tuple[list[Plan], Mapping[str, ServiceRecord], Mapping[str, CheckRecord]]:
        if source not in ("api", "config"):
            raise ValueError(f"source must be 'api' or 'config', not {source!r}")
        services, checks = self._local()
        reserved: set[int] = set()
        plans = [
            plan_service(
                d,
                node=self.node_name,
                source=source,
                services=services,
                checks=checks,
                reserved_ports=reserved,
                node_address=self.node_address,
            )
            for d in defs
        ]
        ids = [c.check_id for p in plans for c in p.checks]
        clash = sorted({i for i in ids if ids.count(i) > 1})
        if clash:
            raise RegistrationError(f"check ID {clash[0]!r} is used by two services")
        return plans, services, checks

    def _write(
        self,
        plans: list[Plan],
        services: Mapping[str, ServiceRecord],
        checks: Mapping[str, CheckRecord],
    ) -> None:
        me, cache = self.node_name, self._cache
        try:
            for plan in plans:
                # The whole plan is one store batch: one commit, one fsync.
                owners = {s.service_id for s in plan.services}
                parent = plan.services[0].service_id
                stale_services = [i for i in self._sidecars_of(parent) if i not in owners]
                kept = {c.check_id for c in plan.checks}
                kept |= {service_maintenance_id(i) for i in owners}
                stale_checks = [
                    i for i in self._checks_of([*owners, *stale_services]) if i not in kept
                ]
                writes = [
                    Write.put(
                        KIND_SERVICE, record_key(me, s.service_id), cache.ours(encode_service(s))
                    )
                    for s in plan.services
                    if services.get(s.service_id) != s
                ]
                writes += [
                    Write.put(KIND_CHECK, record_key(me, c.check_id), cache.ours(encode_check(c)))
                    for c in plan.checks
                    if checks.get(c.check_id) != c
                ]
                self._delete(stale_checks, stale_services, writes)
        except LocalProtocolError as exc:
            raise RegistrationError(str(exc)) from None
        finally:
            cache.forget_ours()

    def _delete(
        self, check_ids: list[str], service_ids: list[str], writes: Sequence[Write] = ()
    ) -> None:
        """`writes`, then tombstones for the checks and services, in one store batch."""
        me = self.node_name
        batch = [
            *writes,
            *(Write.delete(KIND_CHECK, record_key(me, i)) for i in check_ids),
            *(Write.delete(KIND_SERVICE, record_key(me, i)) for i in service_ids),
        ]
        if batch:
            self.state.write_many(batch)
        for i in check_ids:
            self._written_at.pop(i, None)

    def register(self, defn: ServiceDefinition, *, source: str = "api") -> list[str]:
        """Register (or replace) a local service, its sidecar and checks; the service IDs written.

        Raises `DefinitionError` (its `RegistrationError` subclass for ID clashes,
        no free sidecar port or a refused store write) with nothing written.
        """
        plans, services, checks = self._plan([defn], source)
        self._write(plans, services, checks)
        return [s.service_id for s in plans[0].services]

    def deregister(self, service_id: str) -> list[str]:
        """Remove a local service with its checks and sidecar; the service IDs removed."""
        services, _ = self._local()
        if service_id not in services:
            raise UnknownService(f"no service with ID {service_id!r} is registered on this agent")
        ids = [service_id, *self._sidecars_of(service_id)]
        self._delete(self._checks_of(ids), ids)
        return ids

    def move_sidecar_port(self, service_id: str, port: int) -> None:
        """Record that a local proxy serves on `port` (its own was taken on this host).

        Rewrites the service's port and the TCP checks that targeted the old
        one, keeping their status; a later re-registration keeps the new port.
        """
        services, checks = self._local()
        old = services.get(service_id)
        if old is None or old.kind != "connect-proxy":
            raise UnknownService(f"no local proxy with ID {service_id!r}")
        if old.port == port:
            return
        me, suffix = self.node_name, f":{old.port}"
        moved = replace(old, definition=replace(old.definition, port=port))
        self.state.put(KIND_SERVICE, record_key(me, service_id), encode_service(moved))
        for check_id in self._checks_of([service_id]):
            check = checks[check_id]
            target = check.definition.tcp
            if check.definition.kind == "tcp" and target.endswith(suffix):
                definition = replace(check.definition, tcp=f"{target[: -len(suffix)]}:{port}")
                self.state.put(
                    KIND_CHECK,
                    record_key(me, check_id),
                    encode_check(replace(check, definition=definition)),
                )

    def sync_config(self, defs: list[ServiceDefinition]) -> list[str]:
        """Make the config-file services exactly `defs`; API registrations are left alone.

        Validates every definition before writing any; returns the IDs removed.
        """
        plans, services, checks = self._plan(defs, "config")
        keep = {s.service_id for p in plans for s in p.services}
        self._write(plans, services, checks)
        stale = [
            s.service_id
            for s in services.values()
            if s.source == "config" and not s.sidecar_of and s.service_id not in keep
        ]
        removed: list[str] = []
        for service_id in stale:
            removed += self.deregister(service_id)
        return removed

    def register_check(self, check: CheckDefinition, service_id: str = "") -> None:
        """Add (or replace) a local check: of service `service_id`, else of the node.

        `DefinitionError` (nothing written) for a reserved ID, an unknown
        service, or an ID that another service's check holds. A replaced check
        keeps its status unless `check.status` sets one, as a re-registration does.
        """
        check_id = check.check_id
        if is_maintenance(check_id) or check_id == SERF_CHECK_ID:
            raise DefinitionError(f"check ID {check_id!r} is reserved for the agent")
        services, checks = self._local()
        owner = services.get(service_id) if service_id else None
        if service_id and owner is None:
            raise DefinitionError(f"service ID {service_id!r} is not registered on this agent")
        old = checks.get(check_id)
        if old is not None and old.service_id != service_id:
            holder = f"service {old.service_id!r}" if old.service_id else "the node"
            raise RegistrationError(f"check ID {check_id!r} already belongs to {holder}")
        keep = old is not None and not check.status
        record = CheckRecord(
            node=self.node_name,
            check_id=check_id,
            status=old.status if old is not None and keep else check.status or INITIAL_STATUS,
            definition=check,
            output=old.output if old is not None and keep else "",
            service_id=service_id,
            service_name=owner.name if owner is not None else "",
        )
        self._put_check(record)

    def deregister_check(self, check_id: str) -> None:
        """Remove a local check (a service's, the node's or a maintenance one)."""
        _, checks = self._local()
        if check_id not in checks:
            raise UnknownLocalCheck(f"no check with ID {check_id!r} is registered on this agent")
        self._delete([check_id], [])

    def set_node_maintenance(self, enable: bool, reason: str = "") -> None:
        """Turn node maintenance on (a critical node check) or off; see maintenance.py."""
        _, checks = self._local()
        if not enable:
            if NODE_MAINTENANCE_ID in checks:
                self._delete([NODE_MAINTENANCE_ID], [])
        elif NODE_MAINTENANCE_ID not in checks:
            self._put_check(node_maintenance_check(self.node_name, reason))

    def set_service_maintenance(self, service_id: str, enable: bool, reason: str = "") -> None:
        """Turn a local service's maintenance on or off; `UnknownService` for an unknown ID."""
        services, checks = self._local()
        if service_id not in services:
            raise UnknownService(f"no service with ID {service_id!r} is registered on this agent")
        check_id = service_maintenance_id(service_id)
        if not enable:
            if check_id in checks:
                self._delete([check_id], [])
        elif check_id not in checks:
            self._put_check(service_maintenance_check(services[service_id], reason))

    def _put_check(self, record: CheckRecord) -> None:
        try:
            self.state.put(
                KIND_CHECK, record_key(self.node_name, record.check_id), encode_check(record)
            )
        except LocalProtocolError as exc:
            raise RegistrationError(str(exc)) from None

    def _observe(self, check_id: str, record: CheckRecord | None) -> None:
        """Tell the reaper a local check's state; wake `run_reaper` when its deadline moved."""
        after_s = 0.0 if record is None else record.definition.deregister_critical_service_after_s
        if record is None or after_s <= 0:
            moved = self.reaper.forget(check_id)  # no clock read: most checks have no limit
        else:
            moved = self.reaper.observe(
                check_id, record.service_id, record.status, after_s, self._clock()
            )
        if moved:
            self._reaper_moved.set()

    async def run_reaper(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deregister local services critical for too long (reaper.py), until cancelled."""
        task_status.started()
        while True:
            self._reaper_moved = trio.Event()
            deadline = self.reaper.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._reaper_moved.wait()
            for service_id in self.reaper.due(self._clock()):
                self._reap(service_id)

    def _reap(self, service_id: str) -> None:
        try:
            removed = self.deregister(service_id)
        except UnknownService:
            return  # deregistered meanwhile
        except LocalProtocolError as exc:
            log(_log, "warning", "critical service not reaped", exc_info=exc, service=service_id)
            return
        log(_log, "info", "deregistered a service critical for too long", services=removed)

    def update_ttl(self, check_id: str, status: str, output: str = "") -> None:
        """A TTL check's new status (Consul's pass/warn/fail/update); runner errors pass up."""
        if status not in STATUSES:
            raise DefinitionError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        output = output[:OUTPUT_MAX_CHARS]
        self.checks.ttl_update(check_id, status, output)
        # Written now as well, so the caller reads its own write; the runner's
        # own report of the same result then finds nothing to change.
        self._on_check_result(check_id, status, output)

    def _on_check_result(self, check_id: str, status: str, output: str) -> None:
        """The runner's report: write it when it changes what others see (see module doc)."""
        key = record_key(self.node_name, check_id)
        old = self._cache.checks.get(key)
        if old is None or status not in STATUSES:
            return  # removed meanwhile, or a runner bug: nothing to write
        output = output[:OUTPUT_MAX_CHARS]
        now = self._clock()
        if old.status == status:
            last = self._written_at.get(check_id)
            if old.output == output or (last is not None and now - last < RESULT_REWRITE_S):
                return
        value = self._cache.ours(encode_check(replace(old, status=status, output=output)))
        try:
            self.state.put(KIND_CHECK, key, value)
        except LocalProtocolError as exc:
            log(_log, "warning", "check result not written", exc_info=exc, check=check_id)
            return
        finally:
            self._cache.forget_ours()
        self._written_at[check_id] = now

    # --- reads ------------------------------------------------------------------------------

    def index(self) -> int:
        """Consul's X-Consul-Index for catalog and health reads (at least 1)."""
        return max(1, self.state.tracker.topic_index(*TOPICS))

    async def wait(self, index: int, timeout_s: float) -> int:
        """Block until a catalog or health answer may have changed after `index`, or timeout."""
        return max(1, await self.state.tracker.wait(TOPICS, index, timeout_s))

    def members_index(self) -> int:
        """The index node entries and serfHealth carry: the last member change."""
        return max(1, self.state.tracker.topic_index(TOPIC_MEMBERS))

    def _views(self, records: Mapping[str, ServiceRecord] | None = None) -> list[ServiceView]:
        """Views of `records` (by store key; default all) whose node is known, sorted."""
        node_of = self._nodes.node
        known: dict[str, NodeInfo | None] = {}
        views = []
        for key, record in (self._cache.services if records is None else records).items():
            if record.node not in known:
                known[record.node] = node_of(record.node)
            node = known[record.node]
            if node is not None:
                created, modified = self.state.tracker.entry_indexes(KIND_SERVICE, key)
                views.append(ServiceView(node, record, max(1, created), max(1, modified)))
        views.sort(key=lambda v: (v.node.name, v.record.service_id))
        return views

    def _node_checks(self, node: str) -> list[CheckView]:
        """The node's own checks (no service: maintenance, /v1/agent/check/register), by key."""
        found = []
        for key, record in sorted(self._index.checks_by_owner.get((node, ""), {}).items()):
            created, modified = self.state.tracker.entry_indexes(KIND_CHECK, key)
            found.append(CheckView(record, max(1, created), max(1, modified)))
        return found

    def _check_views(self, views: list[ServiceView]) -> dict[tuple[str, str], list[CheckView]]:
        """Checks of the visible services by (node, service ID), in store-key order."""
        owners = self._index.checks_by_owner
        found: list[tuple[str, tuple[str, str], CheckView]] = []
        for v in views:
            owner = (v.node.name, v.record.service_id)
            for key, record in owners.get(owner, {}).items():
                created, modified = self.state.tracker.entry_indexes(KIND_CHECK, key)
                view = CheckView(
                    record, max(1, created), max(1, modified), service_tags=v.record.tags
                )
                found.append((key, owner, view))
        grouped: dict[tuple[str, str], list[CheckView]] = {}
        for _, owner, view in sorted(found, key=lambda f: f[0]):
            grouped.setdefault(owner, []).append(view)
        return grouped

    @staticmethod
    def _matches(view: ServiceView, name: str, tags: tuple[str, ...], connect: bool) -> bool:
        record = view.record
        if connect:
            # The connect endpoints of `name`: its sidecars, and its native
            # instances, each its own endpoint at its own address (Consul's rule).
            proxy = record.proxy
            native = record.definition.connect_native and record.name == name
            proxied = (
                record.kind == "connect-proxy"
                and proxy is not None
                and proxy.destination_service_name == name
            )
            if not native and not proxied:
                return False
        elif record.name != name:
            return False
        return all(t in record.tags for t in tags)

    def services(self) -> dict[str, list[str]]:
        """Every visible service name with the sorted union of its instances' tags.

        From the per-name tag counts: O(names + their nodes), not O(instances),
        unless some instance of a name is on a reaped node (then that name's
        instances are read, to leave its tags out).
        """
        index = self._index
        known = {n.name for n in self._nodes.nodes()}
        found: dict[str, list[str]] = {}
        for name in sorted(index.by_name):
            nodes = index.nodes_by_name[name].keys()
            if nodes <= known:
                found[name] = sorted(index.tags_by_name.get(name, {}))
            elif not nodes.isdisjoint(known):
                records = index.by_name[name].values()
                found[name] = sorted({t for r in records if r.node in known for t in r.tags})
        return found

    def service_views(self) -> list[ServiceView]:
        """Every visible instance of every service, sorted by node then ID: O(instances)."""
        return self._views()

    def service_nodes(
        self, name: str, tag: str | Sequence[str] | None = None, *, connect: bool = False
    ) -> list[ServiceView]:
        """Instances of `name` (with every tag of `tag`), healthy or not; `connect`: its proxies."""
        tags = (tag,) if isinstance(tag, str) else tuple(tag or ())
        group = (self._index.connect if connect else self._index.by_name).get(name, {})
        return [v for v in self._views(group) if self._matches(v, name, tags, connect)]

    def health_service(
        self,
        name: str,
        tag: str | Sequence[str] | None = None,
        *,
        passing_only: bool = False,
        connect: bool = False,
    ) -> list[HealthEntry]:
        """Instances with their node's serfHealth and their own checks."""
        entries = self._health(self.service_nodes(name, tag, connect=connect))
        return [e for e in entries if e.passing] if passing_only else entries

    def _health(self, views: list[ServiceView]) -> list[HealthEntry]:
        checks = self._check_views(views)
        members_index = self.members_index()
        node_checks: dict[str, list[CheckView]] = {}
        for v in views:
            if v.node.name not in node_checks:
                node_checks[v.node.name] = self._node_checks(v.node.name)
        entries = [
            HealthEntry(
                v,
                (
                    serf_check(v.node, members_index),
                    *node_checks[v.node.name],
                    *checks.get((v.node.name, v.record.service_id), []),
                ),
            )
            for v in views
        ]
        return entries

    def service_spellings(self, lowered: str) -> list[str]:
        """The registered names equal to `lowered` but for case (DNS names are case-blind)."""
        return sorted(self._index.names_lower.get(lowered, {}))

    def instance_states(self, name: str, *, connect: bool = False) -> list[InstanceState]:
        """Each instance of `name` (`connect`: its connect endpoints) with its worst status.

        What DNS needs, without the views and check lists `health_service`
        builds for HTTP: O(instances of `name`).
        """
        group = (self._index.connect if connect else self._index.by_name).get(name, {})
        return self._states(group.values())

    def instance_states_at(self, ip: str, nodes: Iterable[str] = ()) -> list[InstanceState]:
        """Instances at IP `ip` (canonical text): theirs, or their node's when one of `nodes`.

        What a PTR answer needs; O(instances at that address and on those nodes).
        """
        records = list(self._index.by_address.get(ip, {}).values())
        for node in nodes:
            records += [r for r in self._index.by_node.get(node, {}).values() if not r.address]
        return self._states(records)

    def _states(self, records: Iterable[ServiceRecord]) -> list[InstanceState]:
        node_of, owners = self._nodes.node, self._index.checks_by_owner
        known: dict[str, NodeInfo | None] = {}
        found = []
        for record in records:
            if record.node not in known:
                known[record.node] = node_of(record.node)
            node = known[record.node]
            if node is None:
                continue  # reaped: hidden, as in every other read
            worst = 0 if node.healthy else 2
            for owner in ((record.node, ""), (record.node, record.service_id)):
                for check in owners.get(owner, {}).values():
                    worst = max(worst, _RANK.get(check.status, 2))
            found.append(InstanceState(record, node, _BY_RANK[worst]))
        found.sort(key=lambda s: (s.node.name, s.record.service_id))
        return found

    def node(self, name: str) -> NodeInfo | None:
        """One member by its exact name, None when unknown."""
        return self._nodes.node(name)

    def health_checks(self, name: str) -> list[CheckView]:
        """The checks of every instance of service `name` (no node checks, as Consul)."""
        checks = self._check_views(self.service_nodes(name))
        return [c for group in checks.values() for c in group]

    def health_node(self, node: str) -> list[CheckView]:
        """serfHealth and the service checks of `node`; [] for an unknown node."""
        info = self._nodes.node(node)
        if info is None:
            return []
        views = self._views(self._index.by_node.get(node, {}))
        checks = self._check_views(views)
        return [
            serf_check(info, self.members_index()),
            *self._node_checks(node),
            *(c for g in checks.values() for c in g),
        ]

    def health_state(self, state: str) -> list[CheckView]:
        """Every check (serfHealth included) in `state`, or all of them for "any"."""
        if state not in HEALTH_STATES:
            raise DefinitionError(f"state must be one of {', '.join(HEALTH_STATES)}, not {state!r}")
        members_index = self.members_index()
        nodes = self._nodes.nodes()
        found = [serf_check(n, members_index) for n in nodes]
        if state == "any":
            found += [c for g in self._check_views(self._views()).values() for c in g]
            found += [c for n in nodes for c in self._node_checks(n.name)]
        else:  # O(checks in that state), from the index
            found += self._service_checks(
                self._index.checks_by_status.get(state, {}), {n.name for n in nodes}
            )
        found.sort(key=lambda c: (c.record.node, c.record.check_id))
        return [c for c in found if state == "any" or c.record.status == state]

    def _service_checks(
        self, checks: Mapping[str, CheckRecord], known: set[str]
    ) -> list[CheckView]:
        """Views of `checks` whose instance is visible (its service exists, its node is known)."""
        found = []
        for key, record in checks.items():
            if record.node not in known:
                continue
            tags: tuple[str, ...] = ()
            if record.service_id:  # else a node check: visible with its node
                owner = self._cache.services.get(record_key(record.node, record.service_id))
                if owner is None or owner.node != record.node:
                    continue
                tags = owner.tags
            created, modified = self.state.tracker.entry_indexes(KIND_CHECK, key)
            found.append(CheckView(record, max(1, created), max(1, modified), service_tags=tags))
        return found

    def nodes(self) -> list[NodeInfo]:
        """Every known member, whatever its state (Consul lists failed nodes too)."""
        return self._nodes.nodes()

    def node_services(self, node: str) -> tuple[NodeInfo, list[ServiceView]] | None:
        """A node and its services; None for an unknown node."""
        info = self._nodes.node(node)
        if info is None:
            return None
        return info, self._views(self._index.by_node.get(node, {}))

    def local_services(self) -> list[ServiceRecord]:
        """This agent's own services, sorted by ID (even while it is not a member yet)."""
        services, _ = self._local()
        return [services[k] for k in sorted(services)]

    def local_checks(self) -> list[CheckView]:
        """This agent's own checks with their indexes and service tags, sorted by ID."""
        services, _ = self._local()
        found = []
        for key, record in sorted(self._index.checks_by_node.get(self.node_name, {}).items()):
            if record.node == self.node_name:
                created, modified = self.state.tracker.entry_indexes(KIND_CHECK, key)
                owner = services.get(record.service_id)
                tags = owner.tags if owner is not None else ()
                found.append(
                    CheckView(record, max(1, created), max(1, modified), service_tags=tags)
                )
        return found
