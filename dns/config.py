"""The DNS listener's settings (Consul's `ports.dns`, `addresses.dns`, `domain`,
`alt_domain`, `recursors` and `dns_config.*`), validated once at start.

`datacenter` and `node_name` are not DNS options: the agent copies its own
so that answers can name the local datacenter and this agent as the
zone's name server."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from meshnode.addr import AddressError, parse_host_port, parse_ip

from .errors import DnsConfigError

__all__ = ["DnsConfig", "normalize_domain"]

_DATACENTER = re.compile(r"[a-z0-9_-]{1,63}")
_MAX_DOMAIN_BYTES = 200  # leaves room under DNS's 255-byte names for <tag>.<svc>.service.


def normalize_domain(text: str) -> str:
    """`Mesh` or `mesh.` -> `mesh.`; raises DnsConfigError on an unusable domain."""
    domain = text.strip().lower().rstrip(".")
    labels = domain.split(".")
    if not domain or any(not label or len(label) > 63 for label in labels):
        raise DnsConfigError(f"bad DNS domain {text!r}: empty label or label over 63 bytes")
    if not domain.isascii() or len(domain) > _MAX_DOMAIN_BYTES:
        raise DnsConfigError(f"bad DNS domain {text!r}: not ASCII or too long")
    return domain + "."


def _parse_recursor(text: str) -> tuple[str, int]:
    try:
        if text.count(":") > 1 and not text.startswith("["):
            return parse_ip(text), 53  # a bare IPv6 literal
        return parse_host_port(text, default_port=53)
    except AddressError as exc:
        raise DnsConfigError(f"bad DNS recursor: {exc}") from None


@dataclass(frozen=True)
class DnsConfig:
    """Where the DNS server listens and how it answers."""

    # Consul's default DNS address: loopback, so nothing is exposed unless asked.
    host: str = "127.0.0.1"
    # 8600 is Consul's DNS port; 0 picks a free port (tests), UDP and TCP alike.
    port: int = 8600
    # The zone served; names outside it are forwarded or REFUSED.
    domain: str = "mesh."
    # A second zone answered exactly like `domain` (for a migration between names).
    alt_domain: str | None = None
    # Upstream servers ("IP" or "IP:PORT") for names outside the zone; none = REFUSED.
    recursors: tuple[str, ...] = ()
    # Consul's recursor_timeout: long enough for a distant resolver, short
    # enough that a dead one turns into SERVFAIL before a stub gives up (5 s).
    recursor_timeout_s: float = 2.0
    # Consul's default: warning instances still serve (a warning is not down).
    only_passing: bool = False
    # TTL 0: the catalog changes within a gossip round; caches must not hide it.
    node_ttl_s: int = 0
    service_ttl_s: int = 0
    # A UDP answer that does not fit sets TC so the client retries over TCP
    # (false: silently trim to what fits, as Consul does by default).
    enable_truncate: bool = True
    # The most TCP clients at once (BIND's tcp-clients is 150): bounded so a
    # flood of idle connections cannot exhaust file descriptors.
    tcp_connections_max: int = 128
    # TCP connections from one client address: a stub resolver uses one or
    # two; a tenth of the total, so held connections from one address can
    # never lock the others out (security finding 7).
    tcp_connections_per_client_max: int = 16
    # RFC 7766 asks for a short idle timeout (seconds); also the deadline to
    # read one query or write one answer, so a slow client cannot hold a
    # slot for long (it was 10 s).
    tcp_idle_timeout_s: float = 5.0
    # Cached answers; a flood of random names clears the cache rather than
    # growing it without bound.
    cache_entries_max: int = 10_000
    # Recursions in flight at once; beyond that a query gets SERVFAIL at once.
    forwards_max: int = 256
    # The local datacenter: `<svc>.service.<dc>.mesh` answers for it alone,
    # and SRV and PTR targets name it, as Consul's do.
    datacenter: str = "dc1"
    # This agent's node name: `mesh. NS` names it (`<node>.node.<dc>.mesh.`,
    # with its address as glue). Empty: the zone has no NS records.
    node_name: str = ""
    recursor_addrs: tuple[tuple[str, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", normalize_domain(self.domain))
        if self.alt_domain is not None:
            object.__setattr__(self, "alt_domain", normalize_domain(self.alt_domain))
            if self.alt_domain == self.domain:
                raise DnsConfigError(f"alt_domain {self.alt_domain!r} is the same as domain")
        datacenter = self.datacenter.lower()
        if not _DATACENTER.fullmatch(datacenter):
            raise DnsConfigError(
                f"bad datacenter {self.datacenter!r} for DNS: not one label of 1-63 letters,"
                " digits, '-', '_'"
            )
        object.__setattr__(self, "datacenter", datacenter)
        try:
            object.__setattr__(self, "host", parse_ip(self.host))
        except AddressError as exc:
            raise DnsConfigError(f"bad DNS address: {exc}") from None
        if not 0 <= self.port <= 65535:
            raise DnsConfigError(f"bad DNS port {self.port}: out of range (0-65535)")
        recursors = tuple(self.recursors)
        object.__setattr__(self, "recursors", recursors)
        object.__setattr__(self, "recursor_addrs", tuple(_parse_recursor(r) for r in recursors))
        for name in ("recursor_timeout_s", "tcp_idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise DnsConfigError(f"DNS {name} must be positive, not {getattr(self, name)}")
        for name in ("node_ttl_s", "service_ttl_s"):
            if not 0 <= getattr(self, name) <= 2**31 - 1:
                raise DnsConfigError(f"DNS {name} must be 0..2147483647, not {getattr(self, name)}")
        for name in (
            "tcp_connections_max",
            "tcp_connections_per_client_max",
            "cache_entries_max",
            "forwards_max",
        ):
            if getattr(self, name) < 1:
                raise DnsConfigError(f"DNS {name} must be at least 1, not {getattr(self, name)}")
