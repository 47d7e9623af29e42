"""/v1/connect/intentions and /v1/agent/connect/authorize in Consul's shapes.

- ``PUT .../intentions/exact?source=&destination=`` with an `api.Intention`
  body creates or replaces and answers ``true``; ``GET`` answers the intention
  (404 when there is none); ``DELETE`` answers ``true``, also when there was
  none (Consul's answer: the pair has no intention either way).
- ``POST /v1/connect/intentions`` (Consul's pre-1.9 create) takes ``{SourceName,
  DestinationName, Action, ...}``, answers ``{"ID": ...}`` and 409 when the
  pair already has one: the CLI's `create` without ``-replace``.
- ``GET/PUT/DELETE /v1/connect/intentions/<id>``: Consul's ID-based calls (the
  Go client's ``IntentionGet``, ``IntentionUpdate``, ``IntentionDelete``); 404
  for an ID no intention has. An update answers ``{"ID": ...}`` as Consul does.
- ``GET /v1/connect/intentions`` lists in evaluation order, as a blocking
  query (``?index=&wait=``) with ``X-Consul-Index``; ``?filter=`` keeps the
  intentions its expression matches (filter_expr.py; a bad one is 400).
- ``GET .../check?source=&destination=`` answers ``{"Allowed": bool}``;
  ``GET .../match?by=source|destination&name=X`` answers ``{"X": [...]}``.
- ``POST`` (or ``PUT``, as py-consul sends it) ``/v1/agent/connect/authorize``
  with ``{Target, ClientCertURI, ClientCertSerial}`` answers ``{Authorized,
  Reason}``; the reason names the matched intention and its precedence.

Bodies are decoded by `intention_bodies` (size-limited, strict, Consul's
read-only fields ignored); bad input answers 400 with one line and writes
nothing. Names may carry Consul's ``default/`` prefixes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ..http import HttpError, Request, Response, Router
from ..intentions.audit import AuditLog
from ..intentions.replica import (
    IntentionExists,
    IntentionRecord,
    IntentionState,
    UnknownIntention,
)
from ..intentions.rules import IntentionError, make_intention, plain_name
from .bodies import string_field
from .cooperative import build_list, json_response
from .filter_shapes import INTENTION, request_filter
from .intention_bodies import (
    AUTHORIZE_FIELDS,
    INTENTION_FIELDS,
    NAMESPACE,
    SOURCE_TYPE,
    checked_body,
    intention_body,
    optional_string,
    query_name,
)
from .kv_endpoints import parse_index, parse_wait

__all__ = ["intention_json", "register_intention_routes"]

_INDEX_HEADER = "X-Consul-Index"


def _rfc3339(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def intention_json(record: IntentionRecord, indexes: tuple[int, int]) -> dict[str, Any]:
    """One intention as Consul's API shows it."""
    ixn = record.intention
    return {
        "ID": record.id,
        "Description": ixn.description,
        "SourceNS": NAMESPACE,
        "SourceName": ixn.source,
        "DestinationNS": NAMESPACE,
        "DestinationName": ixn.destination,
        "SourceType": SOURCE_TYPE,
        "Action": ixn.action,
        "Precedence": ixn.precedence,
        "Meta": dict(record.meta),
        "CreatedAt": _rfc3339(record.created_at_s),
        "UpdatedAt": _rfc3339(record.updated_at_s),
        "CreateIndex": indexes[0],
        "ModifyIndex": indexes[1],
    }


@contextmanager
def _intention_errors() -> Iterator[None]:
    """The state's typed errors as statuses: unknown 404, exists 409, invalid 400."""
    try:
        yield
    except UnknownIntention as exc:
        raise HttpError(404, str(exc)) from None
    except IntentionExists as exc:
        raise HttpError(409, str(exc)) from None
    except IntentionError as exc:
        raise HttpError(400, str(exc)) from None


def _same_name(given: str, expected: str, field: str, where: str) -> None:
    """A body value that disagrees with the URL's is refused, never silently overridden."""
    if given and given != expected:
        raise HttpError(400, f"field {field!r} is {given[:60]!r} but {where} is {expected[:60]!r}")


