"""/v1/agent/check/register|deregister and maintenance mode: this agent's own checks.

- ``PUT /v1/agent/check/register`` takes Consul's ``AgentCheckRegistration``
  (``Name``, ``ID`` defaulting to the name, ``ServiceID``, ``Notes``, one of
  ``TCP``/``HTTP``/``TTL`` with its settings, ``DeregisterCriticalServiceAfter``):
  a check of that local service, or of the node without ``ServiceID``. 200 and
  an empty body; 400 with one line naming the field otherwise.
- ``PUT /v1/agent/check/deregister/<id>``: 200, or 404 for an unknown check.
- ``PUT /v1/agent/maintenance?enable=true|false&reason=``: node maintenance.
- ``PUT /v1/agent/service/maintenance/<id>?enable=&reason=``: one service's;
  404 for an unknown service. A missing or non-boolean ``enable`` is 400.
"""

from __future__ import annotations

from ..catalog.catalog import Catalog
from ..catalog.definitions import parse_check_registration
from ..catalog.maintenance import parse_enable
from ..http import Request, Response, Router
from .bodies import bounded_json_body
from .errors import catalog_errors

__all__ = ["CHECK_BODY_MAX_BYTES", "register_check_routes"]

# One check with 32 headers of long values is a few KiB; anything bigger is not a check.
CHECK_BODY_MAX_BYTES = 64 * 1024


def _maintenance_args(request: Request) -> tuple[bool, str]:
    with catalog_errors():
        enable = parse_enable(request.query_value("enable"))
    return enable, request.query_value("reason") or ""


def register_check_routes(router: Router, catalog: Catalog) -> None:
    """Add the local check and maintenance endpoints, backed by `catalog`."""

    async def register(request: Request) -> Response:
        body = bounded_json_body(request, CHECK_BODY_MAX_BYTES)
        with catalog_errors():
            check, service_id = parse_check_registration(body)
            catalog.register_check(check, service_id)
        return Response.empty()

    async def deregister(request: Request) -> Response:
        with catalog_errors():
            catalog.deregister_check(request.params["id"])
        return Response.empty()

    async def node_maintenance(request: Request) -> Response:
        enable, reason = _maintenance_args(request)
        with catalog_errors():
            catalog.set_node_maintenance(enable, reason)
        return Response.empty()

    async def service_maintenance(request: Request) -> Response:
        enable, reason = _maintenance_args(request)
        with catalog_errors():
            catalog.set_service_maintenance(request.params["id"], enable, reason)
        return Response.empty()

    router.add("PUT", "/v1/agent/check/register", register)
    router.add("PUT", "/v1/agent/check/deregister/{id}", deregister)
    router.add("PUT", "/v1/agent/maintenance", node_maintenance)
    router.add("PUT", "/v1/agent/service/maintenance/{id}", service_maintenance)
