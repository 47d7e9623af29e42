"""DeregisterCriticalServiceAfter: the sans-IO reaper, then the catalog on a MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import parse_check_registration, parse_service
from meshnode.catalog.reaper import DEREGISTER_AFTER_MIN_S, CriticalReaper
from meshnode.store.state import LocalState, NodeInfo, StaticNodes

from .test_catalog_catalog import FakeRunner


def test_reaper_deadlines_on_plain_numbers() -> None:
    reaper = CriticalReaper(min_after_s=60.0)
    assert reaper.next_deadline() is None
    assert reaper.observe("c1", "web", "critical", 90.0, now=10.0)
    assert reaper.next_deadline() == 100.0
    # Seen critical again: the count goes on from the first sight.
    assert not reaper.observe("c1", "web", "critical", 90.0, now=50.0)
    assert reaper.due(99.9) == []
    # Under the floor: raised to it (Consul's one minute).
    assert reaper.observe("c2", "db", "critical", 5.0, now=20.0)
    assert reaper.next_deadline() == 80.0
    assert reaper.due(80.0) == ["db"]
    assert reaper.next_deadline() == 100.0
    assert reaper.due(100.0) == ["web"] and reaper.next_deadline() is None


@pytest.mark.parametrize(
    ("status", "service_id", "after_s"),
    [
        ("passing", "web", 90.0),
        ("warning", "web", 90.0),
        ("critical", "", 90.0),
        ("critical", "web", 0.0),
    ],
)
def test_reaper_ignores_what_cannot_be_reaped(status: str, service_id: str, after_s: float) -> None:
    reaper = CriticalReaper()
    assert not reaper.observe("c", service_id, status, after_s, now=0.0)
    assert reaper.next_deadline() is None


def test_recovery_resets_and_two_checks_reap_their_service_once() -> None:
    reaper = CriticalReaper(min_after_s=1.0)
    reaper.observe("c1", "web", "critical", 10.0, now=0.0)
    assert reaper.observe("c1", "web", "passing", 10.0, now=5.0)  # recovered: forgotten
    reaper.observe("c1", "web", "critical", 10.0, now=8.0)  # the count starts again
    reaper.observe("c2", "web", "critical", 10.0, now=8.0)
    assert reaper.due(17.9) == []
    assert reaper.due(18.0) == ["web"]
    assert reaper.forget("c1") is False  # already dropped by due()


def make_catalog(min_after_s: float = DEREGISTER_AFTER_MIN_S) -> Catalog:
    state = LocalState("n1")
    nodes = StaticNodes([NodeInfo("n1", "10.0.0.1", "alive")], state.tracker)
    return Catalog(
        state,
        nodes,
        node_name="n1",
        datacenter="dc1",
        runner=FakeRunner,
        deregister_after_min_s=min_after_s,
    )


async def reaping(nursery: trio.Nursery, min_after_s: float = DEREGISTER_AFTER_MIN_S) -> Catalog:
    """A catalog whose reaper runs in `nursery`."""
    catalog = make_catalog(min_after_s)
    await nursery.start(catalog.run_reaper)
    return catalog


def ids(catalog: Catalog) -> list[str]:
    return [s.service_id for s in catalog.local_services()]


async def test_a_service_critical_too_long_is_deregistered_on_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    catalog = await reaping(nursery)
    start = trio.current_time()
    check = {"TTL": "30s", "DeregisterCriticalServiceAfter": "90s"}
    catalog.register(
        parse_service({"Name": "web", "Check": check, "Connect": {"SidecarService": {}}})
    )
    catalog.register(parse_service({"Name": "db", "Check": {"TTL": "30s"}}))  # no limit
    assert ids(catalog) == ["db", "web", "web-sidecar-proxy"]
    await trio.sleep_until(start + 89.9)
    assert "web" in ids(catalog)
    await trio.sleep_until(start + 90.1)
    assert ids(catalog) == ["db"]  # with its sidecar and checks
    assert [c.record.check_id for c in catalog.local_checks()] == ["service:db"]


async def test_under_the_floor_waits_a_minute_and_recovery_restarts_the_count(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    catalog = await reaping(nursery)
    start = trio.current_time()
    catalog.register(
        parse_service(
            {"Name": "web", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "5s"}}
        )
    )
    await trio.sleep_until(start + 50)
    catalog.update_ttl("service:web", "passing")  # back in time: the count is over
    await trio.sleep_until(start + 100)
    assert ids(catalog) == ["web"]
    catalog.update_ttl("service:web", "critical")  # at 100 s: due at 160 s (the floor)
    await trio.sleep_until(start + 159.9)
    assert ids(catalog) == ["web"]
    await trio.sleep_until(start + 160.1)
    assert ids(catalog) == []


async def test_a_check_added_later_reaps_its_service(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    catalog = await reaping(nursery, min_after_s=1.0)
    catalog.register(parse_service({"Name": "web"}))
    check, service_id = parse_check_registration(
        {"Name": "alive", "TTL": "10s", "ServiceID": "web", "DeregisterCriticalServiceAfter": "3s"}
    )
    start = trio.current_time()
    catalog.register_check(check, service_id)
    await trio.sleep_until(start + 2.9)
    assert ids(catalog) == ["web"]
    await trio.sleep_until(start + 3.1)
    assert ids(catalog) == [] and catalog.local_checks() == []


async def test_a_restart_counts_again_from_its_start(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = LocalState("n1")
    nodes = StaticNodes([NodeInfo("n1", "10.0.0.1", "alive")], state.tracker)
    first = Catalog(state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner)
    first.register(
        parse_service(
            {"Name": "web", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "2m"}}
        )
    )
    await trio.sleep(100)  # no reaper ran: the agent was down
    again = Catalog(state, nodes, node_name="n1", datacenter="dc1", runner=FakeRunner)
    start = trio.current_time()
    await nursery.start(again.run_reaper)
    await trio.sleep_until(start + 119.9)
    assert ids(again) == ["web"]
    await trio.sleep_until(start + 120.1)
    assert ids(again) == []
