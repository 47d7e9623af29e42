"""meshnode's native integration: serve and dial over the mesh from the application itself.

No sidecar: the application holds its own leaf (followed from the local
agent with blocking queries), terminates and originates mTLS itself, and
asks the agent about intentions. `Service` is the trio API; `blocking` wraps
it for plain-socket code. The data plane, verification and connection
tracking are the proxy's (`meshnode.proxy`). docs/native.md has an example.
`agent_sources` implements the proxy's sources over the agent's HTTP API
(`meshnode.client`); `meshnode connect proxy` runs on them too.

A client of an agent, not a part of one: must not import the agent, its
HTTP API or server, the sidecars, the store or DNS. Installed as
`meshnode.connect`.
"""

from .authorize import AgentAuthorizer, Decider, ReplicaAuthorizer
from .blocking import BlockingService
from .service import ConnectError, Denied, Handler, Service
from .stream import MeshStream

__all__ = [
    "AgentAuthorizer",
    "BlockingService",
    "ConnectError",
    "Decider",
    "Denied",
    "Handler",
    "MeshStream",
    "ReplicaAuthorizer",
    "Service",
]
