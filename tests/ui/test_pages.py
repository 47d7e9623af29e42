"""Each page of the web UI against a live three-agent cluster, in chromium, with screenshots."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import Mesh

pytestmark = pytest.mark.slow


def test_every_page_renders_the_cluster(mesh: Mesh, page: Page, shots: Path) -> None:
    page.goto(mesh.ui(0, "nodes"))
    for name in ("n1", "n2", "n3"):
        expect(page.locator(f"tr[data-node='{name}']")).to_contain_text("alive")
    page.screenshot(path=shots / "nodes.png", full_page=True)

    page.goto(mesh.ui(0, "services"))
    expect(page.locator("tr[data-service='db']")).to_contain_text("1/1 passing")
    page.screenshot(path=shots / "services.png", full_page=True)

    page.goto(mesh.ui(0, "service/db-sidecar-proxy"))
    expect(page.get_by_test_id("service")).to_contain_text("Connect Sidecar Listening")
    page.screenshot(path=shots / "service.png", full_page=True)

    page.goto(mesh.ui(0, "intentions"))
    page.screenshot(path=shots / "intentions.png", full_page=True)

    page.goto(mesh.ui(1, "topology"))
    expect(page.locator("[data-edge='web=>db']")).to_have_count(1)
    page.screenshot(path=shots / "topology.png", full_page=True)

    page.goto(mesh.ui(1, "ca"))
    expect(page.get_by_test_id("roots")).to_contain_text("active")
    page.screenshot(path=shots / "ca.png", full_page=True)

    page.goto(mesh.ui(0, "kv"))
    page.screenshot(path=shots / "kv.png", full_page=True)
