"""The agent's configuration: `AgentConfig` and `load_config` (files + CLI flags).

Config files are JSON with Consul's snake_case names; later files override
earlier ones, and CLI flags override files (lists such as ``start_join`` are
concatenated, ``node_meta`` maps merged, as Consul does). Every problem is a
`ConfigError` whose message is one line naming the file or flag and the field.
"""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .addr import AddressError, format_host_port, parse_host_port, parse_ip
from .agent.keys import KeyFormatError, decode_key
from .ca.anchor import normalize_fingerprint
from .dns.config import DnsConfig
from .dns.errors import DnsConfigError
from .durations import GO_DURATION_MAX_S, DurationError, DurationRangeError
from .durations import parse_duration_s as _grammar_s
from .logs import LEVELS, level_number

__all__ = [
    "DEFAULT_GOSSIP_PORT",
    "DEFAULT_HTTP_PORT",
    "AgentConfig",
    "ConfigError",
    "ConfigOrigin",
    "default_node_name",
    "load_config",
    "parse_duration_s",
    "reload_config",
    "validate_node_name",
]

# memberlist's and serf's default port: familiar, and free of Consul's 8301
# so that both can run side by side (the benchmark does).
DEFAULT_GOSSIP_PORT = 7946
# Consul's HTTP port, so Consul tooling finds a local agent without flags.
DEFAULT_HTTP_PORT = 8500
# The whole replica lives in memory on every agent: more KV than 4 GiB is a mistake.
KV_MAX_MIB_LIMIT = 4096

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_CLUSTER_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# One DNS label (63 bytes at most): DNS names it, `web.service.<dc>.mesh`.
_DATACENTER = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_META_VALUE_MAX_CHARS = 512  # Consul's node_meta value limit
_META_MAX_PAIRS = 64  # Consul's node_meta pair limit


class ConfigError(Exception):
    """The configuration is unusable; the message is one line for the user."""


def validate_node_name(name: str) -> str:
    """`name` if it is 1-128 letters, digits, '-', '_' or '.'; `ValueError` otherwise."""
    if not _NAME.match(name):
        raise ValueError(
            f"{name!r} is not a valid node name (1-128 letters, digits, '-', '_', '.')"
        )
    return name


