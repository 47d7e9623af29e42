"""/v1/catalog/... and /v1/health/...: Consul's read endpoints over the local replica.

- Every answer carries ``X-Consul-Index`` (at least 1); ``?index=N&wait=5s``
  blocks until a service, check or member changes after N (Consul's blocking
  query; default wait 5 min, at most 10).
- ``?tag=`` filters instances (repeat it to need several tags); ``?passing``
  keeps instances whose checks all pass, node's serfHealth included.
- ``?filter=`` (Consul's go-bexpr expressions, filter_expr.py) keeps the
  objects of the answer it matches; catalog/services filters the instances
  before grouping them by name, as Consul does. A bad expression is a 400.
- ``?node-meta``, ``?near`` and the consistency flags are ignored (every agent
  answers from its full replica). ``?dc=`` other than ours is refused with
  400 rather than silently answered for the wrong question.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..catalog.catalog import Catalog
from ..catalog.definitions import DefinitionError
from ..http import HttpError, Request, Response, Router
from .catalog_json import (
    catalog_service_json,
    check_json,
    health_entry_json,
    node_json,
    node_service_json,
)
from .cooperative import CHUNK_OBJECTS, build_list, build_map, json_response
from .filter_expr import Filter, FilterError, Shape
from .filter_shapes import (
    CATALOG_SERVICE,
    CHECK,
    HEALTH_ENTRY,
    NODE,
    NODE_SERVICE,
    request_filter,
)
from .kv_endpoints import parse_index, parse_wait

__all__ = ["blocking_index", "register_catalog_routes"]

_INDEX_HEADER = "X-Consul-Index"
Read = Callable[[Request, Filter | None], Awaitable[Any]]


async def blocking_index(request: Request, catalog: Catalog) -> int:
    """The index to answer with, after waiting when the request is a blocking query."""
    index = parse_index(request.query_value("index"))
    if index is None:
        return catalog.index()
    return await catalog.wait(index, parse_wait(request.query_value("wait")))


def _refuse_unsupported(request: Request, datacenter: str) -> None:
    dc = request.query_value("dc")
    if dc and dc != datacenter:
        raise HttpError(400, f"unknown datacenter {dc[:60]!r}: this cluster is {datacenter!r}")


def _tags(request: Request) -> tuple[str, ...]:
    return tuple(t for t in request.query.get("tag", []) if t)


def _flag(request: Request, name: str) -> bool:
    """Consul's flag style: ``?passing``, ``?passing=1`` and ``=true`` are on."""
    value = request.query_value(name)
    return value is not None and value.lower() in ("", "1", "true")


def register_catalog_routes(router: Router, catalog: Catalog, *, datacenter: str) -> None:
    """Add the catalog and health reads, answered from `catalog`."""

    def route(pattern: str, read: Read, shape: Shape) -> None:
        async def handler(request: Request) -> Response:
            _refuse_unsupported(request, datacenter)
            chosen = request_filter(request, shape)  # before waiting: a typo is 400 now
            index = await blocking_index(request, catalog)
            try:
                data = await read(request, chosen)
            except (DefinitionError, FilterError) as exc:
                raise HttpError(400, str(exc)) from None
            return await json_response(data, headers=[(_INDEX_HEADER, str(index))])

        router.add("GET", pattern, handler)

    def name(request: Request) -> str:
        return request.params["name"]

    # Each read takes its snapshot (lists of immutable views and records, and
    # the members index) synchronously, then builds and filters the JSON in
    # chunks (cooperative.py): changes meanwhile are not mixed in.

    async def services(request: Request, chosen: Filter | None) -> Any:
        if chosen is None:
            return catalog.services()
        members = catalog.members_index()
        views = catalog.service_views()
        found: dict[str, set[str]] = {}
        for at in range(0, len(views), CHUNK_OBJECTS):
            for view in views[at : at + CHUNK_OBJECTS]:
                if chosen.keep(catalog_service_json(view, members)):
                    found.setdefault(view.record.name, set()).update(view.record.tags)
            await trio.lowlevel.checkpoint()
        return {n: sorted(found[n]) for n in sorted(found)}

    async def service(request: Request, chosen: Filter | None, *, connect: bool = False) -> Any:
        members = catalog.members_index()
        views = catalog.service_nodes(name(request), _tags(request), connect=connect)
        return await build_list(views, lambda v: catalog_service_json(v, members), chosen)

    async def nodes(request: Request, chosen: Filter | None) -> Any:
        members = catalog.members_index()
        return await build_list(catalog.nodes(), lambda n: node_json(n, members), chosen)

    async def node(request: Request, chosen: Filter | None) -> Any:
        found = catalog.node_services(name(request))
        if found is None:
            return None  # Consul answers an unknown node with 200 and null
        info, views = found
        members = catalog.members_index()
        services = await build_map(views, lambda v: v.record.service_id, node_service_json, chosen)
        return {"Node": node_json(info, members), "Services": services}

    async def health_service(
        request: Request, chosen: Filter | None, *, connect: bool = False
    ) -> Any:
        members = catalog.members_index()
        entries = catalog.health_service(
            name(request), _tags(request), passing_only=_flag(request, "passing"), connect=connect
        )
        return await build_list(entries, lambda e: health_entry_json(e, members), chosen)

    async def health_checks(request: Request, chosen: Filter | None) -> Any:
        return await build_list(catalog.health_checks(name(request)), check_json, chosen)

    async def health_node(request: Request, chosen: Filter | None) -> Any:
        return await build_list(catalog.health_node(name(request)), check_json, chosen)

    async def health_state(request: Request, chosen: Filter | None) -> Any:
        return await build_list(catalog.health_state(name(request)), check_json, chosen)

    def connect_of(read: Callable[..., Awaitable[Any]]) -> Read:
        return lambda request, chosen: read(request, chosen, connect=True)

    route("/v1/catalog/services", services, CATALOG_SERVICE)
    route("/v1/catalog/service/{name}", service, CATALOG_SERVICE)
    route("/v1/catalog/connect/{name}", connect_of(service), CATALOG_SERVICE)
    route("/v1/catalog/nodes", nodes, NODE)
    route("/v1/catalog/node/{name}", node, NODE_SERVICE)
    route("/v1/health/service/{name}", health_service, HEALTH_ENTRY)
    route("/v1/health/connect/{name}", connect_of(health_service), HEALTH_ENTRY)
    route("/v1/health/checks/{name}", health_checks, CHECK)
    route("/v1/health/node/{name}", health_node, CHECK)
    route("/v1/health/state/{name}", health_state, CHECK)
