"""/v1/agent/service(s) and /v1/agent/check(s): this agent's own registrations.

- ``PUT /v1/agent/service/register`` takes Consul's JSON (PascalCase, or the
  lower case py-consul sends, or snake_case) and answers 200 with an empty
  body. A bad body is 400 with a one-line message naming the field, and
  nothing is registered. Checks are always replaced by the definition's
  (``?replace-existing-checks`` is accepted: it is what meshnode always does).
- ``PUT /v1/agent/service/deregister/<id>``: 200, or 404 for an unknown ID.
- ``PUT /v1/agent/check/pass|warn|fail/<id>?note=`` and
  ``PUT /v1/agent/check/update/<id>`` (``{"Status", "Output"}``) set a TTL
  check: 404 for an unknown check, 400 for a check that is not a TTL check.
- ``GET /v1/agent/services`` and ``/v1/agent/checks`` take ``?filter=``
  (filter_expr.py), applied to each value of the map they answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from ..catalog.catalog import Catalog
from ..catalog.definitions import parse_service
from ..http import HttpError, Request, Response, Router
from ..store.group_commit import GroupCommit
from .bodies import bounded_json_body, object_body
from .catalog_json import agent_service_json, check_json
from .cooperative import build_map, json_response
from .errors import catalog_errors
from .filter_shapes import AGENT_SERVICE, CHECK, request_filter

__all__ = ["REGISTER_BODY_MAX_BYTES", "register_agent_service_routes"]

# A definition with 64 meta pairs, 32 checks and 128 upstreams is ~60 KiB;
# anything bigger is not a service definition.
REGISTER_BODY_MAX_BYTES = 256 * 1024
_TTL_STATUS = {"pass": "passing", "warn": "warning", "fail": "critical"}


def register_agent_service_routes(router: Router, catalog: Catalog, *, datacenter: str) -> None:
    """Add the local service and check endpoints, backed by `catalog`.

    Concurrent (de)registrations share SQLite commits (store/group_commit.py);
    each is answered once the commit holding its writes is done.
    """
    groups = GroupCommit(catalog.state)

    async def services(request: Request) -> Response:
        chosen = request_filter(request, AGENT_SERVICE)
        records = catalog.local_services()  # immutable records: a snapshot to build in chunks
        found = await build_map(
            records, lambda r: r.service_id, lambda r: agent_service_json(r, datacenter), chosen
        )
        return await json_response(found)

    async def service(request: Request) -> Response:
        service_id = request.params["id"]
        for record in catalog.local_services():
            if record.service_id == service_id:
                return Response.json(agent_service_json(record, datacenter))
        raise HttpError(404, f"unknown service ID {service_id!r}")

    async def checks(request: Request) -> Response:
        chosen = request_filter(request, CHECK)
        views = catalog.local_checks()
        found = await build_map(views, lambda c: c.record.check_id, check_json, chosen)
        return await json_response(found)

    async def register(request: Request) -> Response:
        body = bounded_json_body(request, REGISTER_BODY_MAX_BYTES)
        with catalog_errors():
            definition = parse_service(body)
            await groups.run(partial(catalog.register, definition, source="api"))
        return Response.empty()

    async def deregister(request: Request) -> Response:
        with catalog_errors():
            await groups.run(partial(catalog.deregister, request.params["id"]))
        return Response.empty()

    def ttl(status: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            note = request.query_value("note") or ""
            with catalog_errors():
                catalog.update_ttl(request.params["id"], status, note)
            return Response.empty()

        return handler

    async def update(request: Request) -> Response:
        body = object_body(request, allowed={"Status", "Output"}, required={"Status"})
        status, output = body["Status"], body.get("Output", "")
        if not isinstance(status, str) or not isinstance(output, str):
            raise HttpError(400, "fields 'Status' and 'Output' must be strings")
        with catalog_errors():
            catalog.update_ttl(request.params["id"], status, output)
        return Response.empty()

    router.add("GET", "/v1/agent/services", services)
    router.add("GET", "/v1/agent/service/{id}", service)
    router.add("GET", "/v1/agent/checks", checks)
    router.add("PUT", "/v1/agent/service/register", register)
    router.add("PUT", "/v1/agent/service/deregister/{id}", deregister)
    for verb, status in _TTL_STATUS.items():
        router.add("PUT", f"/v1/agent/check/{verb}/{{id}}", ttl(status))
    router.add("PUT", "/v1/agent/check/update/{id}", update)
