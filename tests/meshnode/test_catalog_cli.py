"""`meshnode catalog` and `meshnode services` through CliRunner against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import meshnode.cli.catalog  # noqa: F401  (registers its commands on `cli`)
from meshnode.api.agent_service_endpoints import register_agent_service_routes
from meshnode.api.catalog_endpoints import register_catalog_routes
from meshnode.catalog.catalog import Catalog
from meshnode.cli import cli
from meshnode.http import Router
from meshnode.http.testing import serve_in_thread
from meshnode.store.state import LocalState, NodeInfo, StaticNodes


@pytest.fixture
def catalog() -> Catalog:
    state = LocalState("n1")
    nodes = StaticNodes(
        [NodeInfo("n1", "10.0.0.1", "alive", node_id="0123456789ab")], state.tracker
    )
    return Catalog(state, nodes, node_name="n1", datacenter="dc1")


@pytest.fixture
def addr(catalog: Catalog) -> Iterator[str]:
    router = Router()
    register_catalog_routes(router, catalog, datacenter="dc1")
    register_agent_service_routes(router, catalog, datacenter="dc1")
    with serve_in_thread(router) as port:
        yield f"127.0.0.1:{port}"


def run(addr: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-http-addr", addr])


def one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]


def test_register_list_and_deregister(addr: str, tmp_path: Path) -> None:
    file = tmp_path / "web.json"
    definition = {
        "services": [
            {"name": "web", "id": "web1", "port": 80, "tags": ["v1", "edge"]},
            {"name": "db", "port": 5432, "check": {"tcp": "127.0.0.1:5432", "interval": "10s"}},
        ]
    }
    file.write_text(json.dumps(definition))
    registered = run(addr, "services", "register", str(file))
    assert registered.exit_code == 0, registered.output
    assert registered.stdout.splitlines() == ["Registered service: web", "Registered service: db"]
    assert run(addr, "catalog", "services").stdout.splitlines() == ["db", "web"]
    assert run(addr, "catalog", "services", "-tags").stdout.splitlines() == ["db", "web  edge,v1"]
    assert run(addr, "catalog", "nodes").stdout.splitlines() == [
        "Node  ID        Address   DC",
        "n1    01234567  10.0.0.1  dc1",
    ]
    deregistered = run(addr, "services", "deregister", "web1")
    assert deregistered.stdout == "Deregistered service: web1\n"
    assert run(addr, "catalog", "services").stdout.splitlines() == ["db"]
    one_line_error(run(addr, "services", "deregister", "web1"), "404")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ('{"service": {"port": 80}}', "missing field 'service.name'"),
        ('{"service": {"name": "web", "port": 99999}}', "'service.port' must be in 0..65535"),
        ('{"svc": {}}', "unknown field 'svc'"),
    ],
)
def test_bad_files_are_one_line_and_register_nothing(
    addr: str, catalog: Catalog, tmp_path: Path, content: str, fragment: str
) -> None:
    file = tmp_path / "bad.json"
    file.write_text(content)
    result = run(addr, "services", "register", str(file))
    one_line_error(result, fragment)
    assert str(file) in result.stderr
    assert catalog.local_services() == []


def test_missing_file(addr: str, tmp_path: Path) -> None:
    one_line_error(run(addr, "services", "register", str(tmp_path / "nope.json")), "cannot read")
