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

DNS rebinding defeats the origin check: the attacker's name is made to
resolve to 127.0.0.1, so its page and the agent share an origin. The browser
still sends the attacker's name in ``Host``, so a browser request (one with
``Sec-Fetch-*`` or ``Origin``) must name the agent by an IP address,
``localhost``, or one of the agent's own names (its node name and the
host's name); any other name is refused with 403.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
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


def _host_name(host: str) -> str:
    """The name or address in a Host header, without its port or brackets, lower case."""
    name = urlsplit(f"//{host}").hostname
    return (name or "").lower().rstrip(".")


def _own_host(name: str, names: frozenset[str]) -> bool:
    if name in names or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _from_browser(request: Request) -> bool:
    headers = request.headers
    return any(h in headers for h in ("origin", "sec-fetch-site", "sec-fetch-mode"))


def cross_site_guard(own_names: Iterable[str] = ()) -> Guard:
    """A guard refusing (403) browser requests for another origin or through a foreign name."""
    names = frozenset(n.lower().rstrip(".") for n in own_names if n)

    def guard(request: Request) -> None:
        if _from_browser(request):
            name = _host_name(request.headers.get("host", ""))
            if not _own_host(name, names):
                raise HttpError(
                    403,
                    f"Permission denied: a browser reached this agent through the name {name!r}, "
                    "which is not one of its own (DNS rebinding?); open it by its address",
                )
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
