"""Fixtures for the namespace cluster tests: one 7-host cluster per module, faults reset
after every test, measured figures printed at the end and written as JSON.

The figures go to `$MESHNODE_CHAOS_REPORT` (default:
/tmp/meshnode-chaos-report.json) and into the terminal summary, so a CI log
keeps them. Agent logs and data dirs live in /tmp/meshnode-chaos-<pid>-*/,
kept when a test failed (the path is printed), removed otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # --import-mode=importlib leaves sys.path alone
    sys.path.insert(0, _ROOT)

from tests.chaos.netns import NetnsCluster, clean_stale, skip_reason, wait_for  # noqa: E402

N_HOSTS = 7
N_SIGNERS = 4  # eligible: one more than the 3 elected, so a killed signer is replaced
FIGURES: dict[str, dict[str, Any]] = {}
_report_path: list[Path] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason is None:
        return
    for item in items:  # every item of the session: only those that need the cluster
        if "mesh" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, dict[str, Any]]]:
    """Per-scenario measurements (seconds unless the name says otherwise)."""
    path = Path(os.environ.get("MESHNODE_CHAOS_REPORT", "/tmp/meshnode-chaos-report.json"))
    _report_path.append(path)
    yield FIGURES
    path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for scenario, values in FIGURES.items():
        shown = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        terminalreporter.write_line(f"{scenario}: {shown}")
    if _report_path:
        terminalreporter.write_line(f"written to {_report_path[0]}")


@pytest.fixture(scope="module")
def mesh(
    request: pytest.FixtureRequest, figures: dict[str, dict[str, Any]]
) -> Iterator[NetnsCluster]:
    """Seven namespaces on one bridge, an agent in each, formed from one seed address."""
    stale = clean_stale()
    if stale:
        print(f"removed stale namespaces: {stale}")
    base = Path(tempfile.mkdtemp(prefix=f"meshnode-chaos-{os.getpid()}-"))
    failed_before = request.session.testsfailed
    cluster = NetnsCluster(base, N_HOSTS, signers=N_SIGNERS)
    formed = False
    try:
        cluster.create_network()
        start = time.monotonic()
        cluster.start_agents()
        formed_s = wait_for(cluster.all_alive, 60.0, "every host sees every host alive", 0.25)
        figures["setup"] = {
            "hosts": N_HOSTS,
            "agents_up_s": round(time.monotonic() - start - formed_s, 2),
            "formed_after_up_s": round(formed_s, 2),
        }
        formed = True
        yield cluster
    finally:
        cluster.destroy()
        failed = not formed or request.session.testsfailed > failed_before
        if os.environ.get("MESHNODE_KEEP_LOGS") or failed:
            print(f"\nchaos: agent logs and data dirs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(mesh: NetnsCluster) -> Iterator[NetnsCluster]:
    """The shared cluster; afterwards faults removed, dead agents restarted, all alive again."""
    yield mesh
    mesh.heal()
    for h in mesh.hosts:
        if not h.running():
            h.start(first_start=False)
    wait_for(mesh.all_alive, 60.0, "the cluster whole again after the test", 0.5)
