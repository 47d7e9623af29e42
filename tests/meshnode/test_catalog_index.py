"""The incremental catalog indexes: equal to a rebuild, and a change touches only its records."""

from __future__ import annotations

import contextlib
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.catalog.catalog import Catalog, UnknownService
from meshnode.catalog.checks import CheckSpec
from meshnode.catalog.definitions import CheckDefinition, DefinitionError, parse_service
from meshnode.catalog.dns_view import CatalogDnsView
from meshnode.catalog.index import RecordIndex, canonical_ip
from meshnode.catalog.records import (
    KIND_CHECK,
    KIND_SERVICE,
    CheckRecord,
    ServiceRecord,
)
from meshnode.catalog.testing import check_entry, service_entry, tombstone
from meshnode.catalog.views import RecordCache
from meshnode.dns import DnsInstance
from meshnode.store.state import LocalState, NodeInfo, StaticNodes
from tests.meshnode.test_catalog_catalog import FakeRunner

NAMES = ("web", "Web", "db", "api")
IPS = ("", "10.0.0.9", "10.0.0.2", "fd00:0::6", "db.example")
NODES = ("n1", "n2", "n3")


def _make() -> tuple[Catalog, LocalState, StaticNodes]:
    state = LocalState("n1")
    nodes = StaticNodes(
        [
            NodeInfo("n1", "10.0.0.1", "alive"),
            NodeInfo("n2", "10.0.0.2", "alive"),
            NodeInfo("N3", "10.0.0.9", "alive"),
        ],
        state.tracker,
    )
    catalog = Catalog(state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner)
    return catalog, state, nodes


def _remote_service(node: str, i: int, name: str, ip: str, native: bool) -> ServiceRecord:
    body: dict[str, Any] = {"Name": name, "ID": f"r{i}", "Port": 80 + i}
    if ip:
        body["Address"] = ip
    if native:
        body["Connect"] = {"Native": True}
    return ServiceRecord(node, parse_service(body))


def _remote_check(node: str, i: int, status: str) -> CheckRecord:
    definition = CheckDefinition(kind="ttl", check_id=f"c{i}", ttl_s=30.0)
    return CheckRecord(node, f"c{i}", status, definition, service_id=f"r{i}")


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("register"),
            st.integers(0, 4),
            st.sampled_from(NAMES),
            st.sampled_from(IPS),
            st.booleans(),  # with a sidecar
            st.sampled_from(("passing", "warning", "critical")),
        ),
        st.tuples(st.just("deregister"), st.integers(0, 4)),
        st.tuples(
            st.just("remote"),
            st.sampled_from(NODES[1:]),
            st.integers(0, 4),
            st.sampled_from(NAMES),
            st.sampled_from(IPS),
            st.booleans(),  # connect-native
        ),
        st.tuples(st.just("remote-delete"), st.sampled_from(NODES[1:]), st.integers(0, 4)),
        st.tuples(
            st.just("remote-check"),
            st.sampled_from(NODES[1:]),
            st.integers(0, 4),
            st.sampled_from(("passing", "warning", "critical", None)),
        ),
        # alive, failed, or None: reaped (its services hidden everywhere)
        st.tuples(
            st.just("member"), st.sampled_from(("n2", "N3")), st.sampled_from((True, False, None))
        ),
    ),
    max_size=40,
)


def _run(catalog: Catalog, state: LocalState, nodes: StaticNodes, ops: list[Any]) -> None:
    lamport = 1000
    for op in ops:
        lamport += 1
        kind = op[0]
        if kind == "register":
            _, i, name, ip, sidecar, status = op
            body: dict[str, Any] = {
                "Name": name,
                "ID": f"l{i}",
                "Port": 80,
                "Check": {"TTL": "5s", "Status": status},
            }
            if ip:
                body["Address"] = ip
            if sidecar:
                body["Connect"] = {"SidecarService": {}}
            with contextlib.suppress(DefinitionError):
                catalog.register(parse_service(body))
        elif kind == "deregister":
            with contextlib.suppress(UnknownService):
                catalog.deregister(f"l{op[1]}")
        elif kind == "remote":
            _, node, i, name, ip, native = op
            state.merge([service_entry(_remote_service(node, i, name, ip, native), lamport)])
        elif kind == "remote-delete":
            _, node, i = op
            state.merge([tombstone(KIND_SERVICE, node, f"r{i}", lamport)])
        elif kind == "remote-check":
            _, node, i, status = op
            if status is None:
                entry = tombstone(KIND_CHECK, node, f"c{i}", lamport)
            else:
                entry = check_entry(_remote_check(node, i, status), lamport)
            state.merge([entry])
        else:
            _, node, alive = op
            address = "10.0.0.2" if node == "n2" else "10.0.0.9"
            if alive is None:
                nodes.remove(node)
            else:
                nodes.set(NodeInfo(node, address, "alive" if alive else "failed"))


def _tables(index: RecordIndex) -> dict[str, Any]:
    return {k: v for k, v in vars(index).items() if v}


def _brute_instances_at(catalog: Catalog, ip: str) -> set[tuple[str, str, str]]:
    """What the old reverse map found: every instance of every name, filtered by address."""
    return {
        (name, e.service.node.name, e.service.record.service_id)
        for name in catalog.services()
        for e in catalog.health_service(name)
        if canonical_ip(e.service.record.address or e.service.node.address) == ip
    }


