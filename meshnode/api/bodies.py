"""Strict decoding of JSON request bodies: wrong shapes and unknown fields are 400."""

from __future__ import annotations

from typing import Any

from ..http import HttpError, Request

__all__ = ["bounded_json_body", "object_body", "string_field"]


def bounded_json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, 413 when it is over `max_bytes` (a definition, not a payload)."""
    if len(request.body) > max_bytes:
        raise HttpError(413, f"body is {len(request.body)} bytes, the limit is {max_bytes}")
    return request.json_body()


def object_body(request: Request, *, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """The body as a JSON object with only `allowed` fields and all `required` ones."""
    data = request.json_body()
    if not isinstance(data, dict):
        raise HttpError(400, f"request body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0]!r} in request body")
    missing = sorted(required - set(data))
    if missing:
        raise HttpError(400, f"missing field {missing[0]!r} in request body")
    return data


def string_field(data: dict[str, Any], name: str) -> str:
    """`data[name]` when it is a string; 400 otherwise."""
    value = data.get(name)
    if not isinstance(value, str):
        raise HttpError(400, f"field {name!r} must be a string")
    return value
