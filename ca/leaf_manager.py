"""The leaf manager: one current leaf certificate per local service, kept fresh (trio).

Rules that live here:

- A leaf is issued on first `get`, with a fresh P-256 key and a CSR for the
  service's SPIFFE ID, through the `issue` callable (the agent sends the CSR
  to the current signers, falling back from one to the next).
- Renewal happens at a uniformly random point between 60 % and 90 % of the
  leaf's life, so a cluster's leaves issued together do not renew together.
- When the active root changes, every leaf issued under another root is
  re-issued at a uniformly random point of the next `reissue_jitter_s`
  (30 s), so a rotation does not send every agent's CSRs in the same second.
- A failed renewal keeps the current leaf (it is still valid) and retries
  with a doubling delay from 1 s to 30 s.
- A service's *first* leaf is retried at once by `get`, for at most
  `first_leaf_retry_s` (5 s): every 100 ms doubling to 1 s, and straight
  away when the trust bundle changes. In a new cluster the CA, or the
  catalog record that proves the service is ours, reaches the signer a few
  hundred milliseconds after the registration: a service registered at
  start has its leaf then, not after the caller's own back-off.
- Waiting: every new leaf gets the next *generation* (one counter for the
  manager, so it can serve as a blocking-query index). `wait_changed` and
  `wait_roots_changed` return when a newer generation exists, so the proxy
  can swap certificates into new handshakes without polling.

Time: wall clock (`wall_clock`) for certificate validity, the monotonic
`clock` (trio's) for timers, both passed in; randomness from the
`random.Random` passed in. The renewal formulas are `ca/signer.py`'s.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .csr import make_csr
from .pem import cert_from_pem, generate_key, key_to_pem, serial_colon_hex
from .signer import leaf_renew_at, reissue_at

__all__ = ["Issued", "Leaf", "LeafError", "LeafManager", "Roots", "UnknownLocalService"]

# Leaves still valid for less than this are not handed out from the cache.
_EXPIRY_MARGIN_S = 5.0
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0
_FIRST_RETRY_MIN_S = 0.1
_FIRST_RETRY_MAX_S = 1.0


class LeafError(Exception):
    """A leaf could not be issued; the message is the one-line reason."""


class UnknownLocalService(LeafError):
    """The service is not registered on this agent: no leaf for it here."""


@dataclass(frozen=True, slots=True)
class Issued:
    """What a signer returned for a CSR."""

    leaf_pem: str
    chain_pems: tuple[str, ...]  # intermediate first, then any cross-signed root
    root_id: str


@dataclass(frozen=True, slots=True)
class Roots:
    """The trust bundle: every root a peer's chain may end at, and which one is active."""

    active_id: str
    trust_domain: str
    pems: tuple[str, ...]
    generation: int = 0

    @property
    def bundle_pem(self) -> str:
        return "".join(self.pems)


@dataclass(frozen=True, slots=True)
class Leaf:
    """One service's certificate, its key and what a TLS stack needs around them."""

    service: str
    spiffe_id: str
    cert_pem: str
    key_pem: str
    chain_pems: tuple[str, ...]
    roots_pems: tuple[str, ...]  # the trust bundle when the leaf was issued
    root_id: str
    serial: str  # colon hex, Consul's SerialNumber
    valid_after_s: float  # wall clock
    valid_before_s: float  # wall clock
    generation: int  # rises with every new leaf of any service (ModifyIndex)
    create_generation: int  # the generation of this service's first leaf (CreateIndex)

    @property
    def chain_pem(self) -> str:
        return "".join(self.chain_pems)


IssueFn = Callable[[str, str], Awaitable[Issued]]