def default_node_name() -> str:
    """The host name, made into a valid node name (Consul's default)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:128].strip("-.")
    return cleaned or "meshnode"


@dataclass(frozen=True, slots=True)
class ConfigOrigin:
    """The flags, files and directories a config was built from, to build it again."""

    flags: tuple[tuple[str, Any], ...] = ()
    files: tuple[Path, ...] = ()
    dirs: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    # Named after the host by default: unique on most networks with no setup.
    node_name: str = field(default_factory=default_node_name)
    # Gossip (UDP + TCP) on every interface, memberlist's port, so peers on
    # any network of this host can reach it; --dev narrows it to loopback.
    bind: tuple[str, int] = ("0.0.0.0", DEFAULT_GOSSIP_PORT)
    # The address peers should use, when the bind address is not one (NAT,
    # 0.0.0.0). None: the agent picks from the bind address.
    advertise: tuple[str, int] | None = None
    # The HTTP API is on loopback by default: it can make the node leave and
    # rotate keys, so exposing it is a deliberate choice.
    http: tuple[str, int] = ("127.0.0.1", DEFAULT_HTTP_PORT)
    # Node id, keyring and known peers live here (SQLite). None only with
    # dev=True: the agent then uses a temporary directory it deletes at exit.
    data_dir: Path | None = None
    # Peers to join at start (the agent fails to start if none answers).
    join: tuple[str, ...] = ()
    # Peers to join at start, retried until one answers (Consul's retry_join).
    retry_join: tuple[str, ...] = ()
    # Consul's retry_interval: often enough to form a cluster quickly after a
    # mass restart, rarely enough to be invisible in the logs of a lone node.
    retry_join_interval_s: float = 30.0
    # Base64 32-byte gossip key (AES-256-GCM). None is only allowed with dev,
    # or when the data dir already holds a keyring (a restart).
    encrypt_key: str | None = None
    # Gossip cluster label (memberlist's, gossip.cluster_label): carried in every
    # gossip packet and stream frame, authenticated with the key; traffic with
    # another label is dropped, so two clusters sharing a key never merge.
    # "" sends no label (and accepts only unlabelled traffic).
    cluster_label: str = ""
    # Development mode: loopback, temporary data dir, plain-text gossip allowed.
    dev: bool = False
    # "debug" | "info" | "warning" | "error"; info shows joins, failures and leaves.
    log_level: str = "info"
    # Node metadata gossiped with membership (Consul's node_meta).
    tags: dict[str, str] = field(default_factory=dict)
    # Consul's default datacenter name; meshnode has one gossip pool per dc.
    datacenter: str = "dc1"
    # Service definitions from config files, in Consul's snake_case shape, each
    # with the file it came from (for error messages). The catalog validates them.
    services: tuple[tuple[str, dict[str, Any]], ...] = ()
    # When set, HTTP writes need this token in X-Consul-Token (Consul's
    # acl.tokens.agent); None leaves the loopback-bound API open, like Consul's dev agent.
    api_token: str | None = None
    # Run for every user event this agent receives (serf's -event-handler).
    event_handlers: tuple[str, ...] = ()
    # DNS interface (Consul's addresses.dns, ports.dns, domain, recursors,
    # dns_config); None when disabled with ports.dns = -1 or --dns-port -1.
    dns: DnsConfig | None = field(default_factory=DnsConfig)
    # dns_config.service_ttl entries other than "*": lowercased service name -> TTL.
    dns_service_ttls: dict[str, int] = field(default_factory=dict)
    # Signer-eligible (--signer, connect.ca_signer): may hold the root key and
    # be elected to sign leaves. Off by default: the root key should live on a
    # few chosen hosts, not on every node. --dev turns it on.
    ca_signer: bool = False
    # A secret the operator gives to signer hosts only (--signer-token,
    # connect.signer_token): an approved signer holding it approves signer
    # requests that prove it. None: approvals come from `meshnode ca signers
    # approve` alone. The gossip key is not enough to become a signer.
    ca_signer_token: str | None = field(default=None, repr=False)
    # The cluster's root CA fingerprint (--ca-root-fingerprint,
    # connect.ca_root_fingerprint; SHA-256, colon-hex): trust it and roots
    # cross-signed from it, not what the store shows on first use. None:
    # trust on first use, then the pin in <data-dir>/ca/anchor.pin.
    ca_root_fingerprint: str | None = None
    # Cluster-wide CA settings written by the node that bootstraps the CA
    # (connect.ca_config); later changes go through /v1/connect/ca/configuration.
    # Consul's defaults: 3 signers survive two failures, 50 CSRs/s per signer,
    # 72 h leaves.
    ca_signers: int = 3
    csr_max_per_second: float = 50.0
    leaf_cert_ttl_s: int = 72 * 3600
    # Leaves re-issue at a random point of this window after a root rotation
    # (DESIGN.md: 30 s), so a rotation does not bring every CSR at once.
    ca_reissue_jitter_s: float = 30.0
    # Deletes are kept as tombstones this long (wall clock), so a member away
    # for less still learns of them; one away longer may bring a deleted key
    # back. Use the same value on every agent, longer than any outage you
    # expect to heal by itself.
    tombstone_ttl_s: float = 72 * 3600.0
    # KV's own room in the replicated store (values, keys and tombstones). The
    # catalog, intentions and the CA have theirs apart, so a full KV never
    # blocks them. Use the same value on every agent: a member with less
    # drops the KV entries it has no room for.
    kv_max_mib: int = 128
    # Every intention decision (sidecar connections, cuts, authorize answers)
    # is kept in memory for /v1/agent/connect/audit; with a path, also
    # appended there as JSON lines. None: memory only.
    audit_log: Path | None = None
    # HTTP connections per client IP address (Consul's
    # limits.http_max_conns_per_client and its default): below the 512 the
    # API serves at once, so one client cannot lock the others out.
    http_max_conns_per_client: int = 200
    # Where this config came from: `meshnode reload` and SIGHUP read it again.
    origin: ConfigOrigin | None = field(default=None, compare=False)


def _number_or_duration_s(value: object) -> float:
    """A duration value of a config file or flag: Go's syntax, or a JSON number of seconds.

    The grammar is `meshnode.durations`; a number (not a bool) counts as
    seconds, as config files have always allowed. NaN, infinities and numbers
    past Go's range are refused: no timer can use them.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > GO_DURATION_MAX_S:
            raise ValueError(f"{value!r} is not a duration within {GO_DURATION_MAX_S:g} s")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not a duration such as "30s", "1m" or "500ms"')
    try:
        return _grammar_s(value)
    except DurationRangeError:
        raise
    except DurationError:
        raise ValueError(f'{value!r} is not a duration such as "30s", "1m" or "500ms"') from None


