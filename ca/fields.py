"""Strict field readers for the CA's replicated values (shared by records and approvals).

A value is a canonical CBOR map with ``"v": 1``, at most `VALUE_MAX_BYTES`;
every reader raises `MalformedCARecord` (a remote error) with one line.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import cbor2
from cryptography import x509

from ..gossip.errors import DecodeError
from ..gossip.strict_cbor import Refuse, load_strict
from .pem import PemError, cert_from_pem

__all__ = [
    "PEM_MAX_CHARS",
    "TEXT_MAX_CHARS",
    "VALUE_MAX_BYTES",
    "MalformedCARecord",
    "blob",
    "dump",
    "integer",
    "load_cert",
    "load_map",
    "load_v1_map",
    "malformed",
    "number",
    "optional_text",
    "text",
]

# Two certificates in PEM and a few fields take about 2 KiB; 32 KiB is room
# for larger keys without letting one value hold megabytes.
VALUE_MAX_BYTES = 32 * 1024
TEXT_MAX_CHARS = 256
PEM_MAX_CHARS = 12 * 1024


class MalformedCARecord(DecodeError):
    """A replicated CA value from the network cannot be read (a remote error)."""


def malformed(why: str) -> NoReturn:
    raise MalformedCARecord(f"malformed CA record: {why}")


def _refusal(why: str) -> MalformedCARecord:
    return MalformedCARecord(f"malformed CA record: {why}")


def load_cert(pem: str) -> x509.Certificate:
    try:
        return cert_from_pem(pem)
    except PemError as exc:
        malformed(str(exc))


def dump(value: dict[str, Any]) -> bytes:
    return cbor2.dumps({"v": 1, **value}, canonical=True)


def load_v1_map(data: bytes, *, max_bytes: int, refuse: Refuse) -> dict[str, Any]:
    """A `"v": 1` CBOR map of at most `max_bytes`; raises `refuse(why)` for anything else.

    Shared with the revocations, which have their own bound and error type.
    """
    if len(data) > max_bytes:
        raise refuse(f"{len(data)} bytes is more than {max_bytes}")
    value = load_strict(data, max_depth=2, refuse=refuse)
    if not isinstance(value, dict):
        raise refuse("value is not a map")
    if value.get("v") != 1:
        raise refuse(f"unknown format version {value.get('v')!r}")
    return value


def load_map(data: bytes) -> dict[str, Any]:
    return load_v1_map(data, max_bytes=VALUE_MAX_BYTES, refuse=_refusal)


def text(value: dict[str, Any], name: str, max_chars: int = TEXT_MAX_CHARS) -> str:
    found = value.get(name)
    if not isinstance(found, str) or not 0 < len(found) <= max_chars:
        malformed(f"{name} is not text of 1..{max_chars} characters")
    return found


def optional_text(value: dict[str, Any], name: str, max_chars: int) -> str:
    return "" if value.get(name, "") == "" else text(value, name, max_chars)


def integer(value: dict[str, Any], name: str, low: int, high: int) -> int:
    found = value.get(name)
    # `type(...) is int`: a bool is an int but never a count.
    if type(found) is not int or not low <= found <= high:
        malformed(f"{name} is not an integer in {low}..{high}")
    return found


def number(value: dict[str, Any], name: str, low: float, high: float) -> float:
    found = value.get(name)
    if not (type(found) is int or type(found) is float):
        malformed(f"{name} is not a number")
    if not math.isfinite(found) or not low <= found <= high:
        malformed(f"{name} is not a number in {low}..{high}")
    return float(found)


def blob(value: dict[str, Any], name: str, min_bytes: int, max_bytes: int) -> bytes:
    found = value.get(name)
    if not isinstance(found, bytes) or not min_bytes <= len(found) <= max_bytes:
        malformed(f"{name} is not {min_bytes}..{max_bytes} bytes")
    return found
