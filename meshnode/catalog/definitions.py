"""Service definitions in Consul's shapes, validated into frozen dataclasses.

Rules that live here:

- One parser for every spelling Consul accepts: the config files' snake_case
  (``enable_tag_override``), the HTTP API's PascalCase (``EnableTagOverride``)
  and py-consul's lower case (``enabletagoverride``). Field names are compared
  without case, ``_`` or ``-``; user data (``Meta`` keys, check headers) is kept
  as given. Errors name the field as the user spelled it.
- Unknown or unsupported fields are refused, never ignored: a definition that
  says more than meshnode does would otherwise silently mean less.
- Service names are DNS labels (letters, digits, dashes, at most 63): they
  appear in ``<name>.service.mesh`` and in SPIFFE IDs.
- Bounds are Consul's: 64 meta pairs, keys of 128 characters, values of 512.
- Only tcp, http and ttl checks; intervals under 1 s are raised to 1 s, as
  Consul does (a check every few milliseconds would be a load test).
  ``maintenance`` is a fourth type that no definition may ask for: the
  catalog writes it for node and service maintenance (Consul's type name).
- ``DeregisterCriticalServiceAfter`` is kept as given; the catalog raises it
  to its floor (Consul's one minute) when it reaps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from ..durations import parse_duration_s

__all__ = [
    "CHECK_DURATION_MAX_S",
    "CHECK_INTERVAL_MIN_S",
    "MAINTENANCE",
    "CheckDefinition",
    "DefinitionError",
    "ProxyDefinition",
    "ServiceDefinition",
    "SidecarDefinition",
    "Upstream",
    "parse_check_registration",
    "parse_config_services",
    "parse_file_definitions",
    "parse_service",
    "validate_check_id",
    "validate_service_id",
]

CheckType = Literal["tcp", "http", "ttl", "maintenance"]
# The type of the checks node and service maintenance add (Consul's name for it).
MAINTENANCE: Final = "maintenance"

# Consul's floor for check intervals (lower ones are raised to it).
CHECK_INTERVAL_MIN_S = 1.0
# Consul's default timeout for tcp and http checks.
CHECK_TIMEOUT_DEFAULT_S = 10.0
# A day is far beyond any check interval, timeout or TTL; a bound keeps floats sane.
CHECK_DURATION_MAX_S = 86400.0
# DeregisterCriticalServiceAfter may be days (a service left down over a
# weekend); a year is far beyond any use and keeps the float sane.
DEREGISTER_AFTER_MAX_S = 365 * 86400.0
NAME_MAX_CHARS = 63  # one DNS label
ID_MAX_CHARS = 128  # IDs are store keys and URL path segments
TAGS_MAX = 64  # a tag list longer than this is a mistake (tags are also DNS labels)
TAG_MAX_CHARS = 255
META_MAX_PAIRS = 64  # Consul's metaMaxKeyPairs
META_KEY_MAX_CHARS = 128  # Consul's metaKeyMaxLength
META_VALUE_MAX_CHARS = 512  # Consul's metaValueMaxLength
CHECKS_MAX = 32  # each check is a task on the owning agent
UPSTREAMS_MAX = 128
TEXT_MAX_CHARS = 1024  # notes, URLs, addresses, bodies of a check
HEADERS_MAX = 32
INITIAL_STATUSES = ("passing", "warning", "critical")

_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class DefinitionError(ValueError):
    """A service definition was refused; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """One health check of a service; `check_id` "" means derive it from the service."""

    kind: CheckType
    check_id: str = ""
    name: str = ""
    notes: str = ""
    status: str = ""  # initial status; "" lets the catalog pick (critical until run)
    tcp: str = ""
    http: str = ""
    method: str = "GET"
    header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    interval_s: float = 0.0
    timeout_s: float = CHECK_TIMEOUT_DEFAULT_S
    ttl_s: float = 0.0
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    # DeregisterCriticalServiceAfter: 0 keeps a critical service registered.
    deregister_critical_service_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """A service the proxy reaches through a local listener."""

    destination_name: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ProxyDefinition:
    """The ``Proxy`` block of a ``connect-proxy`` service."""

    destination_service_name: str
    destination_service_id: str = ""
    local_service_address: str = ""
    local_service_port: int = 0
    upstreams: tuple[Upstream, ...] = ()