def _duration_or_zero_s(value: object) -> float:
    seconds = _number_or_duration_s(value)
    if seconds < 0:
        raise ValueError(f"{value!r} must not be negative")
    return seconds


def _parse_duration_s(value: object) -> float:
    seconds = _number_or_duration_s(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be a positive duration")
    return seconds


def parse_duration_s(value: object) -> float:
    """A positive duration value (``30s``, ``1m``, ``72h``, a number of seconds); `ValueError` else.

    The config's policy over `meshnode.durations`, also used by the CA API.
    """
    return _parse_duration_s(value)


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


def _check_meta(meta: Mapping[str, str]) -> None:
    if len(meta) > _META_MAX_PAIRS:
        raise ValueError(f"at most {_META_MAX_PAIRS} tags are allowed, got {len(meta)}")
    for key, value in meta.items():
        if not _META_KEY.match(key):
            raise ValueError(f"tag key {key!r} must be 1-128 letters, digits, '-' or '_'")
        if len(value) > _META_VALUE_MAX_CHARS:
            raise ValueError(f"tag {key!r} is longer than {_META_VALUE_MAX_CHARS} characters")


class _Builder:
    """Accumulates settings from files, then flags; `build` validates the whole."""

    def __init__(self) -> None:
        self.node_name: str | None = None
        self.bind_host: str | None = None
        self.bind_port: int | None = None
        self.advertise_host: str | None = None
        self.advertise_port: int | None = None
        self.http_host: str | None = None
        self.http_port: int | None = None
        self.data_dir: Path | None = None
        self.join: list[str] = []
        self.retry_join: list[str] = []
        self.retry_join_interval_s: float | None = None
        self.encrypt_key: str | None = None
        self.cluster_label: str | None = None
        self.dev = False
        self.log_level: str | None = None
        self.tags: dict[str, str] = {}
        self.datacenter: str | None = None
        self.services: list[tuple[str, dict[str, Any]]] = []
        self.api_token: str | None = None
        self.event_handlers: list[str] = []
        self.dns: dict[str, Any] = {}  # DnsConfig keyword arguments
        self.dns_disabled = False
        self.dns_service_ttls: dict[str, int] = {}
        self.ca: dict[str, Any] = {}  # AgentConfig's CA fields by name
        self.tombstone_ttl_s: float | None = None
        self.kv_max_mib: int | None = None
        self.audit_log: Path | None = None
        self.http_max_conns_per_client: int | None = None


# -- value checkers shared by files and flags; each raises ValueError with a reason --


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer port, not {_type_name(value)}")
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is out of range (0-65535)")
    return value


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, not {_type_name(value)}")
    return list(value)


def _join_addr(value: str) -> str:
    host, port = parse_host_port(value, default_port=DEFAULT_GOSSIP_PORT, require_ip=False)
    return format_host_port(host, port)


def _log_level(value: str) -> str:
    number = level_number(value)
    return next(name for name, n in LEVELS.items() if n == number)


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else f"a {type(value).__name__}"
    )


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object, not {_type_name(value)}")
    return value


