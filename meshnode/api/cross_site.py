"""Refuse requests a browser sends on behalf of another site (CSRF) before any handler runs.

With the UI, an operator's browser becomes a client of the agent, and any
page it opens can make it send requests to ``127.0.0.1:8500``. A POST with
a ``text/plain`` body needs no CORS preflight, so without this guard a page
on any site could create an intention on an agent that has no API token.
Browsers say where a request comes from: ``Sec-Fetch-Site`` (every current
browser) and ``Origin`` (on every cross-origin request and every POST, PUT
and DELETE). Anything but the agent's own origin is refused with 403, except
a plain navigation (a link to ``/ui/`` from a wiki still opens the UI).
Clients that are not browsers (the CLI, py-consul, curl) send neither header
and are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..http import Guard, HttpError, Request
from .auth import READ_METHODS

__all__ = ["cross_site_guard"]

_FOREIGN_SITES = {"cross-site", "same-site"}  # same-site: another port or subdomain


def _foreign_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return False
    if origin == "null":  # a sandboxed frame, a file:// page, a redirect chain
        return True
    parts = urlsplit(origin)
    return parts.scheme not in ("http", "https") or parts.netloc != request.headers.get("host")


def cross_site_guard() -> Guard:
    """A guard refusing (403) browser requests made by a page of another origin."""

    def guard(request: Request) -> None:
        site = request.headers.get("sec-fetch-site")
        navigation = (
            request.method in READ_METHODS and request.headers.get("sec-fetch-mode") == "navigate"
        )
        if navigation:
            return
        if site in _FOREIGN_SITES or _foreign_origin(request):
            raise HttpError(
                403,
                "Permission denied: a browser sent this request for a page of another "
                f"origin ({request.headers.get('origin') or site})",
            )

    return guard
