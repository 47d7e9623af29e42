"""How services and checks are kept in the replicated store, and read back safely.

Rules that live here:

- Kind ``"service"``, key ``"<node>/<service-id>"``; kind ``"check"``, key
  ``"<node>/<check-id>"``. IDs never contain ``/``, so the key splits at its
  last slash. Each node writes only its own keys.
- A value is one canonical CBOR map (cbor2, ``canonical=True``) with ``"v": 1``
  and short field names.
- Values come from other nodes: `decode_service` / `decode_check` check every
  field's type and bound, and that the key matches the value, then re-encode
  the record and compare bytes. That last step refuses in one place every
  encoding we would not have written (tags, trailing bytes, non-canonical
  forms, unknown fields) and raises `MalformedRecord`, which readers log
  and skip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import cbor2

from ..gossip.errors import RemoteProtocolError
from .definitions import CheckDefinition, ProxyDefinition, ServiceDefinition, Upstream

__all__ = [
    "KIND_CHECK",
    "KIND_SERVICE",
    "RECORD_VERSION",
    "CheckRecord",
    "MalformedRecord",
    "ServiceRecord",
    "decode_check",
    "decode_service",
    "encode_check",
    "encode_service",
    "record_key",
    "split_key",
]

KIND_SERVICE = "service"
KIND_CHECK = "check"
RECORD_VERSION = 1
# Bounds for fields read from the network; a local definition is far under them.
_TEXT_MAX_CHARS = 64 * 1024  # a check's output can be a page of text
_LIST_MAX = 256
_MAP_MAX = 256
_DEPTH_MAX = 5  # record > proxy > upstreams > upstream, and check > header > values
_CHECK_KINDS = ("tcp", "http", "ttl", "maintenance")


class MalformedRecord(RemoteProtocolError):
    """A catalog value from the store is not one we would have written: skipped."""


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One registered service instance as stored (and gossiped).

    `definition` holds the service's own fields; its checks are records of
    their own and a sidecar is a service of its own, so both are empty here.
    """

    node: str
    definition: ServiceDefinition
    source: str = "api"  # "api" | "config": what `sync_config` may remove
    sidecar_of: str = ""  # the service ID this sidecar proxies: deregistered with it

    @property
    def service_id(self) -> str:
        return self.definition.service_id

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def port(self) -> int:
        return self.definition.port

    @property
    def address(self) -> str:
        return self.definition.address

    @property
    def tags(self) -> tuple[str, ...]:
        return self.definition.tags

    @property
    def meta(self) -> Mapping[str, str]:
        return self.definition.meta

    @property
    def kind(self) -> str:
        return self.definition.kind

    @property
    def proxy(self) -> ProxyDefinition | None:
        return self.definition.proxy


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One check and its latest status, written by the owning node."""

    node: str
    check_id: str
    status: str  # "passing" | "warning" | "critical"
    definition: CheckDefinition  # its name, type and settings (the runner's input)
    output: str = ""
    service_id: str = ""
    service_name: str = ""

    @property
    def name(self) -> str:
        return self.definition.name


def record_key(node: str, record_id: str) -> str:
    return f"{node}/{record_id}"


def split_key(key: str) -> tuple[str, str]:
    """(node, id) of a store key; IDs have no slash, node names might."""
    node, _, record_id = key.rpartition("/")
    return node, record_id


def _upstream_value(u: Upstream) -> dict[str, Any]:
    return {"name": u.destination_name, "port": u.local_bind_port, "addr": u.local_bind_address}


def _proxy_value(p: ProxyDefinition) -> dict[str, Any]:
    return {
        "dname": p.destination_service_name,
        "did": p.destination_service_id,
        "laddr": p.local_service_address,
        "lport": p.local_service_port,
        "up": [_upstream_value(u) for u in p.upstreams],
    }


def _service_value(r: ServiceRecord) -> dict[str, Any]:
    value: dict[str, Any] = {
        "v": RECORD_VERSION,
        "node": r.node,
        "id": r.service_id,
        "name": r.name,
        "port": r.port,
        "addr": r.address,
        "tags": list(r.tags),
        "meta": dict(r.meta),
        "kind": r.kind,
        "wp": r.definition.weights_passing,
        "ww": r.definition.weights_warning,
        "src": r.source,
        "side": r.sidecar_of,
    }
    if r.proxy is not None:
        value["proxy"] = _proxy_value(r.proxy)
    if r.definition.connect_native:
        value["native"] = True  # absent when false: older records stay byte-identical
    return value


def encode_service(record: ServiceRecord) -> bytes:
    return bytes(cbor2.dumps(_service_value(record), canonical=True))


def _check_value(r: CheckRecord) -> dict[str, Any]:
    d = r.definition
    value: dict[str, Any] = {
        "v": RECORD_VERSION,
        "node": r.node,
        "id": r.check_id,
        "name": r.name,
        "status": r.status,
        "out": r.output,
        "sid": r.service_id,
        "sname": r.service_name,
        "type": d.kind,
        "notes": d.notes,
        "tcp": d.tcp,
        "http": d.http,
        "method": d.method,
        "header": {k: list(v) for k, v in d.header.items()},
        "body": d.body,
        "tlsskip": d.tls_skip_verify,
        "interval": float(d.interval_s),
        "timeout": float(d.timeout_s),
        "ttl": float(d.ttl_s),
        "sbp": d.success_before_passing,
        "fbw": d.failures_before_warning,
        "fbc": d.failures_before_critical,
    }
    if d.deregister_critical_service_after_s > 0:
        # Absent when unset: records without it stay byte-identical to older ones.
        value["dcsa"] = float(d.deregister_critical_service_after_s)
    return value


def encode_check(record: CheckRecord) -> bytes:
    return bytes(cbor2.dumps(_check_value(record), canonical=True))


def _bad(why: str) -> NoReturn:
    raise MalformedRecord(f"malformed catalog record: {why}")


class _Reader:
    """Typed, bounded access to one decoded map."""

    def __init__(self, value: object, what: str) -> None:
        if type(value) is not dict:
            _bad(f"{what} is not a map")
        self.value: dict[Any, Any] = value
        self.what = what

    def text(self, name: str) -> str:
        item = self.value.get(name)
        if type(item) is not str or len(item) > _TEXT_MAX_CHARS:
            _bad(f"{self.what}.{name} is not text of at most {_TEXT_MAX_CHARS} characters")
        return item

    def integer(self, name: str, high: int = 65535) -> int:
        item = self.value.get(name)
        if type(item) is not int or not 0 <= item <= high:
            _bad(f"{self.what}.{name} is not an integer in 0..{high}")
        return item

    def number(self, name: str) -> float:
        item = self.value.get(name)
        if type(item) is not float or not math.isfinite(item) or item < 0:
            _bad(f"{self.what}.{name} is not a non-negative float")
        return item

    def flag(self, name: str) -> bool:
        item = self.value.get(name)
        if type(item) is not bool:
            _bad(f"{self.what}.{name} is not a boolean")
        return item

    def texts(self, name: str) -> tuple[str, ...]:
        items = self.value.get(name)
        if type(items) is not list or len(items) > _LIST_MAX:
            _bad(f"{self.what}.{name} is not a list of at most {_LIST_MAX}")
        if not all(type(i) is str and len(i) <= _TEXT_MAX_CHARS for i in items):
            _bad(f"{self.what}.{name} holds something other than text")
        return tuple(items)

    def text_map(self, name: str) -> dict[str, str]:
        items = self.value.get(name)
        if type(items) is not dict or len(items) > _MAP_MAX:
            _bad(f"{self.what}.{name} is not a map of at most {_MAP_MAX}")
        if not all(type(v) is str and len(v) <= _TEXT_MAX_CHARS for v in items.values()):
            _bad(f"{self.what}.{name} holds something other than text")
        return dict(items)


def _load(raw: bytes, kind: str) -> _Reader:
    try:
        value = cbor2.loads(
            raw,
            max_depth=_DEPTH_MAX,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,  # only text keys: no hash-flooding with integers
        )
    except Exception as exc:  # cbor2 raises several types; all of them mean bad bytes
        _bad(f"not CBOR ({type(exc).__name__})")
    reader = _Reader(value, kind)
    if reader.value.get("v") != RECORD_VERSION:
        _bad(f"unsupported {kind} record version {reader.value.get('v')!r}")
    return reader


def _owned(reader: _Reader, key: str) -> tuple[str, str]:
    node, record_id = reader.text("node"), reader.text("id")
    if not record_id or record_key(node, record_id) != key:
        _bad(f"{reader.what} {record_id[:60]!r} of {node[:60]!r} does not match key {key[:120]!r}")
    return node, record_id


def _canonical(raw: bytes, encoded: bytes, what: str) -> None:
    if raw != encoded:
        _bad(f"{what} is not in canonical form (or has fields we do not know)")


def _decode_proxy(value: object) -> ProxyDefinition:
    p = _Reader(value, "service.proxy")
    ups = p.value.get("up")
    if type(ups) is not list or len(ups) > _LIST_MAX:
        _bad(f"service.proxy.up is not a list of at most {_LIST_MAX}")
    upstreams = []
    for item in ups:
        u = _Reader(item, "service.proxy.up[]")
        upstreams.append(Upstream(u.text("name"), u.integer("port"), u.text("addr")))
    return ProxyDefinition(
        destination_service_name=p.text("dname"),
        destination_service_id=p.text("did"),
        local_service_address=p.text("laddr"),
        local_service_port=p.integer("lport"),
        upstreams=tuple(upstreams),
    )


def decode_service(key: str, raw: bytes, *, canonical: bool = False) -> ServiceRecord:
    """The service stored at `key`, or `MalformedRecord`.

    `canonical`: `raw` is known to be `encode_service`'s output (this agent
    just made it), so the re-encoding that checks the form is skipped.
    """
    r = _load(raw, "service")
    node, service_id = _owned(r, key)
    definition = ServiceDefinition(
        name=r.text("name"),
        service_id=service_id,
        port=r.integer("port"),
        address=r.text("addr"),
        tags=r.texts("tags"),
        meta=r.text_map("meta"),
        kind=r.text("kind"),
        weights_passing=r.integer("wp"),
        weights_warning=r.integer("ww"),
        proxy=_decode_proxy(r.value["proxy"]) if "proxy" in r.value else None,
        connect_native=r.flag("native") if "native" in r.value else False,
    )
    record = ServiceRecord(node, definition, source=r.text("src"), sidecar_of=r.text("side"))
    if not canonical:
        _canonical(raw, encode_service(record), "service")
    return record


def decode_check(key: str, raw: bytes, *, canonical: bool = False) -> CheckRecord:
    """The check stored at `key`, or `MalformedRecord`; `canonical` as for `decode_service`."""
    r = _load(raw, "check")
    node, check_id = _owned(r, key)
    kind = r.text("type")
    status = r.text("status")
    if kind not in _CHECK_KINDS or status not in ("passing", "warning", "critical"):
        _bad(f"check {check_id[:60]!r} has type {kind[:20]!r} and status {status[:20]!r}")
    headers = r.value.get("header")
    if type(headers) is not dict or len(headers) > _MAP_MAX:
        _bad("check.header is not a map")
    definition = CheckDefinition(
        kind=kind,  # type: ignore[arg-type]  # checked just above
        check_id=check_id,
        name=r.text("name"),
        notes=r.text("notes"),
        tcp=r.text("tcp"),
        http=r.text("http"),
        method=r.text("method"),
        header={k: _Reader({"h": v}, "check.header").texts("h") for k, v in headers.items()},
        body=r.text("body"),
        tls_skip_verify=r.flag("tlsskip"),
        interval_s=r.number("interval"),
        timeout_s=r.number("timeout"),
        ttl_s=r.number("ttl"),
        success_before_passing=r.integer("sbp"),
        failures_before_warning=r.integer("fbw"),
        failures_before_critical=r.integer("fbc"),
        deregister_critical_service_after_s=r.number("dcsa") if "dcsa" in r.value else 0.0,
    )
    record = CheckRecord(
        node=node,
        check_id=check_id,
        status=status,
        definition=definition,
        output=r.text("out"),
        service_id=r.text("sid"),
        service_name=r.text("sname"),
    )
    if not canonical:
        _canonical(raw, encode_check(record), "check")
    return record
