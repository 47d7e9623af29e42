"""Group commit: concurrent registrations share SQLite commits, each acknowledged after its own."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import trio

from meshnode.api.agent_service_endpoints import register_agent_service_routes
from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import parse_service
from meshnode.catalog.records import KIND_SERVICE
from meshnode.gossip.store import Entry
from meshnode.http import Router, serve_http
from meshnode.http.testing import TestClient
from meshnode.store.group_commit import GroupCommit
from meshnode.store.persist import Persistence
from meshnode.store.state import LocalState, NodeInfo, StaticNodes


class SqliteState(LocalState):
    """A `LocalState` that commits to real SQLite before noting, counting its commits."""

    def __init__(self, persist: Persistence) -> None:
        super().__init__("n1")
        self.persist = persist
        self.commits: list[int] = []  # entries per commit
        self.answered = 0  # callers answered so far (the test counts them)
        self.answered_at_commit: list[int] = []  # `answered` as each commit ran

    def _make_durable(self, entries: list[Entry]) -> None:
        self.persist.save_store(entries, [], self.store.clock)
        self.commits.append(len(entries))
        self.answered_at_commit.append(self.answered)


def _catalog(state: LocalState) -> Catalog:
    nodes = StaticNodes([NodeInfo("n1", "10.0.0.1", "alive")], state.tracker)
    return Catalog(state, nodes, node_name="n1", datacenter="dc1")


async def test_concurrent_http_registrations_share_commits_and_survive_reopen(
    tmp_path: Path,
) -> None:
    clients, each = 8, 6
    with Persistence.open(tmp_path) as persist:
        state = SqliteState(persist)
        catalog = _catalog(state)
        router = Router()
        register_agent_service_routes(router, catalog, datacenter="dc1")
        statuses: list[int] = []
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))

            async def client(c: int) -> None:
                async with TestClient(port) as http:  # one keep-alive connection each
                    for i in range(each):
                        body = {
                            "Name": "web",
                            "ID": f"web-{c}-{i}",
                            "Port": 80,
                            "Check": {"TTL": "9s"},
                        }
                        if c == 0 and i == 2:
                            body["Port"] = "eighty"  # refused alone; the others go on
                        reply = await http.request(
                            "PUT", "/v1/agent/service/register", json.dumps(body)
                        )
                        statuses.append(reply.status)

            with trio.fail_after(20):
                async with trio.open_nursery() as clients_nursery:
                    for c in range(clients):
                        clients_nursery.start_soon(client, c)
            nursery.cancel_scope.cancel()
    assert sorted(statuses) == [200] * (clients * each - 1) + [400]
    registered = clients * each - 1
    # Grouped: fewer commits than registrations (each registration is 2 entries).
    assert sum(state.commits) == 2 * registered
    assert len(state.commits) < registered
    with Persistence.open(tmp_path) as reopened:
        stored, _ = reopened.load_store()
    keys = {e.key for e in stored if e.kind == KIND_SERVICE and not e.tombstone}
    assert len(keys) == registered
    assert "n1/web-0-2" not in keys


async def test_no_caller_is_answered_before_the_commit_holding_its_write(
    tmp_path: Path,
) -> None:
    with Persistence.open(tmp_path) as persist:
        state = SqliteState(persist)
        catalog = _catalog(state)
        groups = GroupCommit(state, max_jobs=3)
        results: list[str] = []

        async def register(i: int) -> None:
            defn = {"Name": "db", "ID": f"db{i}", "Port": 5432}
            ids = await groups.run(partial(catalog.register, parse_service(defn)))
            state.answered += 1
            results.extend(ids)

        async with trio.open_nursery() as nursery:
            for i in range(7):
                nursery.start_soon(register, i)
    assert sorted(results) == [f"db{i}" for i in range(7)]
    # At most 3 per group, so 3 commits (3 + 3 + 1 jobs), and every caller
    # answered only after the commit of its group: when the k-th commit
    # ran, only the callers of earlier groups had their answers.
    assert state.commits == [3, 3, 1]
    assert state.answered_at_commit == [0, 3, 6]


class BrokenDisk(LocalState):
    """A state whose commit fails, as a full disk makes SQLite fail."""

    def _make_durable(self, entries: list[Entry]) -> None:
        raise OSError("disk full")


async def _three_jobs(state: LocalState) -> dict[str, str]:
    """Two registrations and a deregistration of an unknown ID, concurrently."""
    catalog = _catalog(state)
    groups = GroupCommit(state)
    outcomes: dict[str, str] = {}

    async def register(service_id: str) -> None:
        defn = parse_service({"Name": "x", "ID": service_id, "Port": 1})
        try:
            await groups.run(partial(catalog.register, defn))
            outcomes[service_id] = "ok"
        except OSError as exc:
            outcomes[service_id] = str(exc)

    async def unknown() -> None:
        try:
            await groups.run(partial(catalog.deregister, "nope"))
        except Exception as exc:  # UnknownService: this caller's own error
            outcomes["nope"] = type(exc).__name__

    async with trio.open_nursery() as nursery:
        nursery.start_soon(register, "a")
        nursery.start_soon(unknown)
        nursery.start_soon(register, "b")
    return outcomes


async def test_a_refused_job_fails_alone() -> None:
    state = LocalState("n1")
    assert await _three_jobs(state) == {"a": "ok", "b": "ok", "nope": "UnknownService"}


async def test_a_failed_commit_fails_every_job_of_the_group() -> None:
    outcomes = await _three_jobs(BrokenDisk("n1"))
    assert outcomes == {"a": "disk full", "b": "disk full", "nope": "UnknownService"}
