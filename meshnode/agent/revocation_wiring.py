"""The agent's part in revocation: its own revoked leaves get completed and replaced.

A revocation made by serial on another agent does not know the leaf's public
key. The agent that owns the leaf does: when a revocation of one of its own
leaves arrives, it adds the key and the real notAfter to the record (so a
certificate re-issued for that key is refused too), and asks the leaf
manager for a new leaf with a new key, so its service is back within one
signing round instead of failing every handshake until the next renewal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from ..api.revocation_endpoints import register_revocation_routes
from ..ca.leaf_manager import LeafManager
from ..ca.pem import PemError, cert_from_pem
from ..ca.records import DEFAULT_LEAF_TTL_S
from ..ca.revocation import spki_sha256
from ..ca.revocation_replica import RevocationReplica
from ..ca.service import CAService, owned_service_names
from ..catalog.records import ServiceRecord
from ..http import Router
from ..logs import get_logger, log

__all__ = [
    "follow_own_revocations",
    "local_leaves",
    "register_revocations",
    "replace_own_revoked",
    "run_revocations",
]

_log = get_logger("ca")
# Waits are re-armed this often even with no change (a bound on a missed wake-up).
_WAIT_S = 300.0


def local_leaves(leaves: LeafManager, services: Iterable[str]) -> list[tuple[str, str]]:
    """(service, leaf PEM) of every leaf this agent holds for `services`."""
    found = []
    for service in services:
        leaf = leaves.cached(service)
        if leaf is not None:
            found.append((service, leaf.cert_pem))
    return found


def replace_own_revoked(
    revocations: RevocationReplica, leaves: LeafManager, services: Iterable[str]
) -> int:
    """Complete and replace each of our leaves that is revoked; how many."""
    replaced = 0
    for service, pem in local_leaves(leaves, services):
        try:
            cert = cert_from_pem(pem)
        except PemError:
            continue
        if revocations.current().match(cert.serial_number, spki_sha256(cert)) is None:
            continue
        revocations.complete(cert)
        leaves.reissue(service)
        replaced += 1
        log(_log, "warning", "own leaf revoked: replacing it", service=service)
    return replaced


async def follow_own_revocations(
    revocations: RevocationReplica,
    leaves: LeafManager,
    services: Callable[[], Iterable[str]],
) -> None:
    """Run `replace_own_revoked` at start and after every change of the list."""
    generation = 0
    while True:
        replace_own_revoked(revocations, leaves, services())
        generation = await revocations.wait_changed(generation, _WAIT_S)


async def run_revocations(
    revocations: RevocationReplica,
    leaves: LeafManager,
    local_services: Callable[[], list[ServiceRecord]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Collect expired revocations and replace our revoked leaves, until cancelled."""
    async with trio.open_nursery() as nursery:
        await nursery.start(revocations.run)
        nursery.start_soon(
            follow_own_revocations,
            revocations,
            leaves,
            lambda: owned_service_names(local_services()),
        )
        task_status.started()


def register_revocations(
    router: Router,
    revocations: RevocationReplica,
    leaves: LeafManager,
    ca: CAService,
    local_services: Callable[[], list[ServiceRecord]],
    current_token: Callable[[], str | None],
) -> None:
    """The revocation endpoints, over this agent's leaves and the CA's leaf TTL."""

    def own_leaf_pems() -> list[str]:
        services = owned_service_names(local_services())
        return [pem for _, pem in local_leaves(leaves, services)]

    def leaf_ttl_s() -> float:
        # The longest a leaf issued now (or under the default) can live.
        config = ca.view.config
        return max(DEFAULT_LEAF_TTL_S, config.leaf_ttl_s if config is not None else 0)

    register_revocation_routes(
        router,
        revocations,
        own_leaf_pems=own_leaf_pems,
        leaf_ttl_s=leaf_ttl_s,
        current_token=current_token,
    )
