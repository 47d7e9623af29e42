"""Requests a browser sends for another site's page are refused; other clients are not affected.

The headers are the ones chromium sends (tests/ui drives it for the same-origin side).
"""

from __future__ import annotations

import pytest

from meshnode.api.cross_site import cross_site_guard
from meshnode.http import HttpError, Request

HOST = "127.0.0.1:8500"


def _check(method: str, headers: dict[str, str]) -> None:
    request = Request.from_target(
        method, "/v1/connect/intentions", [("Host", HOST), *headers.items()]
    )
    cross_site_guard()(request)


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        # A page on evil.example POSTing text/plain JSON: no preflight, so only this stops it.
        ("POST", {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}),
        # An older browser: no Sec-Fetch-*, but Origin on every POST.
        ("POST", {"Origin": "https://evil.example"}),
        # Another port on the same host is another origin (same-site).
        ("PUT", {"Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"}),
        ("DELETE", {"Origin": "null"}),
        ("PUT", {"Origin": "file://"}),
        # A cross-site read with a side effect-free method is refused too (no CORS either way).
        ("GET", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}),
    ],
)
def test_requests_for_another_origin_are_refused(method: str, headers: dict[str, str]) -> None:
    with pytest.raises(HttpError) as refused:
        _check(method, headers)
    assert refused.value.status == 403
    assert "another origin" in refused.value.message


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("PUT", {}),  # the CLI, py-consul, curl: no browser headers
        ("PUT", {"Origin": f"http://{HOST}", "Sec-Fetch-Site": "same-origin"}),  # the UI
        ("GET", {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}),
        # Following a link to /ui/ from another site's page opens the UI.
        ("GET", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}),
        ("GET", {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}),  # typed in the bar
    ],
)
def test_same_origin_and_non_browser_requests_pass(method: str, headers: dict[str, str]) -> None:
    _check(method, headers)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8500", "[::1]:8500", "localhost:8500", "ui.localhost", "n1:8500", "N1.:8500"],
)
def test_a_browser_may_name_the_agent_by_address_localhost_or_its_own_names(host: str) -> None:
    request = Request.from_target(
        "GET", "/v1/kv/x", [("Host", host), ("Sec-Fetch-Site", "same-origin")]
    )
    cross_site_guard(["n1"])(request)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        {"Origin": "http://rebind.example:8500"},
        {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},
    ],
)
def test_dns_rebinding_a_foreign_name_to_the_agent_is_refused(headers: dict[str, str]) -> None:
    """The attacker's page and the agent share an origin, but the Host is the attacker's name."""
    request = Request.from_target(
        "PUT", "/v1/connect/intentions/exact", [("Host", "rebind.example:8500"), *headers.items()]
    )
    with pytest.raises(HttpError) as refused:
        cross_site_guard(["n1"])(request)
    assert refused.value.status == 403
    assert "'rebind.example'" in refused.value.message


def test_clients_that_are_not_browsers_may_use_any_name() -> None:
    request = Request.from_target("PUT", "/v1/kv/x", [("Host", "agent.internal:8500")])
    cross_site_guard(["n1"])(request)
