"""Each page of the web UI against a live three-agent cluster, in chromium, with screenshots.

Screenshots go to $MESHNODE_UI_SHOTS (else build/ui-shots in the checkout); with
MESHNODE_UI_DOCS=1 the topology one also refreshes docs/ui-topology.png.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from meshnode.testutil import wait_for
from tests.integration.test_proxy_agents import round_trip
from tests.ui.conftest import API_TOKEN, Mesh, copy_to_docs

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=alert(1)>"


def _api(mesh: Mesh, i: int, method: str, path: str, body: object = None) -> None:
    data: bytes | None = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{mesh.agents[i].http}{path}",
        data=data,
        method=method,
        headers={"X-Consul-Token": API_TOKEN},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def test_the_ui_is_served_with_a_strict_content_security_policy(mesh: Mesh) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
        with urllib.request.urlopen(f"http://{mesh.agents[0].http}{path}", timeout=5) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self';" in csp
            assert "unsafe" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{mesh.agents[0].http}/ui/../../etc/passwd", timeout=5)
    assert missing.value.code == 404
    missing.value.close()


def test_markup_in_names_tags_meta_and_values_renders_as_text(mesh: Mesh, page: Page) -> None:
    check = {"Name": "note", "TTL": "1h", "Status": "warning"}
    definition = {"Name": "xss", "Port": 1, "Tags": [XSS], "Meta": {"m": XSS}, "Check": check}
    _api(mesh, 0, "PUT", "/v1/agent/service/register", definition)
    _api(mesh, 0, "PUT", f"/v1/agent/check/warn/service:xss?note={urllib.parse.quote(XSS)}")
    _api(
        mesh,
        0,
        "PUT",
        "/v1/connect/intentions/exact?source=xss&destination=db",
        {"Action": "allow", "Description": XSS},
    )
    _api(mesh, 0, "PUT", f"/v1/kv/xss/{urllib.parse.quote(XSS)}", XSS)
    try:
        for where, testid in (
            ("services", "services"),
            ("service/xss", "service"),
            ("intentions", "intentions"),
            ("kv/xss/", "kv-list"),
        ):
            page.goto(mesh.ui(0, where))
            expect(page.get_by_test_id(testid)).to_contain_text(XSS)
            assert page.locator("main img").count() == 0, where
        page.get_by_text(XSS).click()
        expect(page.get_by_test_id("kv-value")).to_have_value(XSS)
        assert page.locator("img").count() == 0
    finally:
        _api(mesh, 0, "PUT", "/v1/agent/service/deregister/xss")
        _api(mesh, 0, "DELETE", "/v1/connect/intentions/exact?source=xss&destination=db")
        _api(mesh, 0, "DELETE", "/v1/kv/xss/?recurse")


def test_every_page_renders_the_cluster(mesh: Mesh, page: Page, shots: Path) -> None:
    page.goto(mesh.ui(0, "nodes"))
    for name in ("n1", "n2", "n3"):
        expect(page.locator(f"tr[data-node='{name}']")).to_contain_text("alive")
        expect(page.locator(f"tr[data-node='{name}']")).to_contain_text("elected")
    page.screenshot(path=shots / "nodes.png", full_page=True)

    page.goto(mesh.ui(0, "services"))
    expect(page.locator("tr[data-service='db']")).to_contain_text("1/1 passing")
    expect(page.locator("tr[data-service='web-sidecar-proxy']")).to_contain_text("db")
    page.screenshot(path=shots / "services.png", full_page=True)

    page.goto(mesh.ui(0, "service/db-sidecar-proxy"))
    expect(page.get_by_test_id("service")).to_contain_text("Connect Sidecar Listening")
    page.screenshot(path=shots / "service.png", full_page=True)

    page.goto(mesh.ui(1, "ca"))
    expect(page.get_by_test_id("roots")).to_contain_text("active")
    expect(page.locator("tr[data-leaf='db']")).to_contain_text("(in 2d ")  # a fresh 72 h leaf
    page.screenshot(path=shots / "ca.png", full_page=True)


def test_topology_draws_live_connections_and_recent_denials(
    mesh: Mesh, page: Page, shots: Path
) -> None:
    mesh.agents[2].cli("intention", "deny", "api", "db")
    wait_for(lambda: round_trip(mesh.web_upstream) == b"ping", 30.0, "web -> db through the mesh")
    live = socket.create_connection(("127.0.0.1", mesh.web_upstream), timeout=5)
    mesh.held.append(live)
    live.sendall(b"hello")
    assert live.recv(5) == b"hello"

    def api_refused_and_audited() -> bool:
        # Until api's sidecar holds its leaf, a refusal may be its own and not
        # reach db's sidecar: retry until n2's audit log has the refusal.
        if round_trip(mesh.api_upstream) != b"":
            return False
        denied = mesh.agents[1].api("/v1/agent/connect/audit?denied") or []
        return any(e["Source"] == "api" and e["Destination"] == "db" for e in denied)

    wait_for(api_refused_and_audited, 30.0, "api -> db refused at db's sidecar")

    page.goto(mesh.ui(1, "topology"))  # n2 runs db's sidecar: it sees both
    expect(page.locator("[data-edge='web=>db'] .edge-label.live")).to_have_text("1 live")
    expect(page.locator("[data-edge='api=>db'] .edge-label.denied")).to_contain_text("denied")
    expect(page.locator("[data-edge='api=>db']")).to_have_class("edge deny")
    expect(page.locator("[data-edge='web=>db']")).to_have_class("edge allow")
    shot = shots / "topology.png"
    page.screenshot(path=shot, full_page=True)
    copy_to_docs(shot, "ui-topology.png")

    page.goto(mesh.ui(0, "intentions"))
    expect(page.locator("tr[data-intention='api=>db']")).to_contain_text("deny")
    page.screenshot(path=shots / "intentions.png", full_page=True)

    live.close()
    expect(page.locator("[data-edge='web=>db'] .edge-label.live")).to_have_count(0)


def test_kv_page(mesh: Mesh, page: Page, shots: Path) -> None:
    _api(mesh, 1, "PUT", "/v1/kv/app/web/replicas", "3")
    _api(mesh, 1, "PUT", "/v1/kv/app/db/pool", "20")
    _api(mesh, 1, "PUT", "/v1/kv/readme", "hello")
    page.goto(mesh.ui(0, "kv"))
    expect(page.get_by_test_id("kv-list")).to_contain_text("app/")
    page.get_by_role("link", name="app/").click()
    page.get_by_role("link", name="web/").click()
    page.locator("[data-key='app/web/replicas']").click()
    expect(page.get_by_test_id("kv-value")).to_have_value("3")
    page.screenshot(path=shots / "kv.png", full_page=True)
