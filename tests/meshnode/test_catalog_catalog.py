"""Catalog semantics over a `LocalState`: registration, sidecars, config sync, health, results."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from meshnode.catalog.catalog import RESULT_REWRITE_S, Catalog, UnknownService
from meshnode.catalog.checks import CheckSpec, Report
from meshnode.catalog.definitions import DefinitionError, ServiceDefinition, parse_service
from meshnode.catalog.plan import SIDECAR_PORT_MIN
from meshnode.catalog.records import KIND_CHECK, KIND_SERVICE
from meshnode.gossip.store import Entry, Version
from meshnode.store.state import LocalState, NodeInfo, StaticNodes


class FakeRunner:
    """Records what the catalog asks for; TTL updates report at once, as the runner does."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.specs: list[CheckSpec] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def set(self, specs: list[CheckSpec]) -> None:
        self.specs = list(specs)

    def update(self, changed: list[CheckSpec], removed: list[str]) -> None:
        gone = {*removed, *(s.check_id for s in changed)}
        kept = [s for s in self.specs if s.check_id not in gone]
        self.specs = sorted([*kept, *changed], key=lambda s: s.check_id)

    def ttl_update(self, check_id: str, status: str, output: str) -> None:
        self.report(check_id, status, output)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make(
    state: LocalState | None = None, clock: Clock | None = None
) -> tuple[Catalog, LocalState, StaticNodes]:
    state = state or LocalState("n1")
    nodes = StaticNodes(
        [NodeInfo("n1", "10.0.0.1", "alive"), NodeInfo("n2", "10.0.0.2", "alive")], state.tracker
    )
    catalog = Catalog(
        state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner, clock=clock or Clock()
    )
    return catalog, state, nodes


def svc(**data: Any) -> ServiceDefinition:
    return parse_service({"Name": "web", "Port": 80, **data})


def runner(catalog: Catalog) -> FakeRunner:
    assert isinstance(catalog.checks, FakeRunner)
    return catalog.checks


def statuses(catalog: Catalog) -> dict[str, str]:
    return {c.record.check_id: c.record.status for c in catalog.local_checks()}


def test_register_read_and_deregister() -> None:
    catalog, _, _ = make()
    ids = catalog.register(svc(ID="web1", Tags=["b", "a"], Check={"TTL": "10s"}))
    assert ids == ["web1"]
    assert catalog.services() == {"web": ["a", "b"]}
    [view] = catalog.service_nodes("web", "a")
    assert (view.node.name, view.record.port) == ("n1", 80)
    assert catalog.service_nodes("web", "c") == []
    assert statuses(catalog) == {"service:web1": "critical"}
    assert [s.check_id for s in runner(catalog).specs] == ["service:web1"]
    assert catalog.deregister("web1") == ["web1"]
    assert catalog.services() == {}
    assert catalog.local_checks() == []
    assert runner(catalog).specs == []
    with pytest.raises(UnknownService, match="no service with ID 'web1'"):
        catalog.deregister("web1")


def test_a_native_instance_is_its_own_connect_endpoint() -> None:
    catalog, _, _ = make()
    catalog.register(svc(Name="db", ID="db-native", Port=9443, Connect={"Native": True}))
    catalog.register(svc(Name="db", ID="db-proxied", Port=5432, Connect={"SidecarService": {}}))
    catalog.register(svc(Name="api", Port=81, Connect={"Native": True}))
    endpoints = {
        v.record.service_id: v.record.port for v in catalog.service_nodes("db", connect=True)
    }
    # The native instance at its own port, the proxied one through its sidecar; never api.
    assert endpoints == {"db-native": 9443, "db-proxied-sidecar-proxy": SIDECAR_PORT_MIN}
    assert [v.record.service_id for v in catalog.service_nodes("api", connect=True)] == ["api"]


