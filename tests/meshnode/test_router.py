"""Router unit tests: patterns, 404/405, query parsing, JSON bodies (no sockets)."""

from __future__ import annotations

import json

import pytest

from meshnode.http import HttpError, Request, Response, Router


async def echo(request: Request) -> Response:
    return Response.json({"params": dict(request.params), "query": dict(request.query)})


def make_router() -> Router:
    router = Router()
    router.add("PUT", "/v1/agent/force-leave/{node}", echo)
    router.add(["GET", "POST"], "/v1/things", echo)
    router.add("GET", "/v1/health/service/{service}", echo)
    return router


async def test_placeholder_is_percent_decoded() -> None:
    response = await make_router().dispatch(
        Request.from_target("PUT", "/v1/agent/force-leave/a%2Fb", [])
    )
    assert response.status == 200
    assert json.loads(response.body)["params"] == {"node": "a/b"}


async def test_query_keeps_blank_values() -> None:
    request = Request.from_target("GET", "/v1/health/service/db?passing&tag=a&tag=b", [])
    assert request.query == {"passing": [""], "tag": ["a", "b"]}
    assert request.has_query("passing")
    assert request.query_value("tag") == "a"
    assert request.query_value("missing", "x") == "x"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing", 404),
        ("GET", "/v1/agent/force-leave/n1", 405),
        ("GET", "/v1/agent/force-leave/", 404),
        ("GET", "/v1/agent/force-leave/n1/extra", 404),
        ("DELETE", "/v1/things", 405),
        ("POST", "/v1/things", 200),
        ("GET", "/v1/things/", 200),
    ],
)
async def test_routing_statuses(method: str, path: str, status: int) -> None:
    response = await make_router().dispatch(Request.from_target(method, path, []))
    assert response.status == status


async def test_405_lists_allowed_methods() -> None:
    response = await make_router().dispatch(Request.from_target("PUT", "/v1/things", []))
    assert ("Allow", "GET, POST") in response.headers
    assert "not allowed" in json.loads(response.body)["error"]


def test_duplicate_route_is_refused() -> None:
    router = make_router()
    with pytest.raises(ValueError, match="already routed"):
        router.add("GET", "/v1/things", echo)


def test_headers_are_case_insensitive_and_joined() -> None:
    request = Request.from_target("GET", "/", [("X-A", "1"), ("x-a", "2"), ("Host", "h")])
    assert request.headers == {"x-a": "1, 2", "host": "h"}


@pytest.mark.parametrize("body", [b"", b"   ", b"{nope", b"\xff\xfe"])
def test_json_body_errors_are_400(body: bytes) -> None:
    request = Request.from_target("PUT", "/", [], body)
    with pytest.raises(HttpError) as caught:
        request.json_body()
    assert caught.value.status == 400
    assert "\n" not in caught.value.message


def test_error_response_is_one_line_json() -> None:
    response = Response.error(500, "line one\nline two")
    assert json.loads(response.body) == {"error": "line one line two"}
    assert response.content_type == "application/json"
