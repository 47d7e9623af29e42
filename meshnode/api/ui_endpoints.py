"""The web UI at ``/ui/``: static files from the package, and two small read endpoints for it.

- ``GET /ui`` redirects to ``/ui/``; ``GET /ui/`` is ``index.html``; ``GET
  /ui/<file>`` is one of the files in ``meshnode/ui/static`` (read once, when
  the routes are added: no build step, nothing fetched at run time, no path
  from a request ever reaches the file system). Anything else is 404.
- Every UI answer carries a strict ``Content-Security-Policy`` (scripts and
  styles only from the agent, no inline script, no eval, no framing), so a
  name that slipped through as markup still could not run.
- ``GET /v1/internal/ui/settings``: ``{NodeName, Datacenter, TokenRequired,
  TokenAccepted}``, so the UI can say why its write controls are disabled
  before a write fails. ``TokenAccepted`` compares the token the request
  carries, as a write would (a write already answers the same question).
- ``GET /v1/internal/ui/leaves``: this agent's leaf certificates without
  their keys, ``[{Service, SerialNumber, ServiceURI, ValidAfter,
  ValidBefore}]``. Reading it never issues a leaf, unlike the leaf endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import resources

from ..ca.leaf_manager import Leaf
from ..ca.records import rfc3339
from ..http import HttpError, Request, Response, Router
from .auth import request_token, token_accepted

__all__ = ["UI_CSP", "load_static", "register_ui_routes", "ui_url"]

UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_UI_HEADERS = (
    ("Content-Security-Policy", UI_CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # The files change only with the agent: revalidate rather than serve an old app.js.
    ("Cache-Control", "no-cache"),
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every UI file shipped in the package, by name: its bytes and content type."""
    folder = resources.files("meshnode").joinpath("ui", "static")
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


def ui_url(host: str, port: int) -> str:
    """The UI's address for the startup log: what `make run` shows a user to open."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui/"


def _leaf_json(leaf: Leaf) -> dict[str, str]:
    return {
        "Service": leaf.service,
        "SerialNumber": leaf.serial,
        "ServiceURI": leaf.spiffe_id,
        "ValidAfter": rfc3339(leaf.valid_after_s),
        "ValidBefore": rfc3339(leaf.valid_before_s),
    }


def register_ui_routes(
    router: Router,
    *,
    node_name: str,
    datacenter: str,
    current_token: Callable[[], str | None],
    local_leaf_names: Callable[[], Iterable[str]],
    cached_leaf: Callable[[str], Leaf | None],
) -> None:
    """Add ``/ui/`` and the UI's read endpoints."""
    files = load_static()

    async def static(request: Request) -> Response:
        if request.path == "/ui":  # relative URLs in index.html need the slash
            return Response.empty(301, headers=[("Location", "/ui/"), *_UI_HEADERS])
        name = request.params.get("file") or "index.html"
        found = files.get(name)
        if found is None:
            raise HttpError(404, f"no such UI file: {name[:80]!r}")
        body, content_type = found
        return Response(body=body, headers=_UI_HEADERS, content_type=content_type)

    async def settings(request: Request) -> Response:
        expected = current_token()
        given = request_token(request)
        accepted = expected is None or (given is not None and token_accepted(given, expected))
        return Response.json(
            {
                "NodeName": node_name,
                "Datacenter": datacenter,
                "TokenRequired": expected is not None,
                "TokenAccepted": accepted,
            }
        )

    async def leaves(request: Request) -> Response:
        found = (cached_leaf(name) for name in sorted(local_leaf_names()))
        return Response.json([_leaf_json(leaf) for leaf in found if leaf is not None])

    router.add("GET", "/ui/{file*}", static)
    router.add("GET", "/v1/internal/ui/settings", settings)
    router.add("GET", "/v1/internal/ui/leaves", leaves)
