"""Writes from the browser, seen by the CLI on another agent, and the reverse, live.

The page is opened on n1; the CLI runs against n3. A deny saved in the UI is
in force on n3 (`meshnode intention check` exits 1); a deny written by the
CLI on n3 appears in the open page with no reload, through the blocking query
the page holds on n1.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from meshnode.testutil import wait_for
from tests.ui.conftest import API_TOKEN, Mesh

pytestmark = pytest.mark.slow


def _use_token(page: Page, token: str) -> None:
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("token").press("Enter")


def test_without_the_token_write_controls_say_why(mesh: Mesh, page: Page) -> None:
    page.goto(mesh.ui(0, "intentions"))
    expect(page.get_by_test_id("create-submit")).to_be_disabled()
    expect(page.get_by_test_id("write-reason")).to_have_text(
        "This agent requires an API token for writes: enter it above."
    )
    _use_token(page, "not-the-token")
    expect(page.get_by_test_id("token-state")).to_have_text("not accepted")
    expect(page.get_by_test_id("write-reason")).to_contain_text("not accepted")
    _use_token(page, API_TOKEN)
    expect(page.get_by_test_id("token-state")).to_have_text("accepted")
    expect(page.get_by_test_id("create-submit")).to_be_enabled()
    # Kept for the tab's session: a reload still has it, and writes stay enabled.
    page.reload()
    expect(page.get_by_test_id("create-submit")).to_be_enabled()


def test_a_deny_made_in_the_ui_takes_effect_on_another_agent(
    mesh: Mesh, page: Page, shots: Path
) -> None:
    page.goto(mesh.ui(0, "intentions"))
    _use_token(page, API_TOKEN)
    page.get_by_test_id("create-source").fill("web")
    page.get_by_test_id("create-destination").fill("db")
    page.get_by_test_id("create-action").select_option("deny")
    page.get_by_test_id("create-submit").click()
    row = page.locator("tr[data-intention='web=>db']")
    expect(row).to_contain_text("deny")

    def cli_denies() -> bool:
        return mesh.agents[2].cli("intention", "check", "web", "db", check=False).returncode == 1

    wait_for(cli_denies, 10.0, "n3's CLI to see the UI's deny")
    assert "Denied" in mesh.agents[2].cli("intention", "check", "web", "db", check=False).stdout

    # "May web talk to db?" answers from the agent and names the deciding rule.
    page.get_by_test_id("check-source").fill("web")
    page.get_by_test_id("check-destination").fill("db")
    page.get_by_test_id("check-form").locator("button").click()
    expect(page.get_by_test_id("check-result")).to_contain_text(
        "Denied web ⇒ db: decided by web ⇒ db (deny), precedence 9"
    )
    page.screenshot(path=shots / "intentions-check.png", full_page=True)

    row.get_by_test_id("delete").click()  # arms it: one stray click deletes nothing
    expect(row.get_by_test_id("delete")).to_have_text("Confirm delete")
    assert cli_denies()
    row.get_by_test_id("delete").click()
    expect(row).to_have_count(0)
    wait_for(lambda: not cli_denies(), 10.0, "n3's CLI to see the delete")


def test_a_cli_deny_appears_in_the_open_page_without_a_reload(mesh: Mesh, page: Page) -> None:
    page.goto(mesh.ui(0, "intentions"))
    expect(page.get_by_test_id("intentions")).to_be_visible()
    # A marker on the window: a reload would lose it.
    page.evaluate("window.__sameDocument = true")
    mesh.agents[2].cli("intention", "deny", "api", "web")
    written_at = time.monotonic()
    expect(page.locator("tr[data-intention='api=>web']")).to_contain_text("deny")
    print(f"a CLI deny on n3 was in the page on n1 {time.monotonic() - written_at:.2f} s later")
    assert page.evaluate("window.__sameDocument") is True
    mesh.agents[2].cli("intention", "delete", "api", "web")
    expect(page.locator("tr[data-intention='api=>web']")).to_have_count(0)


def test_kv_edit_in_the_ui_is_read_by_another_agent(mesh: Mesh, page: Page) -> None:
    page.goto(mesh.ui(0, "kv/app/"))
    _use_token(page, API_TOKEN)
    page.get_by_test_id("kv-key").fill("app/config")
    page.get_by_test_id("kv-value").fill("replicas = 3\n")
    page.get_by_test_id("kv-save").click()
    expect(page.locator("[data-key='app/config']")).to_be_visible()

    def raw(i: int) -> bytes | None:
        try:
            url = f"http://{mesh.agents[i].http}/v1/kv/app/config?raw"
            with urllib.request.urlopen(url, timeout=2) as r:
                body: bytes = r.read()
                return body
        except OSError:
            return None

    wait_for(lambda: raw(2) == b"replicas = 3\n", 10.0, "the UI's KV write on n3")
    mesh.agents[2].cli("kv", "put", "app/config", "replicas = 5")
    wait_for(lambda: raw(0) == b"replicas = 5", 10.0, "n3's KV write on n1")
    page.locator("[data-key='app/config']").click()
    expect(page.get_by_test_id("kv-value")).to_have_value("replicas = 5")

    page.get_by_test_id("kv-delete").click()
    page.get_by_test_id("kv-delete").click()
    expect(page.locator("[data-key='app/config']")).to_have_count(0)
    wait_for(lambda: raw(2) is None, 10.0, "the UI's KV delete on n3")


def test_a_form_on_another_site_cannot_make_the_agent_act(mesh: Mesh, browser: Browser) -> None:
    """CSRF: a text/plain form POST needs no CORS preflight; the agent refuses it by its origin.

    Its own context: the 403 this test expects is logged as a console error.
    """
    context = browser.new_context()
    page = context.new_page()
    agent = mesh.agents[0].http
    field = '{"SourceName":"evil","DestinationName":"db","Action":"allow","Description":"'
    evil = (
        f'<form method="POST" action="http://{agent}/v1/connect/intentions" enctype="text/plain">'
        f"<input name='{field}' value='\"}}'><button>go</button></form>"
    )
    page.route(
        "http://evil.test/",
        lambda route: route.fulfill(body=evil, content_type="text/html"),
    )
    page.goto("http://evil.test/")
    with page.expect_navigation():
        page.locator("button").click()
    expect(page.locator("body")).to_contain_text("a page of another origin (http://evil.test)")
    context.close()
    assert mesh.agents[0].cli("intention", "get", "evil", "db", check=False).returncode != 0


def test_a_node_leaving_shows_on_the_nodes_page_live(mesh: Mesh, page: Page) -> None:
    """Last in the module: n3 leaves the shared cluster for good."""
    page.goto(mesh.ui(0, "nodes"))
    expect(page.locator("tr[data-node='n3']")).to_contain_text("alive")
    mesh.agents[2].cli("leave")
    expect(page.locator("tr[data-node='n3']")).to_contain_text("left")
    # Through "leaving" when a refresh falls between the two states.
    expect(page.get_by_test_id("history")).to_contain_text(
        re.compile(r"n3: (alive|leaving) → left")
    )
