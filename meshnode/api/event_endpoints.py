"""/v1/event/fire/<name> and /v1/event/list: Consul's user event API over `UserEvents`.

- ``PUT /v1/event/fire/<name>`` takes the payload as the raw body (at most
  512 bytes, else 413) and ``?node=``, ``?service=``, ``?tag=`` filters
  (regular expressions, as in Consul); it answers the event's JSON.
- ``GET /v1/event/list[?name=]`` answers the recent events delivered to this
  agent, oldest first, with ``X-Consul-Index``; ``?index=N&wait=5s`` blocks
  until a new event arrives (default wait 5 min, at most 10 min).

The event JSON is Consul's ``{ID, Name, Payload (base64 or null),
NodeFilter, ServiceFilter, TagFilter, Version, LTime}``. Unlike Consul,
whose agent forwards the event to a server and answers ``LTime: 0``, the
event is stamped here, so ``LTime`` is its real Lamport time.
"""

from __future__ import annotations

import base64

from ..events.user_events import EVENT_VERSION, PAYLOAD_MAX_BYTES, EventError, UserEvent, UserEvents
from ..http import HttpError, Request, Response, Router
from .kv_endpoints import parse_index, parse_wait

__all__ = ["event_json", "register_event_routes"]

_INDEX_HEADER = "X-Consul-Index"


def event_json(event: UserEvent) -> dict[str, object]:
    """Consul's UserEvent JSON."""
    return {
        "ID": event.id,
        "Name": event.name,
        "Payload": base64.b64encode(event.payload).decode("ascii") if event.payload else None,
        "NodeFilter": event.node_filter,
        "ServiceFilter": event.service_filter,
        "TagFilter": event.tag_filter,
        "Version": EVENT_VERSION,
        "LTime": event.ltime,
    }


def register_event_routes(router: Router, events: UserEvents) -> None:
    """Add PUT /v1/event/fire/<name> and GET /v1/event/list backed by `events`."""

    async def fire(request: Request) -> Response:
        if len(request.body) > PAYLOAD_MAX_BYTES:
            raise HttpError(
                413, f"payload is {len(request.body)} bytes, the limit is {PAYLOAD_MAX_BYTES}"
            )
        try:
            event = events.fire(
                request.params["name"],
                request.body,
                node_filter=request.query_value("node") or "",
                service_filter=request.query_value("service") or "",
                tag_filter=request.query_value("tag") or "",
            )
        except EventError as exc:
            raise HttpError(400, str(exc)) from None
        return Response.json(event_json(event))

    async def listing(request: Request) -> Response:
        index = parse_index(request.query_value("index"))
        if index is None:
            current = events.index
        else:
            current = await events.wait(index, parse_wait(request.query_value("wait")))
        found = events.events(request.query_value("name") or "")
        headers = [(_INDEX_HEADER, str(current))]
        return Response.json([event_json(e) for e in found], headers=headers)

    router.add("PUT", "/v1/event/fire/{name}", fire)
    router.add("GET", "/v1/event/list", listing)
