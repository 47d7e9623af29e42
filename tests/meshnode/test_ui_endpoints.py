"""/ui/ and the UI's read endpoints through the router: files, headers, token state, leaves.

The browser tests (tests/ui) drive the same routes on real agents."""

from __future__ import annotations

import json

from meshnode.api.auth import token_guard
from meshnode.api.ui_endpoints import UI_CSP, load_static, register_ui_routes, ui_url
from meshnode.ca.leaf_manager import Leaf
from meshnode.http import Request, Response, Router

TOKEN = "t0ken"

_LEAF = Leaf(
    service="db",
    spiffe_id="spiffe://c.mesh/ns/default/dc/dc1/svc/db",
    cert_pem="CERT",
    key_pem="-----BEGIN PRIVATE KEY-----\nsecret\n",
    chain_pems=(),
    roots_pems=(),
    root_id="r",
    serial="0a:0b",
    valid_after_s=0.0,
    valid_before_s=3600.0,
    generation=1,
    create_generation=1,
)


def _router(token: str | None) -> Router:
    router = Router()
    router.add_guard(token_guard(lambda: token))
    register_ui_routes(
        router,
        node_name="n1",
        datacenter="dc1",
        current_token=lambda: token,
        local_leaf_names=lambda: ["web", "db"],
        cached_leaf={"db": _LEAF}.get,
    )
    return router


async def _get(router: Router, target: str, token: str | None = None) -> Response:
    headers = [("X-Consul-Token", token)] if token else []
    return await router.dispatch(Request.from_target("GET", target, headers))


async def test_index_and_files_carry_the_csp_and_their_types() -> None:
    router = _router(None)
    index = await _get(router, "/ui/")
    assert index.status == 200 and index.content_type.startswith("text/html")
    assert b'<script type="module" src="app.js">' in index.body
    assert b"<script>" not in index.body  # no inline script: the CSP would refuse it
    assert ("Content-Security-Policy", UI_CSP) in index.headers
    script = await _get(router, "/ui/app.js")
    assert script.content_type.startswith("text/javascript")
    assert ("X-Content-Type-Options", "nosniff") in script.headers
    redirect = await _get(router, "/ui")
    assert redirect.status == 301 and ("Location", "/ui/") in redirect.headers


async def test_only_shipped_files_are_served() -> None:
    router = _router(None)
    for target in ("/ui/nope.js", "/ui/../pyproject.toml", "/ui/%2e%2e/__init__.py", "/ui/a/b"):
        assert (await _get(router, target)).status == 404, target


async def test_settings_say_whether_a_token_is_needed_and_accepted() -> None:
    open_agent = json.loads((await _get(_router(None), "/v1/internal/ui/settings")).body)
    assert open_agent == {
        "NodeName": "n1",
        "Datacenter": "dc1",
        "TokenRequired": False,
        "TokenAccepted": True,
    }
    guarded = _router(TOKEN)
    none = json.loads((await _get(guarded, "/v1/internal/ui/settings")).body)
    wrong = json.loads((await _get(guarded, "/v1/internal/ui/settings", "nope")).body)
    right = json.loads((await _get(guarded, "/v1/internal/ui/settings", TOKEN)).body)
    assert (none["TokenRequired"], none["TokenAccepted"]) == (True, False)
    assert wrong["TokenAccepted"] is False and right["TokenAccepted"] is True


async def test_leaves_list_the_cached_ones_without_their_keys() -> None:
    reply = await _get(_router(TOKEN), "/v1/internal/ui/leaves")
    assert reply.status == 200  # a read with no secret: no token needed
    assert json.loads(reply.body) == [
        {
            "Service": "db",
            "SerialNumber": "0a:0b",
            "ServiceURI": "spiffe://c.mesh/ns/default/dc/dc1/svc/db",
            "ValidAfter": "1970-01-01T00:00:00Z",
            "ValidBefore": "1970-01-01T01:00:00Z",
        }
    ]
    assert b"PRIVATE" not in reply.body


def test_ui_url_names_an_address_a_browser_can_open() -> None:
    assert ui_url("127.0.0.1", 8500) == "http://127.0.0.1:8500/ui/"
    assert ui_url("0.0.0.0", 8500) == "http://127.0.0.1:8500/ui/"
    assert ui_url("::1", 8501) == "http://[::1]:8501/ui/"


def test_no_ui_module_parses_strings_as_markup_or_code() -> None:
    """The XSS promise (docs/security.md) rests on this: data only ever becomes text."""
    for name, (body, _) in load_static().items():
        text = body.decode()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{name} uses {sink}"
        assert "style=" not in text or name.endswith(".css"), f"{name}: inline style"
