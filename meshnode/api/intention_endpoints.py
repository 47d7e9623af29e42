"""/v1/connect/intentions and /v1/agent/connect/authorize in Consul's shapes.

- ``PUT .../intentions/exact?source=&destination=`` with ``{Action, Description,
  Meta}`` creates or replaces and answers ``true``; ``GET`` answers the
  intention (404 when there is none); ``DELETE`` answers ``true`` (404 when
  there is none).
- ``POST /v1/connect/intentions`` (Consul's pre-1.9 create) takes ``{SourceName,
  DestinationName, Action, ...}``, answers ``{"ID": ...}`` and 409 when the
  pair already has one: the CLI's `create` without ``-replace``.
- ``GET /v1/connect/intentions`` lists in evaluation order, as a blocking
  query (``?index=&wait=``) with ``X-Consul-Index``.
- ``GET .../check?source=&destination=`` answers ``{"Allowed": bool}``;
  ``GET .../match?by=source|destination&name=X`` answers ``{"X": [...]}``.
- ``POST`` (or ``PUT``, as py-consul sends it) ``/v1/agent/connect/authorize``
  with ``{Target, ClientCertURI, ClientCertSerial}`` answers ``{Authorized,
  Reason}``; the reason names the matched intention and its precedence.

Every body is size-limited and strictly decoded: bad JSON, wrong types,
unknown fields, a bad action or name answer 400 with one line and write
nothing. Namespaces and partitions exist only as ``default``; L7
``Permissions`` are refused, not ignored.
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
from ..intentions.rules import IntentionError
from .bodies import object_body, string_field
from .kv_endpoints import parse_index, parse_wait

__all__ = ["INTENTION_BODY_MAX_BYTES", "intention_json", "register_intention_routes"]

# An intention body is an action, a description (1 KiB) and meta (64 pairs of
# at most 640 characters): 64 KiB holds the largest valid one with room to spare.
INTENTION_BODY_MAX_BYTES = 64 * 1024
_INDEX_HEADER = "X-Consul-Index"
_NAMESPACE = "default"
_SOURCE_TYPE = "consul"
_EXACT_FIELDS = {"Action", "Description", "Meta", "SourceType", "Permissions"}
_CREATE_FIELDS = _EXACT_FIELDS | {"SourceName", "DestinationName", "SourceNS", "DestinationNS"}
_AUTHORIZE_FIELDS = {"Target", "ClientCertURI", "ClientCertSerial"}


def _rfc3339(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def intention_json(record: IntentionRecord, indexes: tuple[int, int]) -> dict[str, Any]:
    """One intention as Consul's API shows it."""
    ixn = record.intention
    return {
        "ID": record.id,
        "Description": ixn.description,
        "SourceNS": _NAMESPACE,
        "SourceName": ixn.source,
        "DestinationNS": _NAMESPACE,
        "DestinationName": ixn.destination,
        "SourceType": _SOURCE_TYPE,
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


def _query(request: Request, name: str) -> str:
    value = request.query_value(name)
    if value is None or value == "":
        raise HttpError(400, f"missing query parameter ?{name}=")
    return value


def _index_param(request: Request) -> int | None:
    return parse_index(request.query_value("index"))


def _body(request: Request, *, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if len(request.body) > INTENTION_BODY_MAX_BYTES:
        raise HttpError(
            413,
            f"request body is {len(request.body)} bytes, the limit is {INTENTION_BODY_MAX_BYTES}",
        )
    return object_body(request, allowed=allowed, required=required)


def _optional_string(data: dict[str, Any], name: str) -> str:
    if data.get(name) is None:
        return ""
    return string_field(data, name)


def _fixed(data: dict[str, Any], name: str, expected: str) -> None:
    """Fields that exist in Consul but hold one value here (namespaces, source type)."""
    value = _optional_string(data, name)
    if value not in ("", expected):
        raise HttpError(400, f"field {name!r} must be {expected!r}, not {value[:60]!r}")


def _write_fields(data: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(action, description, meta) of an intention body, type-checked."""
    if data.get("Permissions"):
        raise HttpError(400, "L7 Permissions are not supported: use Action allow or deny")
    _fixed(data, "SourceType", _SOURCE_TYPE)
    action = string_field(data, "Action")
    meta = data.get("Meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise HttpError(400, "field 'Meta' must be an object of strings")
    return action, _optional_string(data, "Description"), meta


def register_intention_routes(
    router: Router, intentions: IntentionState, audit: AuditLog | None = None
) -> None:
    """Add the intention endpoints and /v1/agent/connect/authorize, backed by `intentions`.

    With `audit`, every authorize answer is recorded there.
    """

    def index_headers() -> list[tuple[str, str]]:
        return [(_INDEX_HEADER, str(max(1, intentions.index())))]

    async def list_all(request: Request) -> Response:
        index = _index_param(request)
        if index is not None:
            if index == 1 and intentions.index() == 0:
                index = 0  # the 1 we reported for "nothing yet": wait for the first write
            await intentions.wait(index, parse_wait(request.query_value("wait")))
        records = intentions.list()
        return Response.json(
            [intention_json(r, intentions.indexes(r)) for r in records], headers=index_headers()
        )

    async def create(request: Request) -> Response:
        data = _body(
            request,
            allowed=_CREATE_FIELDS,
            required={"SourceName", "DestinationName", "Action"},
        )
        _fixed(data, "SourceNS", _NAMESPACE)
        _fixed(data, "DestinationNS", _NAMESPACE)
        source = string_field(data, "SourceName")
        destination = string_field(data, "DestinationName")
        action, description, meta = _write_fields(data)
        with _intention_errors():
            record = intentions.create(source, destination, action, description, meta=meta)
        return Response.json({"ID": record.id})

    async def get_exact(request: Request) -> Response:
        source, destination = _query(request, "source"), _query(request, "destination")
        with _intention_errors():
            record = intentions.get(source, destination)
        if record is None:
            raise HttpError(
                404, f"no intention from {source!r} to {destination!r}", headers=index_headers()
            )
        return Response.json(
            intention_json(record, intentions.indexes(record)), headers=index_headers()
        )

    async def put_exact(request: Request) -> Response:
        source, destination = _query(request, "source"), _query(request, "destination")
        data = _body(request, allowed=_EXACT_FIELDS, required={"Action"})
        action, description, meta = _write_fields(data)
        with _intention_errors():
            intentions.upsert(source, destination, action, description, meta)
        return Response.json(True)

    async def delete_exact(request: Request) -> Response:
        source, destination = _query(request, "source"), _query(request, "destination")
        with _intention_errors():
            intentions.delete(source, destination)
        return Response.json(True)

    async def check(request: Request) -> Response:
        source, destination = _query(request, "source"), _query(request, "destination")
        source_type = request.query_value("source-type")
        if source_type not in (None, "", _SOURCE_TYPE):
            raise HttpError(400, f"unsupported source-type {source_type[:60]!r}: use 'consul'")
        with _intention_errors():
            decision = intentions.check(source, destination)
        return Response.json({"Allowed": decision.allowed})

    async def match(request: Request) -> Response:
        by = _query(request, "by")
        names = [n for n in request.query.get("name", []) if n]
        if not names:
            raise HttpError(400, "missing query parameter ?name=")
        found: dict[str, list[dict[str, Any]]] = {}
        with _intention_errors():
            for name in names:
                found[name] = [
                    intention_json(r, intentions.indexes(r)) for r in intentions.match(by, name)
                ]
        return Response.json(found, headers=index_headers())

    async def authorize(request: Request) -> Response:
        data = _body(request, allowed=_AUTHORIZE_FIELDS, required={"Target", "ClientCertURI"})
        target = string_field(data, "Target")
        uri = string_field(data, "ClientCertURI")
        _optional_string(data, "ClientCertSerial")  # revocation arrives with the CA work
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
    router.add(["POST", "PUT"], "/v1/agent/connect/authorize", authorize)