# -- config files ------------------------------------------------------------


def _apply_file_key(b: _Builder, key: str, value: Any, where: Callable[[str], str]) -> None:
    """Apply one top-level key of a config file; errors name `where(field)`."""

    def fail(name: str, reason: object) -> ConfigError:
        return ConfigError(f"{where(name)}: {reason}")

    try:
        if key == "node_name":
            b.node_name = validate_node_name(_str(value))
        elif key == "bind_addr":
            b.bind_host = parse_ip(_str(value))
        elif key == "advertise_addr":
            b.advertise_host = parse_ip(_str(value))
        elif key == "data_dir":
            b.data_dir = Path(_str(value))
        elif key == "start_join":
            b.join += [_join_addr(v) for v in _str_list(value)]
        elif key == "retry_join":
            b.retry_join += [_join_addr(v) for v in _str_list(value)]
        elif key == "retry_interval":
            b.retry_join_interval_s = _parse_duration_s(value)
        elif key == "encrypt":
            decode_key(_str(value))
            b.encrypt_key = _str(value).strip()
        elif key == "datacenter":
            b.datacenter = _datacenter(_str(value))
        elif key == "log_level":
            b.log_level = _log_level(_str(value))
        elif key == "node_meta":
            meta = {k: _str(v) for k, v in _object(value).items()}
            _check_meta({**b.tags, **meta})
            b.tags.update(meta)
        elif key in ("addresses", "ports"):
            _apply_nested(b, key, _object(value), fail)
        elif key == "service":
            b.services.append((where(key), _object(value)))
        elif key == "services":
            if not isinstance(value, list):
                raise ValueError(f"must be a list of service objects, not {_type_name(value)}")
            b.services += [(where(f"{key}[{i}]"), _object(v)) for i, v in enumerate(value)]
        elif key == "acl":
            _apply_acl(b, _object(value), fail)
        elif key == "event_handlers":
            b.event_handlers += [_handler(v) for v in _str_list(value)]
        elif key in ("domain", "alt_domain"):
            b.dns[key] = _str(value)
        elif key == "recursors":
            b.dns["recursors"] = tuple(_str_list(value))
        elif key == "dns_config":
            _apply_dns_config(b, _object(value), fail)
        elif key == "connect":
            _apply_connect(b, _object(value), fail)
        elif key == "tombstone_ttl":
            b.tombstone_ttl_s = _tombstone_ttl_s(value)
        elif key == "kv_max_mib":
            b.kv_max_mib = _positive_int(value, KV_MAX_MIB_LIMIT)
        elif key == "audit_log":
            b.audit_log = Path(_str(value))
        elif key == "limits":
            _apply_limits(b, _object(value), fail)
        elif key == "gossip":
            _apply_gossip(b, _object(value), fail)
        else:
            raise fail(key, "unknown field")
    except (ValueError, AddressError, KeyFormatError) as exc:
        raise fail(key, exc) from None


def _apply_nested(
    b: _Builder, key: str, obj: dict[str, Any], fail: Callable[[str, object], ConfigError]
) -> None:
    for sub, value in obj.items():
        name = f"{key}.{sub}"
        try:
            if key == "addresses" and sub == "http":
                b.http_host = parse_ip(_str(value))
            elif key == "ports" and sub == "serf_lan":
                b.bind_port = _port(value)
            elif key == "ports" and sub == "http":
                b.http_port = _port(value)
            elif key == "addresses" and sub == "dns":
                b.dns["host"] = parse_ip(_str(value))
            elif key == "ports" and sub == "dns":
                _dns_port(b, value)
            else:
                raise fail(name, "unknown field")
        except (ValueError, AddressError) as exc:
            raise fail(name, exc) from None


