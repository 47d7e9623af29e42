"""How the agent builds its CA parts: the `CAService`, its RPC stream and the `LeafManager`.

Kept out of `core.py` so the agent only calls `build_ca` and starts the two
objects; everything CA-specific about wiring lives here, including the file
side of the trust anchor (`ca/anchor.py` decides): ``<data-dir>/ca/anchor.pin``,
mode 0600, read once at start and replaced atomically when the pin advances.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

from ..ca.anchor import PIN_MAX_BYTES, Anchor, AnchorFileError, decode_pin, encode_pin
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
from ..logs import log
from ..store.datadir import write_private_file
from ..store.state import NodeSource, ReplicatedState
from .errors import AgentStartError
from .inputs import Clock, child_rng

__all__ = ["ANCHOR_FILE", "build_ca", "load_pin", "pin_saver"]

_log = logging.getLogger("meshnode.ca")

# In <data-dir>/ca/, beside the root keys (KeyStore).
ANCHOR_FILE = "anchor.pin"


def load_pin(path: Path) -> Anchor | None:
    """The pinned root in `path`; None before the first pin; `AgentStartError` when damaged."""
    try:
        with path.open("r", encoding="utf-8") as handle:
            text = handle.read(PIN_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentStartError(f"cannot read the CA root pin {path}: {exc}") from None
    try:
        return decode_pin(text)
    except AnchorFileError as exc:
        raise AgentStartError(
            f"the CA root pin {path} is damaged ({exc}): restore it, or delete it and "
            "start with --ca-root-fingerprint (or trust on first use again)"
        ) from None


def pin_saver(path: Path) -> Callable[[Anchor], None]:
    """What the CA service calls when the pin advances; a write failure is logged, not fatal."""

    def save(anchor: Anchor) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private_file(path, encode_pin(anchor))
        except OSError as exc:
            # The pin still holds in memory, until a restart trusts on first use again.
            log(_log, "warning", "cannot save the CA root pin", path=str(path), error=exc)

    return save


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
        pinned=load_pin(data_dir / "ca" / ANCHOR_FILE),
        operator_root_id=config.ca_root_fingerprint,
        save_pin=pin_saver(data_dir / "ca" / ANCHOR_FILE),
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
