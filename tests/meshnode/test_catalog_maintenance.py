"""Node checks and maintenance mode in the catalog: what health reads and DNS then see."""

from __future__ import annotations

import pytest

from meshnode.catalog.catalog import Catalog, UnknownLocalCheck, UnknownService
from meshnode.catalog.definitions import DefinitionError, parse_check_registration, parse_service
from meshnode.catalog.dns_view import CatalogDnsView
from meshnode.catalog.maintenance import parse_enable
from meshnode.store.state import LocalState, NodeInfo, StaticNodes

from .test_catalog_catalog import Clock, FakeRunner


def make() -> Catalog:
    state = LocalState("n1")
    nodes = StaticNodes(
        [NodeInfo("n1", "10.0.0.1", "alive"), NodeInfo("n2", "10.0.0.2", "alive")], state.tracker
    )
    catalog = Catalog(
        state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner, clock=Clock()
    )
    for name in ("web", "db"):
        catalog.register(parse_service({"Name": name, "Check": {"TTL": "30s"}}))
        catalog.update_ttl(f"service:{name}", "passing")
    return catalog


def dns_nodes(catalog: Catalog, name: str) -> list[str]:
    return [
        i.node for i in CatalogDnsView(catalog).service_instances(name) if i.status != "critical"
    ]


def passing(catalog: Catalog, name: str) -> list[str]:
    return [e.service.record.service_id for e in catalog.health_service(name, passing_only=True)]


def test_node_maintenance_hides_every_service_and_comes_back() -> None:
    catalog = make()
    assert dns_nodes(catalog, "web") == ["n1"] and passing(catalog, "db") == ["db"]
    catalog.set_node_maintenance(True, "kernel upgrade")
    assert dns_nodes(catalog, "web") == [] and dns_nodes(catalog, "db") == []
    assert passing(catalog, "web") == []
    [entry] = catalog.health_service("web")
    checks = {c.record.check_id: c.record for c in entry.checks}
    assert list(checks) == ["serfHealth", "_node_maintenance", "service:web"]
    maintenance = checks["_node_maintenance"]
    assert (maintenance.status, maintenance.definition.notes) == ("critical", "kernel upgrade")
    assert maintenance.definition.kind == "maintenance"
    catalog.set_node_maintenance(True, "second reason")  # already on: the first reason stays
    [node_check] = [
        c for c in catalog.health_node("n1") if c.record.check_id == "_node_maintenance"
    ]
    assert node_check.record.definition.notes == "kernel upgrade"
    assert [c.record.check_id for c in catalog.health_state("critical")] == ["_node_maintenance"]
    catalog.set_node_maintenance(False)
    assert dns_nodes(catalog, "web") == ["n1"] and passing(catalog, "db") == ["db"]
    catalog.set_node_maintenance(False)  # not on: nothing to do


def test_service_maintenance_hides_one_service_and_survives_its_reregistration() -> None:
    catalog = make()
    catalog.set_service_maintenance("web", True)
    assert dns_nodes(catalog, "web") == [] and dns_nodes(catalog, "db") == ["n1"]
    [entry] = catalog.health_service("web")
    checks = {c.record.check_id: c.record for c in entry.checks}
    check = checks["_service_maintenance:web"]
    assert check.service_id == "web" and check.status == "critical"
    assert "without a reason" in check.definition.notes
    # A reload re-registers the service: maintenance is the operator's, it stays.
    catalog.register(parse_service({"Name": "web", "Check": {"TTL": "30s"}}))
    assert dns_nodes(catalog, "web") == []
    catalog.set_service_maintenance("web", False)
    assert dns_nodes(catalog, "web") == ["n1"]
    with pytest.raises(UnknownService):
        catalog.set_service_maintenance("ghost", True)
    # Deregistering the service takes its maintenance check with it.
    catalog.set_service_maintenance("db", True)
    catalog.deregister("db")
    assert [c.record.check_id for c in catalog.local_checks()] == ["service:web"]


def test_node_checks_from_check_register() -> None:
    catalog = make()
    disk, service_id = parse_check_registration({"Name": "disk", "TTL": "60s", "Status": "passing"})
    assert service_id == ""
    catalog.register_check(disk)
    assert dns_nodes(catalog, "web") == ["n1"]
    catalog.update_ttl("disk", "critical", "95% full")
    assert dns_nodes(catalog, "web") == [] and dns_nodes(catalog, "db") == []
    catalog.deregister_check("disk")
    assert dns_nodes(catalog, "web") == ["n1"]
    with pytest.raises(UnknownLocalCheck):
        catalog.deregister_check("disk")


def test_service_checks_from_check_register() -> None:
    catalog = make()
    check, service_id = parse_check_registration(
        {"Name": "Web port", "ID": "web-port", "TTL": "60s", "ServiceID": "web"}
    )
    catalog.register_check(check, service_id)
    [entry] = catalog.health_service("web")
    added = {c.record.check_id: c.record for c in entry.checks}["web-port"]
    assert (added.name, added.service_name) == ("Web port", "web")
    assert added.status == "critical"  # Consul's start, as for a service's own checks
    assert dns_nodes(catalog, "web") == [] and dns_nodes(catalog, "db") == ["n1"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"Name": "x", "ID": "_node_maintenance", "TTL": "1s"}, "reserved"),
        ({"Name": "x", "ID": "_service_maintenance:web", "TTL": "1s"}, "reserved"),
        ({"Name": "x", "ID": "serfHealth", "TTL": "1s"}, "reserved"),
        ({"Name": "x", "TTL": "1s", "ServiceID": "ghost"}, "'ghost' is not registered"),
        ({"Name": "x", "ID": "service:web", "TTL": "1s"}, "already belongs to service 'web'"),
    ],
)
def test_check_registrations_refused_change_nothing(body: dict[str, str], fragment: str) -> None:
    catalog = make()
    before = catalog.index()
    check, service_id = parse_check_registration(body)
    with pytest.raises(DefinitionError) as caught:
        catalog.register_check(check, service_id)
    assert fragment in str(caught.value)
    assert catalog.index() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("F", False), ("0", False)],
)
def test_enable_is_parsed_as_go_parses_a_boolean(text: str, expected: bool) -> None:
    assert parse_enable(text) is expected


@pytest.mark.parametrize("text", [None, "", "yes", "on", "2"])
def test_enable_refusals(text: str | None) -> None:
    with pytest.raises(DefinitionError):
        parse_enable(text)