def _only_field(
    section: str,
    only: str,
    obj: dict[str, Any],
    fail: Callable[[str, object], ConfigError],
    parse: Callable[[object], Any],
) -> Any:
    """The parsed value of `section.only`, the one field that section has; None if absent."""
    parsed: Any = None
    for sub, value in obj.items():
        name = f"{section}.{sub}"
        if sub != only:
            raise fail(name, f"unknown field (only {section}.{only} is supported)")
        try:
            parsed = parse(value)
        except ValueError as exc:
            raise fail(name, exc) from None
    return parsed


def _apply_limits(
    b: _Builder, obj: dict[str, Any], fail: Callable[[str, object], ConfigError]
) -> None:
    """``limits``: only ``http_max_conns_per_client`` (Consul's name) is understood."""
    value = _only_field(
        "limits", "http_max_conns_per_client", obj, fail, lambda v: _positive_int(v, 100_000)
    )
    if value is not None:
        b.http_max_conns_per_client = value


def _apply_gossip(
    b: _Builder, obj: dict[str, Any], fail: Callable[[str, object], ConfigError]
) -> None:
    """``gossip``: only ``cluster_label`` is understood."""
    value = _only_field("gossip", "cluster_label", obj, fail, lambda v: _cluster_label(_str(v)))
    if value is not None:
        b.cluster_label = value


def _cluster_label(value: str) -> str:
    if not _CLUSTER_LABEL.match(value):
        raise ValueError(
            f"{value[:80]!r} is not a cluster label (1-128 letters, digits, '-', '_', '.')"
        )
    return value


def _apply_acl(
    b: _Builder, obj: dict[str, Any], fail: Callable[[str, object], ConfigError]
) -> None:
    """Only `acl.tokens.agent` (Consul's name) is understood: the token HTTP writes need."""
    for sub, value in obj.items():
        if sub != "tokens":
            raise fail(f"acl.{sub}", "unknown field (only acl.tokens.agent is supported)")
        for name, token in _object(value).items():
            if name != "agent":
                raise fail(f"acl.tokens.{name}", "unknown field (only agent is supported)")
            b.api_token = _token(_str(token))


def _dns_port(b: _Builder, value: object) -> None:
    """Consul's ports.dns; -1 turns the DNS interface off."""
    if value == -1:
        b.dns_disabled = True
    else:
        b.dns["port"] = _port(value)
        b.dns_disabled = False


_DNS_CONFIG_KEYS = {
    "only_passing": ("only_passing", bool),
    "enable_truncate": ("enable_truncate", bool),
    "node_ttl": ("node_ttl_s", "duration"),
    "service_ttl": ("service_ttl_s", "ttl_map"),
    "recursor_timeout": ("recursor_timeout_s", "duration"),
}


def _apply_dns_config(
    b: _Builder, obj: dict[str, Any], fail: Callable[[str, object], ConfigError]
) -> None:
    for sub, value in obj.items():
        name = f"dns_config.{sub}"
        if sub not in _DNS_CONFIG_KEYS:
            raise fail(name, "unknown field")
        target, kind = _DNS_CONFIG_KEYS[sub]
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"must be true or false, not {_type_name(value)}")
                b.dns[target] = value
            elif kind == "duration":
                seconds = _duration_or_zero_s(value)
                b.dns[target] = seconds if target == "recursor_timeout_s" else int(seconds)
            else:
                # Consul's map of service name -> TTL; "*" is every other service.
                for service, raw in _object(value).items():
                    ttl_s = int(_duration_or_zero_s(raw))
                    if service == "*":
                        b.dns[target] = ttl_s
                    else:
                        b.dns_service_ttls[service.lower()] = ttl_s
        except ValueError as exc:
            raise fail(name, exc) from None


