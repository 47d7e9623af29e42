"""The agent side of the CA: bootstrap, signers, root keys, intermediates, leaf requests.

Every agent runs a `CAService`. What it does depends on the node:

- Any agent: follows the CA records in the store (`records.CAView`), sends
  its services' CSRs to the current signers (`issue`, in signer order, the
  next one when one is down, refuses or is no longer elected), answers the
  roots and configuration reads, and forwards configuration changes and
  rotations to a signer.
- A signer-eligible agent (``--signer``; ``"signer": true`` in its gossip
  meta) also: bootstraps the CA when the cluster has none; holds the active
  root key, encrypted in its data dir (`KeyStore`), fetching it from an
  eligible peer over CA RPC when it lacks it; answers peers' root key
  requests; applies configuration changes and rotations.
- An active signer (one of the `ca_signers` eligible alive members with the
  highest rendezvous hash): holds its own intermediate (a key in memory
  only, the certificate in the store) and signs leaves with it after
  checking that the requesting node owns the service in the catalog, rate
  limiting CSRs and validating them.
- The best-ranked active signer does the cluster's housekeeping: it retires
  the intermediates of nodes that lost their election, prunes roots whose
  leaves have all expired, and deletes roots left by a losing bootstrap.

Nothing here talks to another node except through `ca_rpc`. Every decision
is re-made from the store and the member list in `reconcile`, which runs on
every change of either and at least every `reconcile_interval_s`.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

import trio

from ..catalog.records import ServiceRecord
from ..catalog.views import ServiceView
from ..gossip.driver import DriverCounters
from ..gossip.errors import LocalProtocolError
from ..gossip.messages import Addr
from ..gossip.store import Entry
from ..gossip.wire import Wire
from ..intentions.replica import InvalidCertURI
from ..intentions.rules import IntentionError, validate_name
from ..logs import log
from ..store.state import TOPIC_MEMBERS, NodeInfo, NodeSource, ReplicatedState
from . import rpc as ca_rpc
from .anchor import Anchor
from .approval import (
    SignerApproval,
    SignerRequest,
    approval_key,
    encode_approval,
    encode_request,
    fingerprint,
    identity_public_key,
    public_der,
    request_key,
    sign_approval,
    token_proof,
    token_proof_ok,
)
from .csr import CSRError, validate_csr
from .custody import (
    HeldRoot,
    decode_held,
    encode_held,
    finished,
    lost_bootstrap,
    retire_at_s,
    successor_of,
)
from .fields import MalformedCARecord
from .keystore import KeyStore, KeyStoreError
from .leaf_manager import Issued, LeafError, Roots
from .pem import PemError, cert_from_pem, generate_key, key_from_pem, key_to_pem
from .provider import ROOT_TTL_S, BuiltinProvider, CAProvider, ProviderError, RootCA
from .records import (
    CONFIG_KEY,
    KIND,
    CAConfigRecord,
    CAView,
    IntermediateRecord,
    RootRecord,
    approved_nodes,
    eligible_nodes,
    encode_config,
    encode_intermediate,
    encode_root,
    intermediate_key,
    read_view,
    root_key,
    sign_config,
    signers_for,
)
from .rpc import (
    Configured,
    ConfigureRequest,
    Refusal,
    Reply,
    Request,
    RootKey,
    RootKeyRequest,
    RpcUnreachable,
    Signed,
    SignRequest,
)
from .sealing import SealError, open_sealed, seal
from .signer import (
    SignCheck,
    TokenBucket,
    bootstrap_at,
    intermediate_due,
    root_key_sources,
    sign_refusal,
)
from .spiffe import ServiceID, SpiffeError, parse_spiffe_id, trust_domain_for

__all__ = [
    "CAError",
    "CAService",
    "CASettings",
    "ConfigChange",
    "SignerStatus",
    "owned_service_names",
]

_log = logging.getLogger("meshnode.ca")


class CAError(Exception):
    """A CA operation asked of this agent cannot be done; one line for the user."""


class ServiceOwners(Protocol):
    """The catalog as the signer asks it: who runs an instance (or a proxy) of a service."""

    def service_nodes(
        self, name: str, tag: str | None = None, *, connect: bool = False
    ) -> list[ServiceView]: ...


@dataclass(frozen=True, slots=True)
class CASettings:
    # --signer: this node asks to hold the root key and be elected to sign;
    # it does once an approved signer approves it (docs/ca.md, "Signers").
    eligible: bool = False
    # --signer-token: a secret the operator gives to signer hosts only. A
    # signer holding it approves requests that prove it; None: approvals
    # come from `meshnode ca signers approve` alone. Never printed.
    signer_token: str | None = field(default=None, repr=False)
    # Cluster-wide settings written at bootstrap (the store's config wins after):
    # Consul's 72 h leaf, its CSRMaxPerSecond of 50, three signers.
    leaf_ttl_s: int = 72 * 3600
    csr_max_per_second: float = 50.0
    ca_signers: int = 3
    # Leaves re-issue within this window after a root change (DESIGN.md: 30 s),
    # so a rotation does not bring every agent's CSR in the same second.
    reissue_jitter_s: float = 30.0
    # An eligible node waits this long (times its rank among eligible alive
    # members, plus one) for an existing CA to arrive by gossip before making
    # one: long enough for a join's anti-entropy pull, short for a lone node.
    bootstrap_wait_s: float = 2.0
    # One RPC to one signer; on loopback or a LAN an answer takes milliseconds.
    rpc_timeout_s: float = 3.0
    # How long a leaf request keeps trying signers (a failed signer, an election
    # in progress, a catalog write still spreading) before it gives up.
    issue_deadline_s: float = 15.0
    # Decisions are re-made on every store or member change; this bounds the
    # delay of the time-driven ones (pruning, intermediate renewal, retries).
    reconcile_interval_s: float = 5.0
    # With no pinned root, the agent trusts the root the store shows (first
    # use) for this long before pinning it: long enough for two concurrent
    # bootstraps to converge on one config by gossip (well under a second on
    # a LAN), short because the store is all a first-use agent has to go on.
    first_use_window_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A configuration request (PUT /v1/connect/ca/configuration); None keeps a setting."""

    leaf_ttl_s: int | None = None
    csr_max_per_second: float | None = None
    ca_signers: int | None = None
    rotate: bool = False