def _assert_reads_equal_a_walk(catalog: Catalog) -> None:
    """services() and health_state() from the indexes equal the old walk over every record."""
    views = catalog._views()
    names: dict[str, set[str]] = {}
    for v in views:
        names.setdefault(v.record.name, set()).update(v.record.tags)
    assert catalog.services() == {n: sorted(t) for n, t in sorted(names.items())}
    walked = [c for g in catalog._check_views(views).values() for c in g]
    for state in ("passing", "warning", "critical"):
        expected = sorted(
            (c.record.node, c.record.check_id, c.service_tags)
            for c in walked
            if c.record.status == state
        )
        got = sorted(
            (c.record.node, c.record.check_id, c.service_tags)
            for c in catalog.health_state(state)
            if not c.synthetic
        )
        assert got == expected, state


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_incremental_indexes_equal_a_rebuild(ops: list[Any]) -> None:
    catalog, state, nodes = _make()
    _run(catalog, state, nodes, ops)
    rebuilt = RecordCache(state)  # reads the store from scratch
    assert _tables(catalog._cache.index) == _tables(rebuilt.index)
    assert {k: v.node for k, v in catalog._cache.services.items()} == {
        k: v.node for k, v in rebuilt.services.items()
    }
    # The check runner holds exactly this node's checks, as a full `set` would give.
    runner = catalog.checks
    assert isinstance(runner, FakeRunner)
    fresh = Catalog(state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner)
    assert isinstance(fresh.checks, FakeRunner)
    assert runner.specs == fresh.checks.specs
    _assert_reads_equal_a_walk(catalog)
    # The DNS view's per-address answers equal a walk over every service.
    view = CatalogDnsView(catalog)
    for ip in {canonical_ip(a) for a in (*IPS, "10.0.0.1")} - {None}:
        assert ip is not None
        found = {(name, i.node, i.service_id) for name, i in view.instances_at(ip)}
        assert found == _brute_instances_at(catalog, ip), ip


class CountingRunner(FakeRunner):
    """A runner that also counts what it is told."""

    def __init__(self, report: Any) -> None:
        super().__init__(report)
        self.calls: list[tuple[str, int]] = []

    def set(self, specs: list[CheckSpec]) -> None:
        self.calls.append(("set", len(specs)))
        super().set(specs)

    def update(self, changed: list[CheckSpec], removed: list[str]) -> None:
        self.calls.append(("update", len(changed) + len(removed)))
        super().update(changed, removed)


def test_a_change_touches_only_the_changed_services_records() -> None:
    state = LocalState("n1")
    nodes = StaticNodes([NodeInfo("n1", "10.0.0.1", "alive")], state.tracker)
    catalog = Catalog(
        state, nodes, node_name="n1", datacenter="dc1", runner=CountingRunner, clock=lambda: 0.0
    )
    runner = catalog.checks
    assert isinstance(runner, CountingRunner)
    for i in range(300):
        catalog.register(parse_service({"Name": f"s{i}", "Port": 1000 + i, "Check": {"TTL": "5s"}}))
    told: list[dict[str, ServiceRecord | None]] = []
    catalog.subscribe_local(told.append)
    runner.calls.clear()

    catalog.register(
        parse_service(
            {"Name": "web", "Port": 80, "Check": {"TTL": "5s"}, "Connect": {"SidecarService": {}}}
        )
    )
    # The service and its sidecar, each with its check, in one store batch (one
    # change): nothing of the 300 others.
    assert runner.calls == [("update", 2)]
    assert [sorted(t) for t in told] == [["web", "web-sidecar-proxy"]]
    assert len(runner.specs) == 302

    runner.calls.clear()
    told.clear()
    catalog.deregister("web")
    assert runner.calls == [("update", 2)]
    assert told == [{"web": None, "web-sidecar-proxy": None}]

    runner.calls.clear()
    catalog.update_ttl("service:s7", "critical", "down")
    assert runner.calls == [("update", 1)]  # the status write: one spec, unchanged, kept
    assert ("set", 301) not in runner.calls


def test_remote_changes_tell_the_local_listeners_nothing() -> None:
    catalog, state, _ = _make()
    told: list[object] = []
    catalog.subscribe_local(told.append)
    state.merge([service_entry(_remote_service("n2", 1, "web", "", False), 5)])
    assert told == []
    assert [e.service.record.service_id for e in catalog.health_service("web")] == ["r1"]


def test_dns_view_finds_names_case_blind_and_nodes_by_address() -> None:
    catalog, state, _ = _make()
    catalog.register(parse_service({"Name": "Web", "Port": 80}))
    state.merge([service_entry(_remote_service("N3", 2, "web", "", False), 5)])
    view = CatalogDnsView(catalog)
    assert sorted(i.node for i in view.service_instances("web")) == ["N3", "n1"]
    node = view.node("n3")
    assert node is not None and node.name == "N3"
    assert [n.name for n in view.nodes_at("10.0.0.9")] == ["N3"]
    at: list[tuple[str, DnsInstance]] = view.instances_at("10.0.0.9")
    assert [(name, i.service_id) for name, i in at] == [("web", "r2")]


def test_random_churn_keeps_the_index_equal_to_a_rebuild() -> None:
    """A longer seeded run than hypothesis makes: many changes to the same keys."""
    seed = 7
    rng = random.Random(seed)
    catalog, state, nodes = _make()
    ops: list[Any] = []
    for _ in range(400):
        ops.append(
            rng.choice(
                [
                    (
                        "register",
                        rng.randrange(5),
                        rng.choice(NAMES),
                        rng.choice(IPS),
                        rng.random() < 0.3,
                        "passing",
                    ),
                    ("deregister", rng.randrange(5)),
                    (
                        "remote",
                        rng.choice(NODES[1:]),
                        rng.randrange(5),
                        rng.choice(NAMES),
                        rng.choice(IPS),
                        rng.random() < 0.3,
                    ),
                    ("remote-delete", rng.choice(NODES[1:]), rng.randrange(5)),
                ]
            )
        )
    _run(catalog, state, nodes, ops)
    assert _tables(catalog._cache.index) == _tables(RecordCache(state).index), f"seed={seed}"