def _positive_int(value: object, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ValueError(f"must be an integer in 1..{limit}, not {value!r}")
    return value


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1e6:
        raise ValueError(f"must be a number in (0, 1000000], not {value!r}")
    return float(value)


def _leaf_ttl_s(value: object) -> int:
    seconds = int(_parse_duration_s(value))
    if not 60 <= seconds <= 10 * 365 * 86400:
        raise ValueError(f"{value!r} must be between 1m and 10 years")
    return seconds


def _tombstone_ttl_s(value: object) -> float:
    seconds = _parse_duration_s(value)
    if not 60 <= seconds <= 10 * 365 * 86400:
        raise ValueError(f"{value!r} must be between 1m and 10 years")
    return seconds


def _jitter_s(value: object) -> float:
    return _duration_or_zero_s(value)


# connect.ca_config keys (Consul's names) -> (AgentConfig field, checker).
_CA_CONFIG_KEYS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "leaf_cert_ttl": ("leaf_cert_ttl_s", _leaf_ttl_s),
    "csr_max_per_second": ("csr_max_per_second", _positive_number),
    "ca_signers": ("ca_signers", lambda v: _positive_int(v, 64)),
}


def _apply_connect(
    b: _Builder, obj: dict[str, Any], fail: Callable[[str, object], ConfigError]
) -> None:
    """``connect``: ``ca_signer``, ``signer_token``, ``ca_root_fingerprint``, ``ca_config``,
    ``leaf_reissue_jitter``."""
    for sub, value in obj.items():
        name = f"connect.{sub}"
        try:
            if sub == "ca_signer":
                if not isinstance(value, bool):
                    raise ValueError(f"must be true or false, not {_type_name(value)}")
                b.ca["ca_signer"] = value
            elif sub == "signer_token":
                b.ca["ca_signer_token"] = _token(_str(value))
            elif sub == "ca_root_fingerprint":
                b.ca["ca_root_fingerprint"] = normalize_fingerprint(_str(value))
            elif sub == "leaf_reissue_jitter":
                b.ca["ca_reissue_jitter_s"] = _jitter_s(value)
            elif sub == "ca_config":
                for key, raw in _object(value).items():
                    if key not in _CA_CONFIG_KEYS:
                        raise fail(f"{name}.{key}", "unknown field")
                    target, check = _CA_CONFIG_KEYS[key]
                    try:
                        b.ca[target] = check(raw)
                    except ValueError as exc:
                        raise fail(f"{name}.{key}", exc) from None
            else:
                raise fail(name, "unknown field")
        except ValueError as exc:
            raise fail(name, exc) from None


def _token(value: str) -> str:
    if not value or len(value) > 256 or not value.isprintable() or value.strip() != value:
        raise ValueError("a token must be 1-256 printable characters without surrounding spaces")
    return value


def _handler(value: str) -> str:
    if not value.strip():
        raise ValueError("an event handler must be a non-empty shell command")
    return value


def _config_dir_files(path: Path) -> list[Path]:
    """Consul's -config-dir: every *.json file in the directory, in name order."""
    try:
        return sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
    except FileNotFoundError:
        raise ConfigError(f"config dir {path}: no such directory") from None
    except NotADirectoryError:
        raise ConfigError(f"config dir {path}: not a directory") from None
    except OSError as exc:
        raise ConfigError(f"config dir {path}: cannot read: {exc.strerror or exc}") from None


def _datacenter(value: str) -> str:
    if not _DATACENTER.match(value):
        raise ValueError(f"{value!r} must be 1-63 letters, digits, '-' or '_'")
    return value.lower()


def _read_file(b: _Builder, path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"config file {path}: cannot read: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a JSON object, not {_type_name(data)}")
    for key, value in data.items():
        _apply_file_key(b, key, value, lambda name: f"config file {path}: field {name!r}")


# -- CLI flags ---------------------------------------------------------------


def _apply_flags(b: _Builder, flags: Mapping[str, Any]) -> None:
    """Apply CLI values (None or empty means "not given"); errors name the flag."""
    for name, value in flags.items():
        if value is None or value == () or value == []:
            continue
        flag = "--" + name.replace("_", "-")
        try:
            _apply_flag(b, name, value)
        except (ValueError, AddressError, KeyFormatError) as exc:
            raise ConfigError(f"{flag}: {exc}") from None


