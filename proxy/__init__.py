"""meshnode's embedded L4 proxy: mTLS sidecars that enforce intentions on live connections.

The proxy depends only on three small protocols (`sources.py`): a
`CertSource` for its TLS material, an `Authorizer` for intentions and a
`Resolver` for upstream instances. `inproc.py` adapts the agent's own
objects to them, `http_sources.py` the agent's HTTP API (for the standalone
`meshnode connect proxy`), and `testing.py` has settable fakes. docs/proxy.md
describes the behaviour and the measurements.
"""

from .balancer import Balancer, BalancerConfig, ejection_time_s
from .revocation import NO_REVOCATIONS, PeerLeaf, RevocationList, RevocationSource
from .sidecar import Limits, ListenerStats, Proxy, ProxyConfig, UpstreamConfig
from .sources import (
    Authorizer,
    CertSource,
    DecisionLog,
    Instance,
    Resolver,
    TlsMaterial,
    Versioned,
)
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
