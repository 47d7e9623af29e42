"""meshnode's DNS interface: `<svc>.service.mesh` and friends on UDP and TCP.

`serve_dns(catalog, config)` (or `DnsServer`) is the trio server; the answer
logic (`Responder`, `answer`) is sans-IO; `DnsCatalog` (`catalog_view`) is the
only thing it reads, which `meshnode.catalog.dns_view` implements over the
agent's catalog. `wire` holds the DNS message limits, `udp_batch` the
batched UDP receive.

Must not import the proxy, the CA, gossip or any agent code (catalog, store,
agent, API): it sees the catalog only through `DnsCatalog`. Installed as
`meshnode.dns`.
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
