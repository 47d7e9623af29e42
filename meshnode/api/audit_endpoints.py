"""``GET /v1/agent/connect/audit``: this agent's recent intention decisions.

meshnode's own endpoint (Consul keeps no record of its decisions). It answers
a JSON list, newest first, of ``{Time, Event, Where, Source, Destination,
Allowed, Reason, Peer}`` (see `meshnode.intentions.audit`). ``?limit=N`` (1-1000,
default 100) bounds the answer; ``?denied`` keeps only the refusals.
"""

from __future__ import annotations

from ..http import HttpError, Request, Response, Router, parse_uint
from ..intentions.audit import AUDIT_CAPACITY, AuditLog

__all__ = ["register_audit_routes"]

_DEFAULT_LIMIT = 100


def _limit(request: Request) -> int:
    values = request.query.get("limit", [])
    if not values:
        return _DEFAULT_LIMIT
    text = values[-1]
    limit = parse_uint(text, "?limit=", max_value=AUDIT_CAPACITY)
    if limit < 1:
        raise HttpError(400, f"?limit= must be an integer in 1..{AUDIT_CAPACITY}, not {text!r}")
    return limit


def register_audit_routes(router: Router, audit: AuditLog) -> None:
    async def recent(request: Request) -> Response:
        denied = "denied" in request.query and request.query["denied"][-1] not in ("false", "0")
        entries = audit.entries(limit=_limit(request), denied_only=denied)
        return Response.json([e.as_json() for e in entries])

    router.add("GET", "/v1/agent/connect/audit", recent)