@dataclass(frozen=True, slots=True)
class SidecarDefinition:
    """``connect.sidecar_service``: the catalog expands it into a connect-proxy service."""

    port: int = 0  # 0: allocate from the sidecar range
    local_service_address: str = ""
    local_service_port: int = 0
    upstreams: tuple[Upstream, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """A validated service definition; `service_id` defaults to the name."""

    name: str
    service_id: str
    port: int = 0
    address: str = ""
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    kind: str = ""  # "" or "connect-proxy"
    weights_passing: int = 1
    weights_warning: int = 1
    checks: tuple[CheckDefinition, ...] = ()
    sidecar: SidecarDefinition | None = None
    proxy: ProxyDefinition | None = None
    # ``connect.native``: the service speaks mTLS itself (meshnode.connect), so it is
    # its own connect endpoint: dialled at its address and port, with no sidecar.
    connect_native: bool = False


# Snake-case spellings of fields that error messages may name before the user did.
_SNAKE = {
    "destinationname": "destination_name",
    "localbindport": "local_bind_port",
    "destinationservicename": "destination_service_name",
}


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


class _Fields:
    """A JSON object's fields looked up by normalized name; tracks what was consumed."""

    def __init__(
        self, data: object, where: str, allowed: Iterable[str], *, pascal: bool = False
    ) -> None:
        if not isinstance(data, dict):
            raise DefinitionError(
                f"{where or 'definition'} must be an object, not {_type_name(data)}"
            )
        self.where = where
        self.spelled: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        known = set(allowed)
        for key, value in data.items():
            norm = _norm(str(key))
            if norm not in known:
                raise DefinitionError(f"unknown field {self._path(str(key))!r}")
            if norm in self.values:
                raise DefinitionError(f"field {self._path(str(key))!r} is given twice")
            self.spelled[norm] = str(key)
            self.values[norm] = value
        # The document's style, for naming fields it left out: its own keys, else its parent's.
        self.pascal = any(str(k)[:1].isupper() for k in data) if data else pascal

    def sub(self, data: object, where: str, allowed: Iterable[str]) -> _Fields:
        """A nested object, named in this one's style when it has no keys to tell."""
        return _Fields(data, where, allowed, pascal=self.pascal)

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def name(self, norm: str) -> str:
        """The field as the user spelled it (else in the document's style), with its path."""
        spelled = self.spelled.get(norm)
        if spelled is None:
            snake = _SNAKE.get(norm, norm)
            spelled = "".join(p.capitalize() for p in snake.split("_")) if self.pascal else snake
        return self._path(spelled)

    def has(self, norm: str) -> bool:
        return self.values.get(norm) is not None

    def fail(self, norm: str, why: str) -> DefinitionError:
        return DefinitionError(f"field {self.name(norm)!r} {why}")

    def text(self, norm: str, default: str = "", max_chars: int = TEXT_MAX_CHARS) -> str:
        value = self.values.get(norm)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(norm, f"must be a string, not {_type_name(value)}")
        if len(value) > max_chars:
            raise self.fail(norm, f"is longer than {max_chars} characters")
        return value

    def integer(self, norm: str, low: int, high: int, default: int = 0) -> int:
        value = self.values.get(norm)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(norm, f"must be an integer, not {_type_name(value)}")
        if not low <= value <= high:
            raise self.fail(norm, f"must be in {low}..{high}, not {value}")
        return value

    def boolean(self, norm: str) -> bool:
        value = self.values.get(norm, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(norm, f"must be true or false, not {_type_name(value)}")
        return value

    def duration_s(self, norm: str, max_s: float = CHECK_DURATION_MAX_S) -> float:
        value = self.values.get(norm)
        if value is None:
            return 0.0
        if not isinstance(value, str):
            raise self.fail(
                norm, f'must be a duration string such as "10s", not {_type_name(value)}'
            )
        try:
            return parse_duration_s(value, max_s=max_s)
        except ValueError as exc:
            raise self.fail(norm, f"is not valid: {exc}") from None

    def items(self, norm: str, max_items: int) -> list[Any]:
        value = self.values.get(norm)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(norm, f"must be a list, not {_type_name(value)}")
        if len(value) > max_items:
            raise self.fail(norm, f"has {len(value)} items, at most {max_items} are allowed")
        return value


def validate_service_id(value: str, what: str = "ID") -> str:
    """IDs are store keys and URL segments: letters, digits and ``_.:-``, 1..128 characters."""
    if not value or len(value) > ID_MAX_CHARS or not _ID.match(value):
        raise DefinitionError(
            f"{what} {value[:60]!r} must be 1..{ID_MAX_CHARS} letters, digits or _.:-"
        )
    return value


validate_check_id = validate_service_id


def _service_name(f: _Fields, norm: str) -> str:
    if not f.has(norm):
        raise DefinitionError(f"missing field {f.name(norm)!r}")
    name = f.text(norm, max_chars=256)
    if len(name) > NAME_MAX_CHARS or not _NAME.match(name):
        raise f.fail(
            norm,
            f"is {name[:60]!r}: a service name must be 1..{NAME_MAX_CHARS} letters, digits"
            " or dashes, not starting or ending with a dash (it is a DNS label)",
        )
    return name


def _tags(f: _Fields) -> tuple[str, ...]:
    tags = f.items("tags", TAGS_MAX)
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag or len(tag) > TAG_MAX_CHARS:
            raise f.fail("tags", f"item {i} must be a string of 1..{TAG_MAX_CHARS} characters")
    return tuple(dict.fromkeys(tags))


def _meta(f: _Fields) -> dict[str, str]:
    raw = f.values.get("meta")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise f.fail("meta", f"must be an object, not {_type_name(raw)}")
    if len(raw) > META_MAX_PAIRS:
        raise f.fail("meta", f"has {len(raw)} keys, at most {META_MAX_PAIRS} are allowed")
    for key, value in raw.items():
        if len(key) > META_KEY_MAX_CHARS or not _META_KEY.match(key):
            raise f.fail(
                "meta",
                f"key {key[:60]!r} must be 1..{META_KEY_MAX_CHARS} letters, digits, _ or -",
            )
        if not isinstance(value, str) or len(value) > META_VALUE_MAX_CHARS:
            raise f.fail(
                "meta", f"value of {key!r} must be a string of at most {META_VALUE_MAX_CHARS}"
            )
    return dict(raw)


def _weights(f: _Fields) -> tuple[int, int]:
    if not f.has("weights"):
        return 1, 1
    w = f.sub(f.values["weights"], f.name("weights"), ("passing", "warning"))
    return w.integer("passing", 1, 65535, default=1), w.integer("warning", 0, 65535, default=1)


_UNSUPPORTED_CHECKS: tuple[str, ...] = (
    "args",
    "scriptargs",
    "dockercontainerid",
    "shell",
    "grpc",
    "grpcusetls",
    "h2ping",
    "aliasservice",
    "aliasnode",
)
_CHECK_FIELDS = (
    "id",
    "checkid",
    "name",
    "notes",
    "status",
    "tcp",
    "http",
    "ttl",
    "method",
    "header",
    "body",
    "tlsskipverify",
    "interval",
    "timeout",
    "successbeforepassing",
    "failuresbeforewarning",
    "failuresbeforecritical",
    "deregistercriticalserviceafter",
    "serviceid",
    *_UNSUPPORTED_CHECKS,
)


def _header(f: _Fields) -> dict[str, tuple[str, ...]]:
    raw = f.values.get("header")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > HEADERS_MAX:
        raise f.fail("header", f"must be an object of at most {HEADERS_MAX} names")
    header: dict[str, tuple[str, ...]] = {}
    for name, values in raw.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise f.fail("header", f"value of {name!r} must be a list of strings")
        header[name] = tuple(values)
    return header


def _check(f: _Fields, *, standalone: bool = False) -> CheckDefinition:
    """A check of a service definition, or (`standalone`) of /v1/agent/check/register."""
    where = f.where or "check"
    for norm in _UNSUPPORTED_CHECKS:
        if f.has(norm):
            raise f.fail(norm, "is not supported: meshnode runs only tcp, http and ttl checks")
    if f.has("serviceid") and not standalone:
        raise f.fail("serviceid", "is not allowed in a service's check (it is that service)")
    deregister_after_s = f.duration_s("deregistercriticalserviceafter", DEREGISTER_AFTER_MAX_S)
    given = [k for k in ("tcp", "http", "ttl") if f.has(k)]
    if len(given) != 1:
        what = "none" if not given else " and ".join(f.name(k) for k in given)
        raise DefinitionError(f"{where} must have exactly one of tcp, http or ttl, not {what}")
    kind: CheckType = given[0]  # type: ignore[assignment]
    if f.has("id") and f.has("checkid"):
        raise DefinitionError(f"{where} has both {f.name('id')!r} and {f.name('checkid')!r}")
    id_key = "checkid" if f.has("checkid") else "id"
    check_id = f.text(id_key, max_chars=ID_MAX_CHARS)
    if check_id:
        try:
            validate_check_id(check_id, f"field {f.name(id_key)!r}:")
        except DefinitionError as exc:
            raise DefinitionError(str(exc)) from None
    status = f.text("status")
    if status and status not in INITIAL_STATUSES:
        raise f.fail("status", f"must be one of {', '.join(INITIAL_STATUSES)}, not {status!r}")
    interval_s = f.duration_s("interval")
    if kind != "ttl" and interval_s <= 0:
        raise DefinitionError(f'{where} is a {kind} check and needs an interval such as "10s"')
    ttl_s = f.duration_s("ttl") if kind == "ttl" else 0.0
    if kind == "ttl" and ttl_s <= 0:
        raise f.fail("ttl", 'must be a positive duration such as "30s"')
    timeout_s = f.duration_s("timeout") or CHECK_TIMEOUT_DEFAULT_S
    target = f.text(kind) if kind != "ttl" else ""
    if kind == "http" and not target.startswith(("http://", "https://")):
        raise f.fail("http", "must be an http:// or https:// URL")
    if kind == "tcp" and (":" not in target or target.startswith(":")):
        raise f.fail("tcp", "must be HOST:PORT")
    method = f.text("method", "GET", max_chars=16).upper() or "GET"
    if not method.isalpha():
        raise f.fail("method", f"must be an HTTP method, not {method!r}")
    return CheckDefinition(
        kind=kind,
        check_id=check_id,
        name=f.text("name", max_chars=256),
        notes=f.text("notes"),
        status=status,
        tcp=target if kind == "tcp" else "",
        http=target if kind == "http" else "",
        method=method,
        header=_header(f),
        body=f.text("body"),
        tls_skip_verify=f.boolean("tlsskipverify"),
        interval_s=max(interval_s, CHECK_INTERVAL_MIN_S) if kind != "ttl" else 0.0,
        timeout_s=timeout_s,
        ttl_s=ttl_s,
        success_before_passing=f.integer("successbeforepassing", 0, 1000),
        failures_before_warning=f.integer("failuresbeforewarning", 0, 1000),
        failures_before_critical=f.integer("failuresbeforecritical", 0, 1000),
        deregister_critical_service_after_s=deregister_after_s,
    )


def parse_check_registration(data: object) -> tuple[CheckDefinition, str]:
    """A /v1/agent/check/register body: the check (ID defaulting to its name) and its ServiceID.

    Consul's rules: ``Name`` is required; a check with no ``ServiceID`` is a
    node check, which has no service to deregister, so it may not carry
    ``DeregisterCriticalServiceAfter``.
    """
    f = _Fields(data, "", _CHECK_FIELDS)
    if not f.has("name"):
        raise DefinitionError(f"missing field {f.name('name')!r}")
    check = _check(f, standalone=True)
    service_id = f.text("serviceid", max_chars=ID_MAX_CHARS)
    if service_id:
        validate_service_id(service_id, f"field {f.name('serviceid')!r}:")
    elif check.deregister_critical_service_after_s > 0:
        raise f.fail(
            "deregistercriticalserviceafter", "needs a ServiceID: a node check has no service"
        )
    if not check.check_id:
        try:
            check_id = validate_check_id(check.name, "the check has no ID and its name")
        except DefinitionError as exc:
            raise DefinitionError(f"{exc}; give the check an ID") from None
        check = replace(check, check_id=check_id)
    return check, service_id


def _checks(f: _Fields) -> tuple[CheckDefinition, ...]:
    checks: list[CheckDefinition] = []
    if f.has("check"):
        checks.append(_check(f.sub(f.values["check"], f.name("check"), _CHECK_FIELDS)))
    for i, item in enumerate(f.items("checks", CHECKS_MAX)):
        checks.append(_check(f.sub(item, f"{f.name('checks')}[{i}]", _CHECK_FIELDS)))
    if len(checks) > CHECKS_MAX:
        raise DefinitionError(f"a service may have at most {CHECKS_MAX} checks")
    ids = [c.check_id for c in checks if c.check_id]
    if len(ids) != len(set(ids)):
        raise DefinitionError(f"check IDs of one service must differ: {sorted(ids)}")
    return tuple(checks)


def _upstreams(f: _Fields) -> tuple[Upstream, ...]:
    upstreams: list[Upstream] = []
    for i, item in enumerate(f.items("upstreams", UPSTREAMS_MAX)):
        u = f.sub(
            item,
            f"{f.name('upstreams')}[{i}]",
            ("destinationname", "localbindport", "localbindaddress", "destinationtype"),
        )
        if u.text("destinationtype", "service") != "service":
            raise u.fail(
                "destinationtype", 'must be "service" (prepared queries are not supported)'
            )
        upstreams.append(
            Upstream(
                destination_name=_service_name(u, "destinationname"),
                local_bind_port=_required_port(u, "localbindport"),
                local_bind_address=u.text("localbindaddress", "127.0.0.1", 255) or "127.0.0.1",
            )
        )
    binds = [(u.local_bind_address, u.local_bind_port) for u in upstreams]
    if len(binds) != len(set(binds)):
        raise f.fail("upstreams", "binds two upstreams to the same address and port")
    return tuple(upstreams)


def _required_port(f: _Fields, norm: str) -> int:
    if not f.has(norm):
        raise DefinitionError(f"missing field {f.name(norm)!r}")
    return f.integer(norm, 1, 65535)


def _proxy(service: _Fields) -> ProxyDefinition:
    f = service.sub(
        service.values["proxy"],
        service.name("proxy"),
        (
            "destinationservicename",
            "destinationserviceid",
            "localserviceaddress",
            "localserviceport",
            "upstreams",
        ),
    )
    destination_id = f.text("destinationserviceid", max_chars=ID_MAX_CHARS)
    if destination_id:
        validate_service_id(destination_id, f"field {f.name('destinationserviceid')!r}:")
    return ProxyDefinition(
        destination_service_name=_service_name(f, "destinationservicename"),
        destination_service_id=destination_id,
        local_service_address=f.text("localserviceaddress", max_chars=255),
        local_service_port=f.integer("localserviceport", 0, 65535),
        upstreams=_upstreams(f),
    )


def _connect(f: _Fields) -> tuple[SidecarDefinition | None, bool]:
    """``connect``: (the sidecar to expand, whether the service is native)."""
    if not f.has("connect"):
        return None, False
    connect = f.sub(f.values["connect"], f.name("connect"), ("sidecarservice", "native"))
    native = connect.boolean("native")
    if native and connect.has("sidecarservice"):
        # A native service is its own endpoint: a sidecar would be a second one (Consul too).
        raise connect.fail("native", "cannot be combined with a sidecar_service")
    if not connect.has("sidecarservice"):
        return None, native
    return _sidecar(connect), False


def _sidecar(connect: _Fields) -> SidecarDefinition:
    side = connect.sub(
        connect.values["sidecarservice"], connect.name("sidecarservice"), ("port", "proxy")
    )
    proxy = side.sub(
        side.values.get("proxy") or {},
        side.name("proxy"),
        ("localserviceaddress", "localserviceport", "upstreams"),
    )
    return SidecarDefinition(
        port=side.integer("port", 1, 65535),
        local_service_address=proxy.text("localserviceaddress", max_chars=255),
        local_service_port=proxy.integer("localserviceport", 0, 65535),
        upstreams=_upstreams(proxy),
    )


_SERVICE_FIELDS = (
    "name",
    "id",
    "port",
    "address",
    "tags",
    "meta",
    "kind",
    "weights",
    "enabletagoverride",
    "check",
    "checks",
    "connect",
    "proxy",
)


def parse_service(data: object, where: str = "") -> ServiceDefinition:
    """One service definition (any spelling); `DefinitionError` naming the field."""
    f = _Fields(data, where, _SERVICE_FIELDS)
    name = _service_name(f, "name")
    service_id = f.text("id", max_chars=ID_MAX_CHARS) or name
    validate_service_id(service_id, f"field {f.name('id')!r}:")
    f.boolean("enabletagoverride")  # accepted for Consul's sake; nothing overrides tags here
    kind = f.text("kind", max_chars=64)
    if kind not in ("", "connect-proxy"):
        raise f.fail("kind", f'must be "connect-proxy" or absent, not {kind!r}')
    proxy = _proxy(f) if f.has("proxy") else None
    if kind == "connect-proxy" and proxy is None:
        raise DefinitionError(f"a connect-proxy needs a {f.name('proxy')!r} with its destination")
    if proxy is not None and kind != "connect-proxy":
        raise f.fail("proxy", 'is only for a service of kind "connect-proxy"')
    sidecar, native = _connect(f)
    if (sidecar is not None or native) and kind:
        raise f.fail("connect", "cannot give a proxy its own sidecar or make it native")
    address = f.text("address", max_chars=255)
    if any(c.isspace() for c in address):
        raise f.fail("address", "must not contain spaces")
    passing, warning = _weights(f)
    return ServiceDefinition(
        name=name,
        service_id=service_id,
        port=f.integer("port", 0, 65535),
        address=address,
        tags=_tags(f),
        meta=_meta(f),
        kind=kind,
        weights_passing=passing,
        weights_warning=warning,
        checks=_checks(f),
        sidecar=sidecar,
        proxy=proxy,
        connect_native=native,
    )


def parse_file_definitions(data: object, where: str = "") -> list[ServiceDefinition]:
    """A definition file's content: ``{"service": {...}}`` or ``{"services": [...]}``."""
    if not isinstance(data, dict) or not data:
        raise DefinitionError(f'{where or "file"}: expected an object with "service" or "services"')
    found: list[ServiceDefinition] = []
    for key, value in data.items():
        if key == "service":
            found.append(parse_service(value, key))
        elif key == "services" and isinstance(value, list):
            found += [parse_service(v, f"services[{i}]") for i, v in enumerate(value)]
        elif key == "services":
            raise DefinitionError(f"field 'services' must be a list, not {_type_name(value)}")
        else:
            raise DefinitionError(f'unknown field {key!r}: expected "service" or "services"')
    return found


def parse_config_services(pairs: Iterable[tuple[str, object]]) -> list[ServiceDefinition]:
    """`AgentConfig.services` ((where, dict) pairs) parsed; errors say which file and field."""
    found: list[ServiceDefinition] = []
    for where, data in pairs:
        try:
            found.append(parse_service(data))
        except DefinitionError as exc:
            raise DefinitionError(f"{where}: {exc}") from None
    ids = [d.service_id for d in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DefinitionError(f"service ID {duplicates[0]!r} is defined twice in the config")
    return found