@dataclass(frozen=True, slots=True)
class SignerStatus:
    """One row of `meshnode ca signers --all`."""

    node: str
    status: str  # elected, approved or pending
    alive: bool
    fingerprint: str  # of the key approved, or asked with while pending
    approved_by: str


@dataclass(frozen=True, slots=True)
class _OwnIntermediate:
    root_id: str
    cert_pem: str
    key_pem: str
    not_after_s: float


# A change applied on another node reaches this one by gossip in well under
# a second; the caller waits that long to read its own write.
_FORWARDED_CHANGE_WAIT_S = 5.0
# Passes over the signer list a leaf request makes before giving up.
_ISSUE_PASSES_MAX = 20
# Every signer saying "not the owner" for this long ends a request: the
# catalog write it waits for has had ample time to spread.
_NOT_OWNER_GIVE_UP_S = 3.0


class CAService:
    """This agent's part in the cluster's CA (see the module docstring)."""

    def __init__(
        self,
        state: ReplicatedState,
        nodes: NodeSource,
        catalog: ServiceOwners,
        *,
        node_name: str,
        node_id: str,
        datacenter: str,
        wire: Wire,
        counters: DriverCounters,
        keystore: KeyStore,
        member_addr: Callable[[str], Addr | None],
        local_host: Callable[[], str | None],
        settings: CASettings = CASettings(),
        provider: CAProvider | None = None,
        rng: random.Random,
        wall_clock: Callable[[], float],
        clock: Callable[[], float] = trio.current_time,
        connect: ca_rpc.Connect | None = None,
        pinned: Anchor | None = None,
        operator_root_id: str | None = None,
        save_pin: Callable[[Anchor], None] | None = None,
    ) -> None:
        self.state = state
        self.nodes = nodes
        self.catalog = catalog
        self.node_name = node_name
        self.node_id = node_id
        self.datacenter = datacenter
        self.wire = wire
        self.counters = counters
        self.keystore = keystore
        self.settings = settings
        self.provider: CAProvider = provider or BuiltinProvider()
        self._member_addr = member_addr
        self._local_host = local_host
        self._rng = rng
        self._wall_clock = wall_clock
        self._clock = clock
        self._connect = connect
        self._started_at = clock()
        self._intermediate: _OwnIntermediate | None = None
        self._bucket = TokenBucket(
            settings.csr_max_per_second, max(1.0, settings.csr_max_per_second), clock()
        )
        self._listeners: list[Callable[[], None]] = []
        self._wakeup = trio.Event()
        # The trust anchor (ca/anchor.py): the pinned root, the operator's, and
        # since when this agent trusts the store's root on first use.
        self._pinned = pinned
        self._operator_root_id = operator_root_id
        self._save_pin = save_pin
        self._first_use_since_s: float | None = None
        self._store_config_ok = False
        self._skipped: dict[str, MalformedCARecord] = {}
        # When this node last wrote back each held root's record (`_restore_root`).
        self._restored_at: dict[str, float] = {}
        self.view = CAView()
        self._refresh()
        state.tracker.subscribe(KIND, self._on_change)

    # --- following the store ---------------------------------------------------------------

    def on_view_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change of the CA records (the leaf manager's hook)."""
        self._listeners.append(listener)

    def _on_change(self, entries: list[Entry]) -> None:
        self._refresh()
        for listener in self._listeners:
            listener()
        self._wakeup.set()

    def anchors(self) -> tuple[Anchor, ...]:
        """The roots this agent trusts without the store; () while on first use."""
        found: tuple[Anchor, ...] = () if self._pinned is None else (self._pinned,)
        if self._operator_root_id is not None:
            found += (Anchor(self._operator_root_id),)
        return found

    def _refresh(self) -> None:
        view, skipped = read_view(self.state, self.anchors())
        if self._update_pin(view):
            view, skipped = read_view(self.state, self.anchors())
        # Counted and logged when first skipped (or skipped for a new reason), not
        # on every change: a gossip-key holder can write 4,096 of them.
        # (Decoded values are cached, so a record skipped again is the same object.)
        reasons = dict(skipped)
        for key, exc in reasons.items():
            before = self._skipped.get(key)
            if before is exc or (before is not None and str(before) == str(exc)):
                continue
            self.counters.add("ca.malformed_records")
            log(_log, "warning", "skipped a replicated CA record", key=key[:80], error=exc)
        self._skipped = reasons
        self._store_config_ok = view.config is not None
        overwritten = view.config_written or bool(self.anchors())
        if view.config is None and overwritten and self.view.config is not None:
            # An untrusted config replaced it, or (once pinned) it was deleted:
            # keep the last trusted one; the best signer writes it back, signed.
            view = replace(view, config=self.view.config)
        self.view = view
        if view.config is not None:
            self._bucket.set_rate(view.config.csr_max_per_second)

    def _update_pin(self, view: CAView) -> bool:
        """Pin the view's oldest trusted root when it changed; True when the anchors did."""
        candidate = view.pin
        if candidate is None or candidate == self._pinned:
            return False
        if self._pinned is None and self._operator_root_id is None:
            now_s = self._wall_clock()
            if self._first_use_since_s is None:
                if self._alone():
                    # A lone agent's pin protects nothing yet, and pinning would
                    # split the CA when it later joins another lone bootstrap.
                    return False
                self._first_use_since_s = now_s
                log(_log, "info", "trusting the CA root on first use", root=candidate.root_id)
            if now_s - self._first_use_since_s < self.settings.first_use_window_s:
                return False
        self._pinned = candidate
        if self._save_pin is not None:
            self._save_pin(candidate)
        self._count("root.pinned")
        log(_log, "info", "pinned the CA root", root=candidate.root_id)
        return True

    def _alone(self) -> bool:
        """Whether no other member is alive: the first-use window waits for one."""
        return not any(n.healthy and n.name != self.node_name for n in self.nodes.nodes())

    def index(self) -> int:
        """The blocking-query index of CA reads (at least 1)."""
        return max(1, self.state.tracker.topic_index(KIND))

    async def wait(self, index: int, timeout_s: float) -> int:
        return max(1, await self.state.tracker.wait(KIND, index, timeout_s))

    def signers(self) -> list[str]:
        """Node names of the active signers, best first."""
        return signers_for(self.view, self.nodes.nodes())

    def roots(self) -> Roots | None:
        """The trust bundle now: active root first, then those still trusted."""
        view = self.view
        if view.config is None or view.active is None:
            return None
        trusted = view.trusted(self._wall_clock())
        return Roots(view.active.id, view.config.trust_domain, tuple(r.cert_pem for r in trusted))

    def spiffe_id(self, service: str) -> str:
        config = self.view.config
        if config is None:
            raise LeafError("the cluster has no CA yet (no signer-eligible agent has started)")
        try:
            return ServiceID(config.trust_domain, self.datacenter, service).uri
        except SpiffeError as exc:
            raise LeafError(str(exc)) from None

    def service_from_uri(self, uri: str) -> str:
        """The service of a client certificate URI in *our* trust domain (authorize's parser).

        `InvalidCertURI` (one line) for anything else: not a SPIFFE service ID,
        an agent ID, another cluster's trust domain, or no CA yet.
        """
        try:
            parsed = parse_spiffe_id(uri)
        except SpiffeError as exc:
            raise InvalidCertURI(f"client certificate URI: {exc}") from None
        if not isinstance(parsed, ServiceID):
            raise InvalidCertURI(f"client certificate URI {uri[:100]!r} is not a service ID")
        config = self.view.config
        if config is None:
            raise InvalidCertURI("this cluster has no CA yet: no trust domain to check against")
        if parsed.trust_domain != config.trust_domain:
            raise InvalidCertURI(
                f"client certificate URI is in trust domain {parsed.trust_domain[:100]!r}, "
                f"not this cluster's {config.trust_domain!r}"
            )
        try:
            return validate_name(parsed.service, "service")
        except IntentionError as exc:
            raise InvalidCertURI(f"client certificate URI: {exc}") from None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    def _count(self, name: str) -> None:
        self.counters.add(f"ca.{name}")

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile on every store or member change, and every `reconcile_interval_s`."""
        if self.settings.eligible:
            # What an operator compares before `meshnode ca signers approve`.
            log(
                _log, "info", "signer identity", node=self.node_name, fingerprint=self.fingerprint()
            )
        task_status.started()
        seen = 0
        while True:
            # A fresh event first: a change during the reconcile must wake the next one.
            self._wakeup = trio.Event()
            try:
                await self.reconcile()
            except (KeyStoreError, ProviderError, PemError, LocalProtocolError) as exc:
                self._count("reconcile.failed")
                log(_log, "warning", "CA reconcile failed", reason=str(exc))
            with trio.move_on_after(self._next_reconcile_in_s()):
                async with trio.open_nursery() as nursery:

                    async def watch(index: int = seen) -> None:
                        await self.state.tracker.wait(TOPIC_MEMBERS, index, 1e9)
                        nursery.cancel_scope.cancel()

                    async def poked() -> None:
                        await self._wakeup.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watch)
                    nursery.start_soon(poked)
            seen = self.state.tracker.topic_index(TOPIC_MEMBERS)

    def _next_reconcile_in_s(self) -> float:
        """The regular interval, or sooner when a bootstrap falls due before it."""
        interval_s = self.settings.reconcile_interval_s
        if self.view.config is not None or not self.settings.eligible:
            return interval_s
        due_in_s = self._bootstrap_at() - self._clock()
        return min(interval_s, max(0.05, due_in_s))

    async def reconcile(self) -> None:
        """Re-make every decision from the store and the member list."""
        if self._update_pin(self.view):
            self._refresh()
        if self.view.config is None:
            # A pinned root or any config in the store means the cluster has a
            # CA: never make another one beside it.
            fresh = not self.anchors() and not self.view.config_written
            if not (fresh and self.settings.eligible and self._bootstrap_due()):
                return
            self.bootstrap()
        view = self.view
        if self.settings.eligible:
            self._keep_request(view)
            await self._keep_root_keys(view)
            if self.settings.signer_token is not None:
                self._approve_by_token(self.view)
        signers = self.signers()
        if self.node_name in signers:
            self._ensure_intermediate(self.view)
        else:
            self._retire_own_intermediate()
        if signers and signers[0] == self.node_name:
            self._housekeeping(self.view, set(signers))
            self._resign_approvals(self.view)
            self._keep_config_signed(self.view)

    # --- bootstrap ---------------------------------------------------------------------------

    def _bootstrap_at(self) -> float:
        """When this node may bootstrap: later for each eligible member ranked before it."""
        eligible = [n.name for n in eligible_nodes(self.nodes.nodes())]
        return bootstrap_at(
            self._started_at, self.settings.bootstrap_wait_s, eligible, self.node_name
        )

    def _bootstrap_due(self) -> bool:
        return self._clock() >= self._bootstrap_at()

    def bootstrap(self) -> CAConfigRecord:
        """Make a cluster id, trust domain and root; the key stays in this node's data dir."""
        cluster_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        trust_domain = trust_domain_for(cluster_id)
        root = self.provider.generate_root(trust_domain, now=self._now(), ttl_s=ROOT_TTL_S)
        now_s = self._wall_clock()
        record = RootRecord(
            id=root.id,
            cluster_id=cluster_id,
            cert_pem=root.cert_pem,
            generation=1,
            created_at_s=now_s,
            created_by=self.node_name,
        )
        # Key first: a root in the store always has a key somewhere.
        self._take_root_key(record, root.key_pem)
        config = CAConfigRecord(
            cluster_id=cluster_id,
            trust_domain=trust_domain,
            leaf_ttl_s=self.settings.leaf_ttl_s,
            csr_max_per_second=self.settings.csr_max_per_second,
            ca_signers=self.settings.ca_signers,
            updated_by=self.node_name,
            updated_at_s=now_s,
        )
        config = sign_config(config, root.id, root.key_pem)
        self.state.put(KIND, root_key(root.id), encode_root(record))
        self.state.put(KIND, CONFIG_KEY, encode_config(config))
        # The first signer approves itself with the root it just made.
        self._write_approval(root.key_pem, root.id, self._own_request())
        self._count("bootstrapped")
        log(_log, "info", "CA bootstrapped", cluster_id=cluster_id, root=root.id[:23])
        return config

    # --- root keys ---------------------------------------------------------------------------

    async def _keep_root_keys(self, view: CAView) -> None:
        """Hold the active root key; keep every held key until its root is finished."""
        for root_id in sorted(self.keystore.held()):
            self._keep_root_key(view, root_id)
        active = view.active
        if active is None or self.keystore.load(active.id) is not None:
            return
        if self._my_approval(view) is not None:
            await self._fetch_root_key(active)

    def _keep_root_key(self, view: CAView, root_id: str) -> None:
        """Custody of one held root key (`ca/custody.py`): a record gone is no reason to drop it."""
        held = self._held_root(view, root_id)
        if held is None:
            return  # a key whose root this node never saw trusted: kept, never guessed at
        config = view.config
        if held.retire_at_s is None and config is not None:
            successor = successor_of(held.record, view.roots)
            if successor is not None:
                held = replace(held, retire_at_s=retire_at_s(successor, config.leaf_ttl_s))
                self.keystore.save_record(root_id, encode_held(held))
        why = finished(held, self._wall_clock())
        if why is None and lost_bootstrap(held, pinned=bool(self.anchors()), config=config):
            why = "another bootstrap won"
            self.state.delete_many(KIND, [root_key(root_id)])
        if why is not None:
            self.keystore.delete(root_id)
            self._count("root_key.dropped")
            log(_log, "info", "dropped a root key", root=root_id[:23], reason=why)
        elif held.retire_at_s is None and view.root(root_id) is None:
            self._restore_root(held)

    def _held_root(self, view: CAView, root_id: str) -> HeldRoot | None:
        """This node's copy of a held root's record, made from the view when it has none."""
        data = self.keystore.load_record(root_id)
        if data is not None:
            try:
                return decode_held(root_id, data)
            except MalformedCARecord as exc:
                log(_log, "warning", "a local root record is damaged", root=root_id[:23], error=exc)
        trusted = view.root(root_id)
        if trusted is None:
            return None
        held = HeldRoot(trusted)
        self.keystore.save_record(root_id, encode_held(held))
        return held

    def _restore_root(self, held: HeldRoot) -> None:
        """Write back a held, current root whose record was deleted or made untrusted.

        At most once per reconcile interval per root: a node whose view lags
        (its chain of roots broken) and the best signer, which deletes roots
        it does not trust, must not trade writes in a loop.
        """
        root_id = held.record.id
        value = encode_root(held.record)
        stored = self.state.store.get(KIND, root_key(root_id))
        if stored is not None and stored.value == value:
            return  # ours already: nothing a write would fix
        now = self._clock()
        last = self._restored_at.get(root_id)
        if last is not None and now - last < self.settings.reconcile_interval_s:
            return
        self._restored_at[root_id] = now
        self.state.put(KIND, root_key(root_id), value)
        self._count("root.restored")
        log(
            _log,
            "warning",
            "wrote back a root record that was deleted or tampered with",
            root=root_id[:23],
        )

    def _take_root_key(self, record: RootRecord, key_pem: str) -> None:
        """Save a root key with this node's copy of its record, before the key is used."""
        self.keystore.save(record.id, key_pem)
        self.keystore.save_record(record.id, encode_held(HeldRoot(record)))

    async def _fetch_root_key(self, root: RootRecord) -> bool:
        approved = [n.name for n in approved_nodes(self.view, self.nodes.nodes())]
        for name in root_key_sources(self.node_name, self.signers(), approved):
            reply = await self._ask(name, RootKeyRequest(self.node_name, root.id))
            if not isinstance(reply, RootKey) or reply.root_id != root.id:
                continue
            try:
                key_pem = open_sealed(
                    self.keystore.identity_key(),
                    reply.sealed_key,
                    _root_key_aad(root.id, self.node_name),
                ).decode("ascii")
                key = key_from_pem(key_pem)
                if key.public_key() != cert_from_pem(root.cert_pem).public_key():
                    self._count("root_key.mismatch")
                    continue
            except (PemError, SealError, UnicodeDecodeError):
                self._count("root_key.mismatch")
                continue
            self._take_root_key(root, key_pem)
            self._count("root_key.fetched")
            log(_log, "info", "root key fetched", root=root.id[:23], peer=name)
            return True
        return False

    # --- signer approvals -------------------------------------------------------------------

    def fingerprint(self) -> str:
        """This node's identity key fingerprint (what `approve --fingerprint` checks)."""
        return fingerprint(public_der(self.keystore.identity_key().public_key()))

    def _own_request(self) -> SignerRequest:
        der = public_der(self.keystore.identity_key().public_key())
        token = self.settings.signer_token
        proof = b"" if token is None else token_proof(token, self.node_name, self.node_id, der)
        return SignerRequest(self.node_name, self.node_id, der, self._wall_clock(), proof)

    def _my_approval(self, view: CAView) -> SignerApproval | None:
        """Our verified approval, if it names our node id and identity key."""
        found = view.approval(self.node_name)
        if found is None or found.node_id != self.node_id:
            return None
        if found.public_key_der != public_der(self.keystore.identity_key().public_key()):
            return None
        return found

    def _keep_request(self, view: CAView) -> None:
        """Ask to be a signer while not approved; withdraw the request once approved."""
        published = view.request(self.node_name)
        if self._my_approval(view) is not None:
            if published is not None:
                self.state.delete_many(KIND, [request_key(self.node_name)])
            return
        wanted = self._own_request()
        if published is None or replace(published, requested_at_s=0.0) != replace(
            wanted, requested_at_s=0.0
        ):
            self.state.put(KIND, request_key(self.node_name), encode_request(wanted))
            log(
                _log,
                "info",
                "asked to be a CA signer; an approved signer must approve this node",
                fingerprint=fingerprint(wanted.public_key_der),
            )

    def _write_approval(self, root_key_pem: str, root_id: str, request: SignerRequest) -> None:
        approval = sign_approval(
            root_key_pem,
            root_id,
            request,
            approved_by=self.node_name,
            now_wall_s=self._wall_clock(),
        )
        self.state.put(KIND, approval_key(request.node), encode_approval(approval))

    def _active_key(self, view: CAView) -> tuple[str, str] | None:
        """(active root id, its key) when this node is approved and holds the key."""
        if view.active is None or self._my_approval(view) is None:
            return None
        key_pem = self.keystore.load(view.active.id)
        return None if key_pem is None else (view.active.id, key_pem)

    def _approve_by_token(self, view: CAView) -> None:
        """Approve pending requests that prove the signer token this node was given."""
        token, held = self.settings.signer_token, self._active_key(view)
        if token is None or held is None:
            return
        for request in view.requests:
            current = view.approval(request.node)
            if current is not None and current.public_key_der == request.public_key_der:
                continue
            if not token_proof_ok(token, request):
                continue
            self._write_approval(held[1], held[0], replace(request, proof=b""))
            self._count("signer.approved")
            log(_log, "info", "signer approved", node=request.node[:80], by="signer token")

    def _keep_config_signed(self, view: CAView) -> None:
        """Write the config back signed by the active root: after a forgery, or an old root's."""
        held, config = self._active_key(view), view.config
        if held is None or config is None:
            return
        if self._store_config_ok and config.root_id == held[0]:
            return
        self.state.put(KIND, CONFIG_KEY, encode_config(sign_config(config, held[0], held[1])))
        self._count("config.resigned")
        log(_log, "info", "config re-signed with the active root", root=held[0][:23])

    def _resign_approvals(self, view: CAView) -> None:
        """Re-sign approvals made under an older root, before that root is pruned."""
        held = self._active_key(view)
        if held is None:
            return
        for approval in view.approvals:
            if approval.root_id != held[0]:
                request = SignerRequest(
                    approval.node, approval.node_id, approval.public_key_der, 0.0
                )
                self._write_approval(held[1], held[0], request)

    def approve(self, node: str, expected_fingerprint: str | None = None) -> SignerApproval:
        """Approve `node`'s pending request here (the operator's `ca signers approve`).

        Only an approved signer holding the active root key can: the approval
        is signed with it. `CAError` (one line) otherwise.
        """
        view = self.view
        held = self._active_key(view)
        if held is None:
            raise CAError(
                f"{self.node_name} is not an approved signer holding the active root key: "
                "run this against a signer (meshnode ca signers lists them)"
            )
        request = view.request(node)
        current = view.approval(node)
        if request is None:
            if current is not None:
                return current
            raise CAError(
                f"no signer request from {node[:80]!r}: start it with -signer and let it join"
            )
        found = fingerprint(request.public_key_der)
        if (
            current is not None
            and current.public_key_der != request.public_key_der
            and expected_fingerprint is None
        ):
            # Anyone with the gossip key can write a request naming an approved node.
            raise CAError(
                f"{node[:80]!r} is approved with key {fingerprint(current.public_key_der)}; "
                f"a request names key {found}: pass --fingerprint {found} to replace it"
            )
        if expected_fingerprint is not None and expected_fingerprint.lower() != found:
            raise CAError(
                f"{node[:80]!r} asks with key {found}, not {expected_fingerprint[:100]}: "
                "not approved"
            )
        self._write_approval(held[1], held[0], replace(request, proof=b""))
        self._count("signer.approved")
        log(_log, "info", "signer approved", node=node[:80], fingerprint=found, by="operator")
        approval = self.view.approval(node)
        assert approval is not None  # just written and verified by the refresh
        return approval

    def revoke(self, node: str) -> None:
        """Withdraw `node`'s approval here; it is no longer elected nor sent root keys."""
        if self._active_key(self.view) is None:
            raise CAError(
                f"{self.node_name} is not an approved signer holding the active root key: "
                "run this against a signer (meshnode ca signers lists them)"
            )
        if self.view.approval(node) is None:
            raise CAError(f"{node[:80]!r} is not an approved signer")
        self.state.delete_many(KIND, [approval_key(node)])
        self._count("signer.revoked")
        log(_log, "info", "signer approval revoked", node=node[:80])

    def signer_table(self) -> list[SignerStatus]:
        """Every node that asks to sign or is approved: elected, approved or pending."""
        view, members = self.view, {n.name: n for n in self.nodes.nodes()}
        elected = set(self.signers())
        names = {a.node for a in view.approvals} | {r.node for r in view.requests}
        names |= {n.name for n in eligible_nodes(members.values())}
        rows = []
        for name in sorted(names):
            member = members.get(name)
            approval = view.approved(member) if member is not None else view.approval(name)
            request = view.request(name)
            if name in elected:
                status = "elected"
            elif approval is not None and (
                request is None or request.public_key_der == approval.public_key_der
            ):
                status = "approved"
            else:
                status = "pending"
            der = request.public_key_der if status == "pending" and request else None
            if der is None and approval is not None:
                der = approval.public_key_der
            rows.append(
                SignerStatus(
                    node=name,
                    status=status,
                    alive=member is not None and member.state == "alive",
                    fingerprint=fingerprint(der) if der is not None else "",
                    approved_by=approval.approved_by if approval is not None else "",
                )
            )
        return rows

    # --- intermediates -----------------------------------------------------------------------

    def _ensure_intermediate(self, view: CAView) -> None:
        active, config = view.active, view.config
        if active is None or config is None:
            return
        own = self._intermediate
        if own is None or intermediate_due(
            own_root_id=own.root_id,
            own_not_after_s=own.not_after_s,
            active_root_id=active.id,
            leaf_ttl_s=config.leaf_ttl_s,
            now_wall_s=self._wall_clock(),
        ):
            key_pem = self.keystore.load(active.id)
            if key_pem is None:
                return  # not ready until the root key is fetched; peers sign meanwhile
            key = generate_key()
            cert_pem = self.provider.sign_intermediate(
                RootCA(active.cert_pem, key_pem),
                key.public_key(),
                signer_node=self.node_name,
                now=self._now(),
                ttl_s=config.intermediate_ttl_s,
            )
            not_after_s = cert_from_pem(cert_pem).not_valid_after_utc.timestamp()
            own = _OwnIntermediate(active.id, cert_pem, key_to_pem(key), not_after_s)
            self._intermediate = own
            self._count("intermediate.issued")
            log(_log, "info", "intermediate issued", root=active.id[:23])
        published = view.intermediate(self.node_name)
        if published is None or published.cert_pem != own.cert_pem:
            record = IntermediateRecord(
                self.node_name, own.root_id, own.cert_pem, self._wall_clock()
            )
            self.state.put(KIND, intermediate_key(self.node_name), encode_intermediate(record))

    def _retire_own_intermediate(self) -> None:
        self._intermediate = None
        if self.view.intermediate(self.node_name) is not None:
            self.state.delete_many(KIND, [intermediate_key(self.node_name)])
            self._count("intermediate.retired")

    def _housekeeping(self, view: CAView, signers: set[str]) -> None:
        now_s = self._wall_clock()
        retired = [intermediate_key(i.node) for i in view.intermediates if i.node not in signers]
        stale = [
            intermediate_key(i.node)
            for i in view.intermediates
            if i.node in signers and view.root(i.root_id) is None
        ]
        if retired or stale:
            self.state.delete_many(KIND, retired + stale)
            self.counters.add("ca.intermediate.retired", len(retired) + len(stale))
        if view.bad_approvals:
            self.state.delete_many(KIND, list(view.bad_approvals))
            self.counters.add("ca.signer.bad_approvals_deleted", len(view.bad_approvals))
        doomed = [root_key(r.id) for r in view.expired(now_s)]
        doomed += [root_key(r.id) for r in view.stray_roots]
        if doomed:
            self.state.delete_many(KIND, doomed)
            self.counters.add("ca.root.pruned", len(doomed))
            log(_log, "info", "pruned roots", count=len(doomed))

    # --- serving peers -----------------------------------------------------------------------

    async def serve(self, stream: trio.abc.Stream, peer: Addr, first: bytes) -> None:
        """The gossip driver's handler for `ca_rpc.STREAM_CA` streams."""
        await ca_rpc.serve_stream(
            stream,
            peer,
            first,
            wire=self.wire,
            handle=self.handle,
            counters=self.counters,
            timeout_s=self.settings.rpc_timeout_s * 3,
        )

    async def handle(self, request: Request, peer: Addr) -> Reply:
        """Answer one request; the TCP peer must be the address its node gossips."""
        reply = self._answer(request, peer)
        if isinstance(reply, Refusal):
            self._count(f"refused.{reply.code}")
            log(
                _log,
                "info",
                "refused a CA request",
                op=type(request).__name__,
                node=request.node[:80],
                code=reply.code,
                reason=reply.reason,
            )
        return reply

    def _answer(self, request: Request, peer: Addr) -> Reply:
        node = self.nodes.node(request.node)
        if node is None:
            return Refusal("forbidden", f"{request.node[:80]!r} is not a member of this cluster")
        if node.address != peer.host:
            return Refusal(
                "forbidden",
                f"the request comes from {peer.host}, but node {node.name} gossips {node.address}",
            )
        match request:
            case SignRequest():
                return self._sign(request, node)
            case RootKeyRequest():
                return self._give_root_key(request, node)
            case ConfigureRequest():
                return self._configure_here(request)

    def _sign(self, request: SignRequest, node: NodeInfo) -> Reply:
        view, config = self.view, self.view.config
        own = self._intermediate
        check = SignCheck(
            me=self.node_name,
            signers=self.signers(),
            has_ca=config is not None,
            active_root_id=None if view.active is None else view.active.id,
            own_root_id=None if own is None else own.root_id,
        )
        owners = {v.node.name for v in self.catalog.service_nodes(request.service)}
        owners |= {v.node.name for v in self.catalog.service_nodes(request.service, connect=True)}
        refused = sign_refusal(
            check,
            self._bucket,
            node=node.name,
            service=request.service,
            owners=owners,
            now=self._clock(),
        )
        if refused is not None:
            return Refusal(refused.code, refused.reason)
        assert config is not None and view.active is not None and own is not None
        try:
            expected = ServiceID(config.trust_domain, node.datacenter, request.service)
            csr = validate_csr(request.csr_pem, expected=expected)
        except (CSRError, SpiffeError) as exc:
            self._count("csr.bad")
            return Refusal("bad_csr", str(exc))
        leaf = self.provider.sign_leaf(
            own.cert_pem, own.key_pem, csr, now=self._now(), ttl_s=config.leaf_ttl_s
        )
        self._count("sign.ok")
        chain = (own.cert_pem,) + ((view.active.cross_pem,) if view.active.cross_pem else ())
        return Signed(leaf, chain, view.active.id)

    def _give_root_key(self, request: RootKeyRequest, node: NodeInfo) -> Reply:
        approval = self.view.approved(node)
        if node.state != "alive" or approval is None:
            return Refusal(
                "forbidden",
                f"node {node.name} is not an approved signer "
                f"(an operator approves it: meshnode ca signers approve {node.name})",
            )
        key_pem = self.keystore.load(request.root_id)
        if key_pem is None:
            return Refusal("no_key", f"{self.node_name} does not hold root {request.root_id[:23]}")
        # Sealed to the approved identity key: only that node opens it,
        # whoever asked from its address and whoever reads the stream.
        sealed = seal(
            identity_public_key(approval.public_key_der),
            key_pem.encode("ascii"),
            _root_key_aad(request.root_id, node.name),
        )
        self._count("root_key.served")
        log(_log, "info", "root key sent", root=request.root_id[:23], to=node.name)
        return RootKey(request.root_id, sealed)

    # --- configuration and rotation ----------------------------------------------------------

    def _configure_here(self, request: ConfigureRequest) -> Reply:
        """Apply a change here; this node must be an approved signer (holding the key to rotate)."""
        view, config = self.view, self.view.config
        if not self.settings.eligible or self._my_approval(view) is None:
            return Refusal("forbidden", f"{self.node_name} is not an approved signer")
        if config is None or view.active is None:
            return Refusal("no_ca", "the cluster has no CA yet")
        active = view.active
        if request.rotate:
            key_pem = self.keystore.load(active.id)
            if key_pem is None:
                return Refusal("no_key", f"{self.node_name} does not hold the active root key")
            new_root = self.provider.generate_root(
                config.trust_domain, now=self._now(), ttl_s=ROOT_TTL_S
            )
            cross_pem = self.provider.cross_sign(
                RootCA(active.cert_pem, key_pem), new_root.cert_pem, now=self._now()
            )
            record = RootRecord(
                id=new_root.id,
                cluster_id=config.cluster_id,
                cert_pem=new_root.cert_pem,
                generation=active.generation + 1,
                created_at_s=self._wall_clock(),
                created_by=self.node_name,
                cross_pem=cross_pem,
                previous_id=active.id,
            )
            self._take_root_key(record, new_root.key_pem)
            self.state.put(KIND, root_key(new_root.id), encode_root(record))
            self._count("root.rotated")
            log(_log, "info", "root rotated", old=active.id[:23], new=new_root.id[:23])
            active = record
        changed = replace(
            config,
            leaf_ttl_s=request.leaf_ttl_s or config.leaf_ttl_s,
            csr_max_per_second=request.csr_max_per_second or config.csr_max_per_second,
            ca_signers=request.ca_signers or config.ca_signers,
        )
        if changed != config or request.rotate:
            # Signed by the active root (the new one after a rotation): agents
            # accept no config that a trusted root's key did not sign.
            key_pem = self.keystore.load(active.id)
            if key_pem is None:
                return Refusal("no_key", f"{self.node_name} does not hold the active root key")
            stamped = replace(changed, updated_by=self.node_name, updated_at_s=self._wall_clock())
            signed = sign_config(stamped, active.id, key_pem)
            self.state.put(KIND, CONFIG_KEY, encode_config(signed))
        return Configured(active.id)

    async def configure(self, change: ConfigChange) -> str:
        """Apply `change` here if this node can, else on a signer; the active root id after."""
        request = ConfigureRequest(
            self.node_name,
            leaf_ttl_s=change.leaf_ttl_s,
            csr_max_per_second=change.csr_max_per_second,
            ca_signers=change.ca_signers,
            rotate=change.rotate,
        )
        if self.view.config is None:
            raise CAError("the cluster has no CA yet (no signer-eligible agent has started)")
        reasons: list[str] = []
        if self.settings.eligible:
            try:
                reply = self._configure_here(request)
            except LocalProtocolError as exc:  # the CA's room in the store is full
                raise CAError(f"the CA records do not fit in the store: {exc}") from None
            if isinstance(reply, Configured):
                return reply.active_root_id
            reasons.append(f"{self.node_name}: {_reason(reply)}")
        others = [n for n in self.signers() if n != self.node_name]
        others += [
            n.name
            for n in approved_nodes(self.view, self.nodes.nodes())
            if n.name != self.node_name and n.name not in others
        ]
        for name in others:
            reply = await self._ask(name, request)
            if isinstance(reply, Configured):
                await self._see_active_root(reply.active_root_id)
                return reply.active_root_id
            reasons.append(f"{name}: {_reason(reply)}")
        if not reasons:
            raise CAError("no approved signer is alive to apply the change")
        raise CAError("no approved signer could apply the change (" + "; ".join(reasons) + ")")

    async def _see_active_root(self, root_id: str) -> None:
        """Wait (bounded) until gossip brings a change made elsewhere: read-your-writes."""
        with trio.move_on_after(_FORWARDED_CHANGE_WAIT_S):
            while self.view.active is None or self.view.active.id != root_id:
                await self.state.tracker.wait(KIND, self.state.tracker.topic_index(KIND), 1e9)

    # --- leaf requests -----------------------------------------------------------------------

    async def _ask(self, name: str, request: Request) -> Reply:
        """One RPC to member `name`; unreachable peers become a refusal-like reply."""
        if name == self.node_name:
            me = self._member_addr(name)
            return await self.handle(request, me or Addr(self._local_host() or "", 0))
        addr = self._member_addr(name)
        if addr is None:
            return Refusal("bad_request", f"{name} is not a known member")
        try:
            return await ca_rpc.call(
                addr,
                request,
                wire=self.wire,
                local_host=self._local_host(),
                timeout_s=self.settings.rpc_timeout_s,
                connect=self._connect or ca_rpc.open_tcp,
            )
        except RpcUnreachable as exc:
            self._count("rpc.unreachable")
            return Refusal("not_ready", f"unreachable: {exc}")

    async def issue(self, service: str, csr_pem: str) -> Issued:
        """Send a CSR to the current signers in order until one signs it (the leaf manager's)."""
        deadline = self._clock() + self.settings.issue_deadline_s
        not_owner_since: float | None = None
        reasons: dict[str, str] = {}
        codes: dict[str, str] = {}
        for _ in range(_ISSUE_PASSES_MAX):
            signers = self.signers()
            if not signers:
                reasons["cluster"] = "no signer is elected (no signer-eligible alive member)"
            for name in signers:
                reply = await self._ask(name, SignRequest(self.node_name, service, csr_pem))
                if isinstance(reply, Signed):
                    return Issued(reply.leaf_pem, reply.chain_pems, reply.root_id)
                if not isinstance(reply, Refusal):
                    continue
                if reply.code in ("bad_csr", "bad_request"):
                    raise LeafError(f"{name} refused the CSR: {reply.reason}")
                # A transient "retry" must not hide why this signer said no before.
                if reply.code != "rate_limited" or codes.get(name) is None:
                    reasons[name], codes[name] = reply.reason, reply.code
            all_not_owner = bool(signers) and all(codes.get(n) == "not_owner" for n in signers)
            now = self._clock()
            if all_not_owner:
                not_owner_since = now if not_owner_since is None else not_owner_since
                if now - not_owner_since >= _NOT_OWNER_GIVE_UP_S:
                    break
            else:
                not_owner_since = None
            if now >= deadline:
                break
            await trio.sleep(min(0.25, max(0.0, deadline - now)))
        self._count("issue.failed")
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no signer answered"
        raise LeafError(f"no signer issued a leaf for {service!r} ({detail})")


def _root_key_aad(root_id: str, node: str) -> bytes:
    """What a sealed root key is bound to: which root, for which node."""
    return f"meshnode root key|{root_id}|{node}".encode()


def _reason(reply: Reply) -> str:
    return reply.reason if isinstance(reply, Refusal) else f"unexpected {type(reply).__name__}"


def owned_service_names(records: Iterable[ServiceRecord]) -> set[str]:
    """Names a node may get leaves for: its services and the destinations of its proxies."""
    names: set[str] = set()
    for record in records:
        names.add(record.name)
        proxy = record.proxy
        if proxy is not None and proxy.destination_service_name:
            names.add(proxy.destination_service_name)
    return names