def test_sidecar_expansion_and_port_allocation() -> None:
    catalog, _, _ = make()
    upstreams = [{"DestinationName": "db", "LocalBindPort": 9191}]
    sidecar = {"SidecarService": {"Proxy": {"Upstreams": upstreams}}}
    assert catalog.register(svc(Connect=sidecar)) == ["web", "web-sidecar-proxy"]
    catalog.register(svc(Name="api", Port=81, Connect={"SidecarService": {}}))
    catalog.register(svc(Name="pinned", Connect={"SidecarService": {"Port": 22000}}))
    ports = {r.service_id: r.port for r in catalog.local_services()}
    assert ports["web-sidecar-proxy"] == SIDECAR_PORT_MIN
    assert ports["api-sidecar-proxy"] == SIDECAR_PORT_MIN + 1
    assert ports["pinned-sidecar-proxy"] == 22000
    [proxy] = catalog.service_nodes("web", connect=True)
    assert proxy.record.kind == "connect-proxy"
    assert proxy.record.proxy is not None
    assert proxy.record.proxy.destination_service_id == "web"
    assert proxy.record.proxy.local_service_address == "127.0.0.1"
    assert proxy.record.proxy.local_service_port == 80
    assert [u.destination_name for u in proxy.record.proxy.upstreams] == ["db"]
    tcp = {s.check_id: s.tcp for s in runner(catalog).specs}
    assert tcp["service:web-sidecar-proxy"] == f"127.0.0.1:{SIDECAR_PORT_MIN}"
    # Re-registering keeps the port; removing the parent removes its sidecar and checks.
    catalog.register(svc(Tags=["v2"], Connect=sidecar))
    assert {r.service_id: r.port for r in catalog.local_services()}["web-sidecar-proxy"] == 21000
    assert catalog.deregister("web") == ["web", "web-sidecar-proxy"]
    assert "service:web-sidecar-proxy" not in statuses(catalog)


def test_a_moved_sidecar_port_rewrites_the_record_and_its_check_and_is_kept() -> None:
    """The sidecar found its port taken on the host: the catalog follows where it listens."""
    catalog, _, _ = make()
    sidecar: dict[str, Any] = {"SidecarService": {}}
    catalog.register(svc(Connect=sidecar))
    catalog.move_sidecar_port("web-sidecar-proxy", SIDECAR_PORT_MIN + 7)
    ports = {r.service_id: r.port for r in catalog.local_services()}
    assert ports == {"web": 80, "web-sidecar-proxy": SIDECAR_PORT_MIN + 7}
    tcp = {s.check_id: s.tcp for s in runner(catalog).specs}
    assert tcp["service:web-sidecar-proxy"] == f"127.0.0.1:{SIDECAR_PORT_MIN + 7}"
    [proxy] = catalog.service_nodes("web", connect=True)
    assert proxy.record.port == SIDECAR_PORT_MIN + 7
    catalog.register(svc(Tags=["v2"], Connect=sidecar))  # a re-registration keeps it
    ports = {r.service_id: r.port for r in catalog.local_services()}
    assert ports["web-sidecar-proxy"] == SIDECAR_PORT_MIN + 7
    with pytest.raises(UnknownService):
        catalog.move_sidecar_port("web", SIDECAR_PORT_MIN + 8)  # not a proxy


def test_reregistering_drops_the_sidecar_and_old_checks_but_keeps_status() -> None:
    catalog, _, _ = make()
    catalog.register(svc(Checks=[{"TTL": "5s"}, {"TTL": "9s"}], Connect={"SidecarService": {}}))
    catalog.update_ttl("service:web:1", "passing", "fine")
    catalog.register(svc(Checks=[{"TTL": "5s"}, {"TTL": "9s"}]))
    assert [r.service_id for r in catalog.local_services()] == ["web"]
    assert statuses(catalog) == {"service:web:1": "passing", "service:web:2": "critical"}
    catalog.register(svc(Check={"TTL": "5s", "CheckID": "service:web:1"}))
    assert statuses(catalog) == {"service:web:1": "passing"}


