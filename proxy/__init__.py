"""meshnode's data plane: L4 mTLS proxies that enforce intentions on live connections.

The proxy depends only on three small protocols (`sources.py`): a
`CertSource` for its TLS material, an `Authorizer` for intentions and a
`Resolver` for upstream instances. `meshnode.sidecars.inproc` adapts the
agent's own objects to them, `meshnode.connect.agent_sources` the agent's HTTP
API (for the standalone `meshnode connect proxy`), and `testing.py` has
settable fakes. `sidecar` holds the listeners, `tls`/`handshake` the TLS 1.3
contexts and peer checks, `balancer` the upstream choice, `pump` the byte
splicing, `tracker` the live connections a new deny cuts. docs/proxy.md
describes the behaviour and the measurements.

Must not import DNS, gossip, or agent code (agent, API, HTTP, catalog,
store, intentions, sidecars, connect): it reaches them only through the
protocols in `sources.py`. It may use `meshnode.ca` (SPIFFE IDs).
Installed as `meshnode.proxy`.
"""

from .balancer import Balancer, BalancerConfig, ejection_time_s
from .dial import Dialer, DialError, Dialled
from .limits import Limits
from .revocation import NO_REVOCATIONS, PeerLeaf, RevocationList, RevocationSource
from .sidecar import Proxy, ProxyConfig, UpstreamConfig
from .sources import (
    Authorizer,
    CertSource,
    DecisionLog,
    Instance,
    Resolver,
    TlsMaterial,
    Versioned,
)
from .stats import ListenerStats
from .tls import ContextCache, PeerError, TlsContexts, build_contexts, peer_service, peer_uri
from .tracker import ConnectionTracker, LiveConnection

__all__ = [
    "NO_REVOCATIONS",
    "Authorizer",
    "Balancer",
    "BalancerConfig",
    "CertSource",
    "ConnectionTracker",
    "ContextCache",
    "DecisionLog",
    "DialError",
    "Dialer",
    "Dialled",
    "Instance",
    "Limits",
    "ListenerStats",
    "LiveConnection",
    "PeerError",
    "PeerLeaf",
    "Proxy",
    "ProxyConfig",
    "Resolver",
    "RevocationList",
    "RevocationSource",
    "TlsContexts",
    "TlsMaterial",
    "UpstreamConfig",
    "Versioned",
    "build_contexts",
    "ejection_time_s",
    "peer_service",
    "peer_uri",
]