class LeafManager:
    """Leaves of the local services, renewed in the background once `run` is started."""

    def __init__(
        self,
        *,
        issue: IssueFn,
        spiffe_id: Callable[[str], str],
        roots: Callable[[], Roots | None],
        is_local: Callable[[str], bool],
        rng: random.Random,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = trio.current_time,
        reissue_jitter_s: float = 30.0,
        renew_fraction: tuple[float, float] = (0.6, 0.9),
        first_leaf_retry_s: float = 5.0,
    ) -> None:
        self._issue = issue
        self._spiffe_id = spiffe_id
        self._roots = roots
        self._is_local = is_local
        self._rng = rng
        self._wall_clock = wall_clock
        self._clock = clock
        self.reissue_jitter_s = reissue_jitter_s
        self._renew_fraction = renew_fraction
        self.first_leaf_retry_s = first_leaf_retry_s
        self._leaves: dict[str, Leaf] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._due: dict[str, float] = {}  # service -> trio time of the next renewal
        self._failures: dict[str, int] = {}
        self._generation = 0
        self._changed: dict[str, trio.Event] = {}
        self._roots_seen: Roots | None = None
        self._roots_generation = 0
        self._roots_event = trio.Event()
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.issued_total = 0
        self.failed_total = 0

    # --- reads -----------------------------------------------------------------------------

    def cached(self, service: str) -> Leaf | None:
        return self._leaves.get(service)

    def roots(self) -> Roots | None:
        """The current trust bundle (None before the cluster has a CA)."""
        current = self._roots()
        if current is None:
            return None
        return Roots(current.active_id, current.trust_domain, current.pems, self._roots_generation)

    @property
    def generation(self) -> int:
        return self._generation

    async def get(self, service: str) -> Leaf:
        """The service's current leaf, issuing one first if needed; `LeafError` if impossible."""
        if not self._is_local(service):
            raise UnknownLocalService(f"service {service!r} is not registered on this agent")
        leaf = self._leaves.get(service)
        if leaf is not None and self._usable(leaf):
            return leaf
        async with self._lock(service):
            leaf = self._leaves.get(service)
            if leaf is not None and self._usable(leaf):
                return leaf
            if leaf is not None:
                return await self._renew_now(service)
            return await self._first_leaf(service)

    async def _first_leaf(self, service: str) -> Leaf:
        """Issue the first leaf, retrying briefly while the cluster catches up (module doc)."""
        give_up_at = self._clock() + self.first_leaf_retry_s
        delay_s = _FIRST_RETRY_MIN_S
        while True:
            roots_generation = self._roots_generation
            try:
                return await self._renew_now(service)
            except LeafError:
                left_s = give_up_at - self._clock()
                if left_s <= 0 or not self._is_local(service):
                    raise
            # Early when the bundle changes (the CA has just reached us).
            await self.wait_roots_changed(roots_generation, min(delay_s, left_s))
            delay_s = min(_FIRST_RETRY_MAX_S, delay_s * 2)

    async def wait_changed(self, service: str, since_generation: int, timeout_s: float) -> int:
        """Block until `service` has a leaf newer than `since_generation`, or the timeout.

        Returns the current leaf's generation (0 when it has none).
        """
        with trio.move_on_after(timeout_s):
            while self._leaf_generation(service) <= since_generation:
                event = self._changed.setdefault(service, trio.Event())
                await event.wait()
        return self._leaf_generation(service)

    async def wait_roots_changed(self, since_generation: int, timeout_s: float) -> int:
        """Block until the trust bundle changed after `since_generation`, or the timeout."""
        with trio.move_on_after(timeout_s):
            while self._roots_generation <= since_generation:
                await self._roots_event.wait()
        return self._roots_generation

    def _leaf_generation(self, service: str) -> int:
        leaf = self._leaves.get(service)
        return 0 if leaf is None else leaf.generation

    def _usable(self, leaf: Leaf) -> bool:
        return leaf.valid_before_s - self._wall_clock() > _EXPIRY_MARGIN_S

    def _lock(self, service: str) -> trio.Lock:
        return self._locks.setdefault(service, trio.Lock())

    # --- changes from outside --------------------------------------------------------------

    def roots_changed(self) -> None:
        """The CA's view changed: note a new bundle, schedule re-issues after a root change.

        Cheap and synchronous: the agent calls it from a store listener.
        """
        current = self._roots()
        if current == self._roots_seen:
            return
        previous, self._roots_seen = self._roots_seen, current
        self._roots_generation += 1
        self._roots_event.set()
        self._roots_event = trio.Event()
        if current is None or (previous is not None and previous.active_id == current.active_id):
            return
        now = self._clock()
        for service, leaf in self._leaves.items():
            if leaf.root_id != current.active_id:
                at = reissue_at(now, self.reissue_jitter_s, self._rng)
                self._due[service] = min(self._due.get(service, math.inf), at)
        self._wakeup.set()

    def reissue(self, service: str) -> None:
        """Replace `service`'s leaf (and its key) now: the current one was revoked."""
        if service in self._leaves:
            self._due[service] = trio.current_time()
            self._wakeup.set()

    def forget(self, service: str) -> None:
        """Drop a service's leaf (it was deregistered): no more renewals."""
        self._leaves.pop(service, None)
        self._due.pop(service, None)
        self._failures.pop(service, None)
        self._wake_waiters(service)

    # --- issuing ---------------------------------------------------------------------------

    async def _renew_now(self, service: str) -> Leaf:
        key = generate_key()
        csr = make_csr(key, self._spiffe_id(service))
        try:
            issued = await self._issue(service, csr)
            cert = cert_from_pem(issued.leaf_pem)
        except LeafError:
            self.failed_total += 1
            raise
        except ValueError as exc:  # PemError: a signer answered a bad certificate
            self.failed_total += 1
            raise LeafError(f"the signer's certificate does not parse: {exc}") from None
        self._generation += 1
        old = self._leaves.get(service)
        roots = self._roots()
        leaf = Leaf(
            service=service,
            spiffe_id=self._spiffe_id(service),
            cert_pem=issued.leaf_pem,
            key_pem=key_to_pem(key),
            chain_pems=issued.chain_pems,
            roots_pems=roots.pems if roots is not None else (),
            root_id=issued.root_id,
            serial=serial_colon_hex(cert),
            valid_after_s=cert.not_valid_before_utc.timestamp(),
            valid_before_s=cert.not_valid_after_utc.timestamp(),
            generation=self._generation,
            create_generation=old.create_generation if old is not None else self._generation,
        )
        self._leaves[service] = leaf
        self._failures.pop(service, None)
        self.issued_total += 1
        self._schedule_renewal(leaf)
        self._wake_waiters(service)
        return leaf

    def _schedule_renewal(self, leaf: Leaf) -> None:
        now = self._clock()
        at = leaf_renew_at(
            valid_after_s=leaf.valid_after_s,
            valid_before_s=leaf.valid_before_s,
            fraction=self._renew_fraction,
            now=now,
            now_wall_s=self._wall_clock(),
            rng=self._rng,
        )
        active = self._roots()
        if active is not None and active.active_id != leaf.root_id:
            # Issued under a root that is no longer active (a signer still on the
            # old one): try again within the jitter window.
            at = min(at, reissue_at(now, self.reissue_jitter_s, self._rng))
        self._due[leaf.service] = at
        self._wakeup.set()

    def _wake_waiters(self, service: str) -> None:
        event = self._changed.pop(service, None)
        if event is not None:
            event.set()

    # --- the background loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew leaves when due; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._roots_seen = self._roots()
            task_status.started()
            while True:
                next_at = min(self._due.values(), default=math.inf)
                with trio.move_on_at(next_at):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                now = self._clock()
                for service in [s for s, at in self._due.items() if at <= now]:
                    del self._due[service]
                    nursery.start_soon(self._renew_in_background, service)

    async def _renew_in_background(self, service: str) -> None:
        if service not in self._leaves:
            return
        if not self._is_local(service):
            self.forget(service)
            return
        async with self._lock(service):
            if service not in self._leaves:
                return
            try:
                await self._renew_now(service)
            except LeafError:
                failures = self._failures.get(service, 0) + 1
                self._failures[service] = failures
                delay_s = min(_RETRY_MAX_S, _RETRY_MIN_S * 2 ** (failures - 1))
                self._due[service] = self._clock() + delay_s
                self._wakeup.set()