def test_refused_registrations_change_nothing() -> None:
    catalog, state, _ = make()
    catalog.register(svc(Check={"TTL": "5s", "ID": "shared"}, Connect={"SidecarService": {}}))
    before = state.store.index
    with pytest.raises(DefinitionError, match="'shared' already belongs to service 'web'"):
        catalog.register(svc(Name="api", Check={"TTL": "5s", "ID": "shared"}))
    with pytest.raises(DefinitionError, match="is the sidecar of 'web'"):
        catalog.register(svc(ID="web-sidecar-proxy"))
    with pytest.raises(DefinitionError, match="too long for a sidecar"):
        catalog.register(svc(Name="w" * 60, Connect={"SidecarService": {}}))
    assert state.store.index == before


def test_sync_config_replaces_config_services_only() -> None:
    catalog, _, _ = make()
    catalog.register(svc(Name="manual"))
    catalog.sync_config([svc(Name="a"), svc(Name="b", Connect={"SidecarService": {}})])
    assert sorted(catalog.services()) == ["a", "b", "b-sidecar-proxy", "manual"]
    assert catalog.sync_config([svc(Name="a")]) == ["b", "b-sidecar-proxy"]
    assert sorted(catalog.services()) == ["a", "manual"]
    with pytest.raises(DefinitionError, match="used by two services"):
        catalog.sync_config(
            [
                svc(Name="x", Check={"TTL": "1s", "ID": "c"}),
                svc(Name="y", Check={"TTL": "1s", "ID": "c"}),
            ]
        )
    assert sorted(catalog.services()) == ["a", "manual"]
    catalog.sync_config([])
    assert sorted(catalog.services()) == ["manual"]


def test_unchanged_config_writes_nothing() -> None:
    catalog, state, _ = make()
    defs = [svc(Check={"TTL": "5s"}, Connect={"SidecarService": {}})]
    catalog.sync_config(defs)
    before = state.store.index
    catalog.sync_config(defs)
    assert state.store.index == before


def test_failed_node_is_critical_and_reaped_node_is_hidden() -> None:
    catalog, state, nodes = make()
    catalog.register(svc(Check={"TTL": "5s", "Status": "passing"}))
    remote = Catalog(state, nodes, node_name="n2", datacenter="dc1", runner=FakeRunner)
    remote.register(svc(ID="web2"))
    healthy = catalog.health_service("web", passing_only=True)
    assert [(e.service.node.name, e.service.record.service_id) for e in healthy] == [
        ("n1", "web"),
        ("n2", "web2"),
    ]
    nodes.set(NodeInfo("n2", "10.0.0.2", "failed"))
    entries = {e.service.node.name: e for e in catalog.health_service("web")}
    serf = entries["n2"].checks[0].record
    assert (serf.check_id, serf.name, serf.status) == (
        "serfHealth",
        "Serf Health Status",
        "critical",
    )
    assert [e.service.node.name for e in catalog.health_service("web", passing_only=True)] == ["n1"]
    assert [c.record.check_id for c in catalog.health_state("critical")] == ["serfHealth"]
    nodes.remove("n2")
    assert [v.node.name for v in catalog.service_nodes("web")] == ["n1"]
    assert catalog.node_services("n2") is None


async def test_a_failing_node_wakes_a_blocking_query(
    autojump_clock: trio.testing.MockClock,
) -> None:
    catalog, _, nodes = make()
    catalog.register(svc())
    index = catalog.index()
    woke_at: list[float] = []

    async def blocking() -> None:
        assert await catalog.wait(index, 60.0) > index
        woke_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocking)
        await trio.sleep(5)
        nodes.set(NodeInfo("n1", "10.0.0.1", "suspect"))
    assert woke_at == [5.0]
    assert not catalog.health_service("web")[0].passing