def _apply_flag(b: _Builder, name: str, value: Any) -> None:
    if name == "node":
        b.node_name = validate_node_name(value)
    elif name == "bind":
        b.bind_host, port = parse_host_port(value, default_port=-1)
        if port >= 0:
            b.bind_port = port
    elif name == "advertise":
        b.advertise_host, port = parse_host_port(value, default_port=-1)
        b.advertise_port = port if port >= 0 else None
    elif name == "http_addr":
        b.http_host, b.http_port = parse_host_port(value, default_port=DEFAULT_HTTP_PORT)
    elif name == "data_dir":
        b.data_dir = Path(value)
    elif name == "join":
        b.join += [_join_addr(v) for v in value]
    elif name == "retry_join":
        b.retry_join += [_join_addr(v) for v in value]
    elif name == "retry_interval":
        b.retry_join_interval_s = _parse_duration_s(value)
    elif name == "encrypt":
        decode_key(value)
        b.encrypt_key = value.strip()
    elif name == "cluster_label":
        b.cluster_label = _cluster_label(value)
    elif name == "dev":
        b.dev = bool(value)
    elif name == "log_level":
        b.log_level = _log_level(value)
    elif name == "datacenter":
        b.datacenter = _datacenter(value)
    elif name == "tag":
        tags = dict(_parse_tag(t) for t in value)
        _check_meta({**b.tags, **tags})
        b.tags.update(tags)
    elif name == "api_token":
        b.api_token = _token(value)
    elif name == "event_handler":
        b.event_handlers += [_handler(v) for v in value]
    elif name == "dns_addr":
        b.dns["host"], port = parse_host_port(value, default_port=-1)
        if port >= 0:
            b.dns["port"] = port
            b.dns_disabled = False
    elif name == "dns_port":
        _dns_port(b, int(value))
    elif name in ("domain", "alt_domain"):
        b.dns[name] = value
    elif name == "recursor":
        b.dns["recursors"] = tuple(b.dns.get("recursors", ())) + tuple(value)
    elif name == "signer":
        b.ca["ca_signer"] = bool(value)
    elif name == "signer_token":
        b.ca["ca_signer_token"] = _token(value)
    elif name == "ca_root_fingerprint":
        b.ca["ca_root_fingerprint"] = normalize_fingerprint(value)
    elif name == "ca_signers":
        b.ca["ca_signers"] = _positive_int(value, 64)
    elif name == "csr_max_per_second":
        b.ca["csr_max_per_second"] = _positive_number(value)
    elif name == "leaf_cert_ttl":
        b.ca["leaf_cert_ttl_s"] = _leaf_ttl_s(value)
    elif name == "ca_reissue_jitter":
        b.ca["ca_reissue_jitter_s"] = _jitter_s(value)
    elif name == "tombstone_ttl":
        b.tombstone_ttl_s = _tombstone_ttl_s(value)
    elif name == "kv_max_mib":
        b.kv_max_mib = _positive_int(value, KV_MAX_MIB_LIMIT)
    elif name == "audit_log":
        b.audit_log = Path(value)
    else:
        raise ValueError(f"unknown setting {name!r}")