def register_intention_routes(
    router: Router, intentions: IntentionState, audit: AuditLog | None = None
) -> None:
    """Add the intention endpoints and /v1/agent/connect/authorize, backed by `intentions`.

    With `audit`, every authorize answer is recorded there.
    """

    def index_headers() -> list[tuple[str, str]]:
        return [(_INDEX_HEADER, str(max(1, intentions.index())))]

    def shown(record: IntentionRecord) -> Response:
        return Response.json(
            intention_json(record, intentions.indexes(record)), headers=index_headers()
        )

    async def list_all(request: Request) -> Response:
        chosen = request_filter(request, INTENTION)
        index = parse_index(request.query_value("index"))
        if index is not None:
            if index == 1 and intentions.index() == 0:
                index = 0  # the 1 we reported for "nothing yet": wait for the first write
            await intentions.wait(index, parse_wait(request.query_value("wait")))
        headers = index_headers()  # read with the snapshot: the index the answer reflects
        # Records with their indexes read now; the JSON is built in chunks after.
        listed = [(r, intentions.indexes(r)) for r in intentions.list()]
        shown = await build_list(listed, lambda pair: intention_json(*pair), chosen)
        return await json_response(shown, headers=headers)

    async def create(request: Request) -> Response:
        data = checked_body(
            request,
            allowed=INTENTION_FIELDS,
            required={"SourceName", "DestinationName", "Action"},
        )
        body = intention_body(data)
        if body.id:
            raise HttpError(400, "field 'ID' must be empty when creating an intention")
        if not body.source or not body.destination:
            raise HttpError(400, "fields 'SourceName' and 'DestinationName' must not be empty")
        with _intention_errors():
            record = intentions.create(
                body.source, body.destination, body.action, body.description, meta=body.meta
            )
        return Response.json({"ID": record.id})

    async def get_exact(request: Request) -> Response:
        source, destination = query_name(request, "source"), query_name(request, "destination")
        with _intention_errors():
            record = intentions.get(source, destination)
        if record is None:
            raise HttpError(
                404, f"no intention from {source!r} to {destination!r}", headers=index_headers()
            )
        return shown(record)

    async def put_exact(request: Request) -> Response:
        source, destination = query_name(request, "source"), query_name(request, "destination")
        body = intention_body(checked_body(request, allowed=INTENTION_FIELDS, required={"Action"}))
        _same_name(body.source, source, "SourceName", "?source=")
        _same_name(body.destination, destination, "DestinationName", "?destination=")
        with _intention_errors():
            intentions.upsert(source, destination, body.action, body.description, body.meta)
        return Response.json(True)

    async def delete_exact(request: Request) -> Response:
        source, destination = query_name(request, "source"), query_name(request, "destination")
        try:
            intentions.delete(source, destination)
        except UnknownIntention:
            pass  # Consul answers true: afterwards the pair has no intention, as asked
        except IntentionError as exc:
            raise HttpError(400, str(exc)) from None
        return Response.json(True)

    async def get_by_id(request: Request) -> Response:
        intention_id = request.params["id"]
        record = intentions.get_by_id(intention_id)
        if record is None:
            raise HttpError(
                404, f"no intention with ID {intention_id[:64]!r}", headers=index_headers()
            )
        return shown(record)

    async def update_by_id(request: Request) -> Response:
        intention_id = request.params["id"]
        body = intention_body(checked_body(request, allowed=INTENTION_FIELDS, required={"Action"}))
        _same_name(body.id, intention_id, "ID", "the ID in the URL")
        current = intentions.get_by_id(intention_id)
        if current is None:
            raise HttpError(404, f"no intention with ID {intention_id[:64]!r}")
        with _intention_errors():
            change = make_intention(
                body.source or current.source,
                body.destination or current.destination,
                body.action,
                body.description,
            )
            record = intentions.update_by_id(intention_id, change, body.meta)
        return Response.json({"ID": record.id})

    async def delete_by_id(request: Request) -> Response:
        with _intention_errors():
            intentions.delete_by_id(request.params["id"])
        return Response.json(True)

    async def check(request: Request) -> Response:
        source, destination = query_name(request, "source"), query_name(request, "destination")
        source_type = request.query_value("source-type")
        if source_type not in (None, "", SOURCE_TYPE):
            raise HttpError(400, f"unsupported source-type {source_type[:60]!r}: use 'consul'")
        with _intention_errors():
            decision = intentions.check(source, destination)
        return Response.json({"Allowed": decision.allowed})

    async def match(request: Request) -> Response:
        by = request.query_value("by")
        if not by:
            raise HttpError(400, "missing query parameter ?by=")
        names = [n for n in request.query.get("name", []) if n]
        if not names:
            raise HttpError(400, "missing query parameter ?name=")
        found: dict[str, list[dict[str, Any]]] = {}
        with _intention_errors():
            for name in names:
                records = intentions.match(by, plain_name(name, "name"))
                found[name] = [intention_json(r, intentions.indexes(r)) for r in records]
        return Response.json(found, headers=index_headers())

    async def authorize(request: Request) -> Response:
        data = checked_body(request, allowed=AUTHORIZE_FIELDS, required={"Target", "ClientCertURI"})
        target = string_field(data, "Target")
        uri = string_field(data, "ClientCertURI")
        optional_string(data, "ClientCertSerial")  # revocation is checked at the handshake
        with _intention_errors():
            source, decision = intentions.authorize_source(target, uri)
        if audit is not None:
            audit.record(
                "authorize",
                "api",
                source,
                target,
                decision.allowed,
                decision.reason,
                request.remote,
            )
        return Response.json({"Authorized": decision.allowed, "Reason": decision.reason})

    router.add("GET", "/v1/connect/intentions/exact", get_exact)
    router.add("PUT", "/v1/connect/intentions/exact", put_exact)
    router.add("DELETE", "/v1/connect/intentions/exact", delete_exact)
    router.add("GET", "/v1/connect/intentions/check", check)
    router.add("GET", "/v1/connect/intentions/match", match)
    router.add("GET", "/v1/connect/intentions", list_all)
    router.add("POST", "/v1/connect/intentions", create)
    # After the literal routes above, which are tried first: `exact` is never an ID.
    router.add("GET", "/v1/connect/intentions/{id}", get_by_id)
    router.add("PUT", "/v1/connect/intentions/{id}", update_by_id)
    router.add("DELETE", "/v1/connect/intentions/{id}", delete_by_id)
    router.add(["POST", "PUT"], "/v1/agent/connect/authorize", authorize)
