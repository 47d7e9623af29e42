"""The three sources over the agent's own objects: leaf manager, intentions, catalog.

An embedded sidecar asks the agent's replica directly: a decision is a
dictionary look-up (`IntentionState.check`), the instances of a destination
are computed once per catalog change and cached, and the TLS material
follows the leaf manager's generations (a renewed leaf, a changed bundle).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..ca.leaf_manager import Leaf, LeafError, LeafManager, Roots
from ..catalog.catalog import Catalog
from ..intentions.replica import IntentionState
from ..intentions.rules import IntentionError
from ..logs import get_logger, log
from ..proxy.sources import Instance, TlsMaterial, Versioned

__all__ = ["CatalogResolver", "IntentionAuthorizer", "LeafCertSource"]

_log = get_logger("proxy")
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0
# Blocking waits are re-armed this often even with no change (cheap, and a
# bound on how long a missed wake-up could last).
_WAIT_S = 300.0


class IntentionAuthorizer:
    """An `Authorizer` over the local intention replica."""

    def __init__(self, intentions: IntentionState) -> None:
        self._intentions = intentions

    @property
    def generation(self) -> int:
        return self._intentions.index()

    def allowed(self, source: str, destination: str) -> tuple[bool, str]:
        try:
            decision = self._intentions.check(source, destination)
        except IntentionError as exc:  # a peer ID whose service is not a valid name
            return False, str(exc)
        return decision.allowed, decision.reason

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._intentions.wait(since_generation, timeout_s)


class CatalogResolver:
    """A `Resolver` over the local catalog replica: passing sidecars of a destination."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._cache: dict[str, tuple[int, list[Instance]]] = {}

    @property
    def generation(self) -> int:
        return self._catalog.index()

    async def instances(self, destination: str) -> Sequence[Instance]:
        index = self._catalog.index()
        cached = self._cache.get(destination)
        if cached is not None and cached[0] == index:
            return cached[1]
        found = [
            Instance(
                address=e.service.record.address or e.service.node.address,
                port=e.service.record.port,
                node=e.service.node.name,
                service_id=e.service.record.service_id,
            )
            for e in self._catalog.health_service(destination, passing_only=True, connect=True)
            if e.service.record.port > 0
        ]
        self._cache[destination] = (index, found)
        return found

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._catalog.wait(since_generation, timeout_s)


class LeafCertSource:
    """A `CertSource` following one service's leaf and the trust bundle in the leaf manager.

    `run` fetches the first leaf (retrying with a doubling delay while no
    signer can issue one) and then follows every new leaf and bundle.
    """

    def __init__(self, leaves: LeafManager, service: str) -> None:
        self._leaves = leaves
        self.service = service
        self._versions = Versioned()
        self._material: TlsMaterial | None = None

    def current(self) -> TlsMaterial | None:
        return self._material

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)

    def _update(self, leaf: Leaf, roots: Roots | None) -> None:
        pems = roots.pems if roots is not None else leaf.roots_pems
        trust_domain = roots.trust_domain if roots is not None else ""
        material = TlsMaterial(
            service=self.service,
            spiffe_id=leaf.spiffe_id,
            trust_domain=trust_domain or leaf.spiffe_id.removeprefix("spiffe://").split("/")[0],
            cert_chain_pem=leaf.cert_pem + leaf.chain_pem,
            key_pem=leaf.key_pem,
            roots_pem="".join(pems),
            generation=self._versions.generation + 1,
        )
        old = self._material
        if old is not None and (
            old.cert_chain_pem,
            old.roots_pem,
            old.trust_domain,
        ) == (material.cert_chain_pem, material.roots_pem, material.trust_domain):
            return
        self._material = material
        self._versions.bump()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the leaf and the bundle until cancelled."""
        task_status.started()
        delay_s = _RETRY_MIN_S
        while True:
            try:
                leaf = await self._leaves.get(self.service)
            except LeafError as exc:
                log(_log, "warning", "no leaf for the proxy yet", service=self.service, error=exc)
                await trio.sleep(delay_s)
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
                continue
            delay_s = _RETRY_MIN_S
            self._update(leaf, self._leaves.roots())
            roots = self._leaves.roots()
            roots_generation = roots.generation if roots is not None else 0
            async with trio.open_nursery() as nursery:

                async def leaf_changed(since: int = leaf.generation) -> None:
                    await self._leaves.wait_changed(self.service, since, _WAIT_S)
                    nursery.cancel_scope.cancel()

                async def roots_changed(since: int = roots_generation) -> None:
                    await self._leaves.wait_roots_changed(since, _WAIT_S)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(leaf_changed)
                nursery.start_soon(roots_changed)