def test_results_are_written_on_change_or_after_five_minutes() -> None:
    clock = Clock()
    catalog, state, _ = make(clock=clock)
    catalog.register(svc(Check={"TTL": "5s"}))
    report = runner(catalog).report
    report("service:web", "passing", "one")
    first = state.store.index
    report("service:web", "passing", "two")  # new output, too soon: not gossiped
    clock.now_s += RESULT_REWRITE_S - 1
    report("service:web", "passing", "three")
    assert state.store.index == first
    clock.now_s += 1
    report("service:web", "passing", "four")
    assert state.store.index == first + 1
    report("service:web", "warning", "four")  # a status change is written at once
    assert state.store.index == first + 2
    report("service:web", "warning", "four")
    report("ghost", "critical", "")  # removed meanwhile: ignored
    assert state.store.index == first + 2
    assert catalog.health_checks("web")[0].record.output == "four"


def test_a_new_catalog_tells_the_runner_about_stored_checks() -> None:
    catalog, state, _ = make()
    catalog.register(svc(Check={"TCP": "localhost:80", "Interval": "5s"}))
    again, _, _ = make(state)
    assert runner(again).specs == runner(catalog).specs
    assert runner(again).specs[0].tcp == "localhost:80"


def test_malformed_store_values_are_skipped() -> None:
    catalog, state, _ = make()
    catalog.register(svc())
    bad = [
        Entry(KIND_SERVICE, "n2/evil", b"\xa1", Version(100, "n2")),
        Entry(KIND_CHECK, "n2/c", b"not cbor", Version(101, "n2")),
    ]
    assert state.merge(bad) == 2
    assert catalog.services() == {"web": []}
    assert catalog.health_state("any")[-1].record.check_id == "serfHealth"
    assert catalog.malformed_records == 2


def test_ttl_update_checks_the_status() -> None:
    catalog, _, _ = make()
    catalog.register(svc(Check={"TTL": "5s"}))
    with pytest.raises(DefinitionError, match="status must be one of"):
        catalog.update_ttl("service:web", "fine")
    catalog.update_ttl("service:web", "warning", "x" * 10_000)
    [check] = catalog.local_checks()
    assert (check.record.status, len(check.record.output)) == ("warning", 4096)


async def test_the_real_runner_reports_ttl_expiry(autojump_clock: trio.testing.MockClock) -> None:
    state = LocalState("n1")
    nodes = StaticNodes([NodeInfo("n1", "10.0.0.1", "alive")], state.tracker)
    catalog = Catalog(state, nodes, node_name="n1", datacenter="dc1")
    catalog.register(svc(Check={"TTL": "30s"}))
    async with trio.open_nursery() as nursery:
        await nursery.start(catalog.checks.run)
        catalog.update_ttl("service:web", "passing", "alive")
        assert catalog.health_service("web", passing_only=True)
        await trio.sleep(31)
        [check] = catalog.local_checks()
        assert check.record.status == "critical"
        assert check.record.output.startswith("TTL expired")
        nursery.cancel_scope.cancel()


async def test_a_ttl_check_starts_in_its_registered_status_until_its_ttl(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Consul's rule, in the docs: a check starts critical unless its Status says otherwise.

    The runner used to start every TTL check critical, whatever the registration said.
    """
    state = LocalState("n1")
    nodes = StaticNodes([NodeInfo("n1", "10.0.0.1", "alive")], state.tracker)
    catalog = Catalog(state, nodes, node_name="n1", datacenter="dc1")
    await nursery.start(catalog.checks.run)
    start = trio.current_time()
    catalog.register(parse_service({"Name": "web", "Check": {"TTL": "30s", "Status": "passing"}}))
    catalog.register(parse_service({"Name": "db", "Check": {"TTL": "30s"}}))

    def statuses(of: Catalog) -> dict[str, str]:
        return {c.record.check_id: c.record.status for c in of.local_checks()}

    await trio.sleep_until(start + 29.9)
    assert statuses(catalog) == {"service:web": "passing", "service:db": "critical"}
    await trio.sleep_until(start + 30.1)
    assert statuses(catalog)["service:web"] == "critical"  # no update within the TTL
    catalog.update_ttl("service:web", "passing")
    # A restarted agent does not know how long it was down: critical until updated.
    again = Catalog(state, nodes, node_name="n1", datacenter="dc1")
    await nursery.start(again.checks.run)
    await trio.sleep(0.1)
    assert statuses(again)["service:web"] == "critical"
