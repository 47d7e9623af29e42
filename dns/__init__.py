"""meshnode's DNS interface: `<svc>.service.mesh` and friends on UDP and TCP.

`serve_dns(catalog, config)` (or `DnsServer`) is the trio server; the answer
logic (`Responder`) is sans-IO; `DnsCatalog` is the only thing it reads.
"""

from .catalog_view import DnsCatalog, DnsInstance, DnsNode, InstanceStatus, StaticCatalog
from .config import DnsConfig
from .errors import DnsBindError, DnsConfigError, DnsError, RemoteQueryError
from .responder import DnsStats, Forward, Responder
from .server import DnsBound, DnsServer, serve_dns

__all__ = [
    "DnsBindError",
    "DnsBound",
    "DnsCatalog",
    "DnsConfig",
    "DnsConfigError",
    "DnsError",
    "DnsInstance",
    "DnsNode",
    "DnsServer",
    "DnsStats",
    "Forward",
    "InstanceStatus",
    "RemoteQueryError",
    "Responder",
    "StaticCatalog",
    "serve_dns",
]
