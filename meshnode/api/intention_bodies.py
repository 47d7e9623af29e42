"""Decoding an intention request body: the whole of Go's `api.Intention`, strictly.

Rules that live here:
- the Go client, Terraform and Consul's UI send every field of `api.Intention`
  on a write, read-only ones included (``ID``, ``Precedence``, ``CreatedAt``,
  ``UpdatedAt``, ``CreateIndex``, ``ModifyIndex``, ``Hash``, the deprecated
  ``DefaultAddr``/``DefaultPort``): they are type-checked and ignored, as
  Consul ignores them;
- a field `api.Intention` does not have is refused with 400 naming it, so a
  typo never writes an intention without the setting the user meant;
- namespaces and partitions exist only as ``default`` (empty means default);
  a peer or a sameness group source is refused, as are L7 ``Permissions``;
- names may carry ``default/`` or ``default/default/`` prefixes (`plain_name`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..http import HttpError, Request
from ..intentions.rules import IntentionError, plain_name
from .bodies import object_body, string_field

__all__ = [
    "AUTHORIZE_FIELDS",
    "INTENTION_BODY_MAX_BYTES",
    "INTENTION_FIELDS",
    "IntentionBody",
    "checked_body",
    "intention_body",
    "optional_string",
    "query_name",
]

# An intention body is an action, a description (512 characters), meta (64
# pairs of at most 640 characters) and Consul's read-only fields: 64 KiB holds
# the largest valid one with room to spare.
INTENTION_BODY_MAX_BYTES = 64 * 1024
NAMESPACE = "default"
SOURCE_TYPE = "consul"

# Fields a write reads.
_WRITABLE = {"SourceName", "DestinationName", "Action", "Description", "Meta", "SourceType"}
# Fields that hold one value here (empty means that value too).
_SCOPES = {
    "SourceNS": NAMESPACE,
    "DestinationNS": NAMESPACE,
    "SourcePartition": NAMESPACE,
    "DestinationPartition": NAMESPACE,
}
# Features meshnode does not have: empty (or null) only.
_ABSENT = {
    "SourcePeer": "cluster peering is not supported",
    "SourceSamenessGroup": "sameness groups are not supported",
}
# Read-only in Consul (set by the server on every write): checked for type, ignored.
_STRING_OR_NULL = {"ID", "CreatedAt", "UpdatedAt", "Hash", "DefaultAddr"}
_UINT_OR_NULL = {"Precedence", "CreateIndex", "ModifyIndex", "DefaultPort"}
INTENTION_FIELDS = (
    _WRITABLE | set(_SCOPES) | set(_ABSENT) | _STRING_OR_NULL | _UINT_OR_NULL | {"Permissions"}
)
AUTHORIZE_FIELDS = {"Target", "ClientCertURI", "ClientCertSerial"}


@dataclass(frozen=True, slots=True)
class IntentionBody:
    """What a write body asks for; empty names mean "not given"."""

    source: str
    destination: str
    action: str
    description: str
    meta: dict[str, str]
    id: str  # read-only in Consul; an update by ID compares it, others ignore it


def checked_body(request: Request, *, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """The body as a JSON object, size-limited before it is parsed."""
    if len(request.body) > INTENTION_BODY_MAX_BYTES:
        raise HttpError(
            413,
            f"request body is {len(request.body)} bytes, the limit is {INTENTION_BODY_MAX_BYTES}",
        )
    return object_body(request, allowed=allowed, required=required)


def optional_string(data: dict[str, Any], name: str) -> str:
    """`data[name]` as a string, "" when absent or null; 400 for another type."""
    if data.get(name) is None:
        return ""
    return string_field(data, name)


def query_name(request: Request, name: str) -> str:
    """A required name parameter (``?source=``), prefixes dropped; 400 when missing or bad."""
    value = request.query_value(name)
    if value is None or value == "":
        raise HttpError(400, f"missing query parameter ?{name}=")
    return _plain(value, name)


def _plain(name: str, role: str) -> str:
    try:
        return plain_name(name, role)
    except IntentionError as exc:
        raise HttpError(400, str(exc)) from None


def _check_read_only(data: dict[str, Any]) -> None:
    for name in _STRING_OR_NULL:
        optional_string(data, name)
    for name in _UINT_OR_NULL:
        value = data.get(name)
        # `type(...) is int`: a bool is an int in Python but never one in Go's JSON.
        if value is not None and (type(value) is not int or value < 0):
            raise HttpError(400, f"field {name!r} must be a non-negative integer")


def _check_fixed(data: dict[str, Any]) -> None:
    for name, expected in _SCOPES.items():
        value = optional_string(data, name)
        if value not in ("", expected):
            raise HttpError(
                400,
                f"field {name!r} must be {expected!r}, not {value[:60]!r}: "
                "meshnode has no other namespaces or partitions",
            )
    for name, why in _ABSENT.items():
        if optional_string(data, name):
            raise HttpError(400, f"field {name!r} must be empty: {why}")
    if optional_string(data, "SourceType") not in ("", SOURCE_TYPE):
        raise HttpError(400, f"field 'SourceType' must be {SOURCE_TYPE!r}")
    if data.get("Permissions"):
        raise HttpError(400, "L7 Permissions are not supported: use Action allow or deny")


def intention_body(data: dict[str, Any]) -> IntentionBody:
    """The write an `api.Intention` body asks for, every field type-checked."""
    _check_read_only(data)
    _check_fixed(data)
    meta = data.get("Meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise HttpError(400, "field 'Meta' must be an object of strings")
    source = optional_string(data, "SourceName")
    destination = optional_string(data, "DestinationName")
    return IntentionBody(
        source=_plain(source, "source") if source else "",
        destination=_plain(destination, "destination") if destination else "",
        action=string_field(data, "Action"),
        description=optional_string(data, "Description"),
        meta=meta,
        id=optional_string(data, "ID"),
    )
