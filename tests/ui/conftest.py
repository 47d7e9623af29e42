"""A real three-agent cluster with a small mesh on it, and Debian's chromium driven by Playwright.

The cluster is shared by the tests of a module (starting it and waiting for
the first leaves costs seconds); each test gets a fresh browser context, so
sessionStorage (the UI's token) starts empty. A page that logs a console
error (a Content-Security-Policy violation is one) or opens a dialog fails
its test.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from meshnode.testutil import AgentProc, Cluster, keep_logs, wait_for
from tests.integration.test_proxy_agents import _Echo, app, free_port, register

CHROMIUM = "/usr/bin/chromium"  # Debian's; scripts/install-debs.sh installs it
API_TOKEN = "ui-test-token"
SIGNER_TOKEN = "ui-test-signers"
WAIT_MS = 10_000  # a bound on every wait for the page: live updates take well under 1 s
expect.set_options(timeout=WAIT_MS)


@dataclass
class Mesh:
    """The running cluster: web (n1) and api (n3) both have an upstream to db (n2)."""

    agents: list[AgentProc]
    web_upstream: int
    api_upstream: int
    held: list[socket.socket] = field(default_factory=list)

    def ui(self, i: int, page: str = "") -> str:
        return f"http://{self.agents[i].http}/ui/#/{page}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("ui-cluster")
    cluster = Cluster(base)
    held: list[socket.socket] = []
    with pytest.MonkeyPatch.context() as env, app(_Echo) as db_port:
        env.setenv("MESHNODE_HTTP_TOKEN", API_TOKEN)  # for the CLI the tests run
        try:
            agents = [
                cluster.agent(i).start(
                    "-signer", "-signer-token", SIGNER_TOKEN, "-api-token", API_TOKEN
                )
                for i in (1, 2, 3)
            ]
            for a in agents[1:]:
                a.cli("join", agents[0].gossip)
            wait_for(lambda: all(len(a.statuses()) == 3 for a in agents), 15.0, "3 members")
            web_up, api_up = free_port(), free_port()
            register(agents[1], base, _service("db", db_port, []))
            register(agents[0], base, _service("web", free_port(), [("db", web_up)]))
            register(agents[2], base, _service("api", free_port(), [("db", api_up)]))
            wait_for(
                lambda: len(agents[0].api("/v1/health/connect/db?passing") or []) == 1,
                20.0,
                "db's sidecar passing",
            )
            # The pages show three elected signers and db's leaf: wait for them
            # here rather than against each page's timeout.
            wait_for(
                lambda: len(agents[0].api("/v1/connect/ca/signers") or []) == 3, 20.0, "3 signers"
            )
            wait_for(
                lambda: any(
                    x["Service"] == "db" for x in agents[1].api("/v1/internal/ui/leaves") or []
                ),
                20.0,
                "db's leaf on n2",
            )
            yield Mesh(agents, web_up, api_up, held)
        finally:
            for conn in held:
                conn.close()
            cluster.stop_all()
            if keep_logs():
                for a in cluster.agents:
                    print(f"--- {a.name}\n{a.log_text()[-3000:]}")


def _service(name: str, port: int, upstreams: list[tuple[str, int]]) -> dict[str, object]:
    proxy = {"upstreams": [{"destination_name": d, "local_bind_port": p} for d, p in upstreams]}
    return {
        "name": name,
        "id": name,
        "port": port,
        "tags": ["v1"],
        "connect": {"sidecar_service": {"proxy": proxy}},
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make debs` (scripts/install-debs.sh)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if _problem(m.type, m.text) else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))

    def on_dialog(dialog: Dialog) -> None:  # alert(1) from injected markup would land here
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    yield tab
    context.close()
    assert not problems, f"the page reported: {problems}"


def _problem(kind: str, text: str) -> bool:
    """A console error, but not the network log of a 404 the UI expects (an empty KV folder)."""
    return kind == "error" and not text.endswith("status of 404 (Not Found)")


@pytest.fixture(scope="module")
def shots() -> Path:
    """Where screenshots go: $MESHNODE_UI_SHOTS, else build/ui-shots (git-ignored, kept)."""
    where = os.environ.get("MESHNODE_UI_SHOTS")
    path = Path(where) if where else Path(__file__).resolve().parents[2] / "build" / "ui-shots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def copy_to_docs(shot: Path, name: str) -> None:
    """Refresh a screenshot the README shows, when the run asks for it."""
    if os.environ.get("MESHNODE_UI_DOCS"):
        shutil.copy(shot, Path(__file__).resolve().parents[2] / "docs" / name)
