"""How the agent builds its CA parts: the `CAService`, its RPC stream and the `LeafManager`.

Kept out of `core.py` so the agent only calls `build_ca` and starts the two
objects; everything CA-specific about wiring lives here.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..ca.keystore import KeyStore
from ..ca.leaf_manager import LeafManager
from ..ca.rpc import STREAM_CA
from ..ca.service import CAService, CASettings, owned_service_names
from ..catalog.catalog import Catalog
from ..config import AgentConfig
from ..gossip.driver import GossipDriver
from ..gossip.membership import Membership
from ..gossip.messages import Addr
from ..gossip.transport import Transport
from ..gossip.wire import Wire
from ..store.state import NodeSource, ReplicatedState
from .inputs import Clock, child_rng

__all__ = ["build_ca"]


def build_ca(
    config: AgentConfig,
    node_id: str,
    data_dir: Path,
    state: ReplicatedState,
    nodes: NodeSource,
    catalog: Catalog,
    core: Membership,
    driver: GossipDriver,
    wire: Wire,
    transport: Transport,
    *,
    rng: random.Random,
    clock: Clock,
) -> tuple[CAService, LeafManager]:
    """The CA service (serving `STREAM_CA` on the gossip port) and the leaf manager."""

    def member_addr(name: str) -> Addr | None:
        member = core.member(name)
        return None if member is None else member.addr

    settings = CASettings(
        eligible=config.ca_signer,
        signer_token=config.ca_signer_token,
        leaf_ttl_s=config.leaf_cert_ttl_s,
        csr_max_per_second=config.csr_max_per_second,
        ca_signers=config.ca_signers,
        reissue_jitter_s=config.ca_reissue_jitter_s,
    )
    ca = CAService(
        state,
        nodes,
        catalog,
        node_name=config.node_name,
        node_id=node_id,
        datacenter=config.datacenter,
        wire=wire,
        counters=driver.counters,
        keystore=KeyStore(data_dir / "ca", node_id),
        member_addr=member_addr,
        # Outgoing RPCs leave from the advertised IP: the address peers check.
        local_host=lambda: transport.local_addr.host,
        settings=settings,
        rng=child_rng(rng),
        wall_clock=clock.wall_s,
        clock=clock.monotonic_s,
    )
    driver.add_stream_handler(STREAM_CA, ca.serve)
    leaves = LeafManager(
        issue=ca.issue,
        spiffe_id=ca.spiffe_id,
        roots=ca.roots,
        is_local=lambda service: service in owned_service_names(catalog.local_services()),
        rng=child_rng(rng),
        wall_clock=clock.wall_s,
        clock=clock.monotonic_s,
        reissue_jitter_s=config.ca_reissue_jitter_s,
    )
    ca.on_view_change(leaves.roots_changed)
    return ca, leaves