def _build(b: _Builder, *, has_stored_keyring: Callable[[Path], bool]) -> AgentConfig:
    bind_host = b.bind_host or ("127.0.0.1" if b.dev else "0.0.0.0")
    bind_port = DEFAULT_GOSSIP_PORT if b.bind_port is None else b.bind_port
    advertise: tuple[str, int] | None = None
    if b.advertise_host is not None:
        if b.advertise_host in ("0.0.0.0", "::"):
            raise ConfigError("advertise address must be a routable IP, not 0.0.0.0 or ::")
        advertise = (b.advertise_host, bind_port if b.advertise_port is None else b.advertise_port)
    if not b.dev:
        if b.data_dir is None:
            raise ConfigError(
                "a data directory is required: pass --data-dir DIR (or data_dir in a config"
                " file), or --dev for a throwaway agent"
            )
        if b.encrypt_key is None and not has_stored_keyring(b.data_dir):
            raise ConfigError(
                "an encryption key is required (plain-text gossip is for --dev only):"
                " pass --encrypt KEY, made with `meshnode keygen`"
            )
    try:
        dns = None if b.dns_disabled else DnsConfig(**b.dns)
    except DnsConfigError as exc:
        raise ConfigError(str(exc)) from None
    optional: dict[str, Any] = {}
    if b.retry_join_interval_s is not None:
        optional["retry_join_interval_s"] = b.retry_join_interval_s
    if b.tombstone_ttl_s is not None:
        optional["tombstone_ttl_s"] = b.tombstone_ttl_s
    if b.kv_max_mib is not None:
        optional["kv_max_mib"] = b.kv_max_mib
    if b.audit_log is not None:
        optional["audit_log"] = b.audit_log
    if b.http_max_conns_per_client is not None:
        optional["http_max_conns_per_client"] = b.http_max_conns_per_client
    optional.update(b.ca)
    if b.dev:
        optional.setdefault("ca_signer", True)  # a dev agent is a working CA on its own
    return AgentConfig(
        node_name=b.node_name or default_node_name(),
        bind=(bind_host, bind_port),
        advertise=advertise,
        http=(
            b.http_host or "127.0.0.1",
            DEFAULT_HTTP_PORT if b.http_port is None else b.http_port,
        ),
        data_dir=b.data_dir,
        join=tuple(dict.fromkeys(b.join)),
        retry_join=tuple(dict.fromkeys(b.retry_join)),
        encrypt_key=b.encrypt_key,
        cluster_label=b.cluster_label or "",
        dev=b.dev,
        log_level=b.log_level or "info",
        tags=dict(b.tags),
        datacenter=b.datacenter or "dc1",
        services=tuple(b.services),
        api_token=b.api_token,
        event_handlers=tuple(b.event_handlers),
        dns=dns,
        dns_service_ttls=dict(b.dns_service_ttls),
        **optional,
    )


def load_config(
    cli_overrides: Mapping[str, Any],
    config_files: Sequence[str | Path] = (),
    *,
    config_dirs: Sequence[str | Path] = (),
    has_stored_keyring: Callable[[Path], bool] | None = None,
) -> AgentConfig:
    """Merge `config_files` (in order), the `*.json` of `config_dirs`, then `cli_overrides`.

    `cli_overrides` uses the agent command's option names: node, bind, advertise,
    http_addr, data_dir, join, retry_join, retry_interval, encrypt, cluster_label, dev, log_level,
    datacenter, tag (a list of "KEY=VALUE"), api_token, event_handler (a list),
    signer, signer_token, ca_signers, csr_max_per_second, leaf_cert_ttl, ca_reissue_jitter,
    tombstone_ttl, kv_max_mib, audit_log;
    None or an empty list means not given.
    `has_stored_keyring(data_dir)` says whether a restart can do without --encrypt
    (default: look in the data dir's database).
    """
    if has_stored_keyring is None:
        from .store.persist import has_stored_keyring as stored

        has_stored_keyring = stored
    b = _Builder()
    files = [Path(p) for p in config_files]
    for directory in config_dirs:
        files += _config_dir_files(Path(directory))
    for path in files:
        _read_file(b, path)
    _apply_flags(b, cli_overrides)
    origin = ConfigOrigin(
        flags=tuple(cli_overrides.items()),
        files=tuple(Path(p) for p in config_files),
        dirs=tuple(Path(d) for d in config_dirs),
    )
    return replace(_build(b, has_stored_keyring=has_stored_keyring), origin=origin)


def reload_config(config: AgentConfig) -> AgentConfig:
    """Read `config`'s files and directories again, with the same flags (SIGHUP, reload)."""
    origin = config.origin or ConfigOrigin()
    return load_config(
        dict(origin.flags),
        origin.files,
        config_dirs=origin.dirs,
        has_stored_keyring=lambda _path: True,  # the agent already runs with its keyring
    )
