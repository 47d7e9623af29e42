"""The CA's replicated records (kind ``"ca"``) and the pure decisions made from them.

Rules that live here:

- Five kinds of key, all public material; a private key is never in the store:
  - ``config``: the cluster id, trust domain and cluster-wide CA settings
    (leaf TTL, CSR rate, how many signers), signed by the key of a root
    (``root_id``, ``signature``). One last-writer-wins register: two
    bootstraps at once resolve to the higher store version.
  - ``root/<id>``: one root certificate, written once by the eligible node
    that made it, with its *generation* (1 at bootstrap, +1 per rotation),
    its creation wall time, and for a rotated-in root the certificate of the
    new root cross-signed by the previous one.
  - ``intermediate/<node>``: the intermediate certificate of an active
    signer, written by that signer, for the root it was issued under.
  - ``signer-request/<node>`` and ``signer/<node>``: a node's request to
    be a signer and its approval, signed by a root (`ca/approval.py`).
- Every holder of the gossip key can write these records, so the view
  keeps only the roots this agent trusts (`ca/anchor.py`: its pinned root
  and roots cross-signed from it) and a ``config`` signed by one of them.
  The active root is the trusted root with the highest (generation, id);
  roots are never edited, so a rotation and a prune can never overwrite
  each other. Any other root (a losing bootstrap's, a forgery) is stray:
  ignored, then deleted.
- A root that is no longer active stays trusted until ``2 x leaf TTL`` after
  the root that replaced it was made, so every leaf issued under it has
  expired by then; after that it is pruned.
- Values are strict CBOR maps (`load_strict`), at most `VALUE_MAX_BYTES`;
  unknown map keys are ignored so a newer agent can add fields. A value that
  does not decode, or a certificate whose id does not match its key, is
  skipped and counted, never raised out of a merge.
- Signers: the `ca_signers` alive members that ask to sign (``"signer":
  true`` in their meta) *and* hold a verified approval, with the highest
  rendezvous hash of (cluster id, node id) (`ca/election.py`), so every
  node computes the same set from the same member list.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..store.state import NodeInfo, ReplicatedState
from .anchor import Anchor, chain_origin, trusted_roots
from .approval import (
    APPROVAL_PREFIX,
    REQUEST_PREFIX,
    SignerApproval,
    SignerRequest,
    approval_verifies,
    decode_approval,
    decode_request,
    root_signed,
)
from .election import signer_set
from .fields import (
    PEM_MAX_CHARS,
    TEXT_MAX_CHARS,
    MalformedCARecord,
    blob,
    dump,
    integer,
    load_cert,
    load_map,
    malformed,
    number,
    optional_text,
    text,
)
from .pem import colon_hex, key_from_pem

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_CSR_MAX_PER_SECOND",
    "DEFAULT_INTERMEDIATE_TTL_S",
    "DEFAULT_LEAF_TTL_S",
    "DEFAULT_SIGNERS",
    "KIND",
    "META_SIGNER",
    "CAConfigRecord",
    "CAView",
    "IntermediateRecord",
    "MalformedCARecord",
    "RootRecord",
    "approved_nodes",
    "cert_id",
    "config_verifies",
    "decode_config",
    "decode_intermediate",
    "decode_root",
    "eligible_nodes",
    "encode_config",
    "encode_intermediate",
    "encode_root",
    "forget_decoded",
    "intermediate_key",
    "read_view",
    "rfc3339",
    "root_key",
    "sign_config",
    "signers_for",
]

KIND = "ca"
CONFIG_KEY = "config"
_ROOT_PREFIX = "root/"
_INTERMEDIATE_PREFIX = "intermediate/"
# The gossip meta entry that makes a member eligible to sign.
META_SIGNER = "signer"

# Consul's defaults: a 72 h leaf, 50 CSRs/s per signer (its CSRMaxPerSecond);
# three signers survive two failures without any election traffic.
DEFAULT_LEAF_TTL_S = 72 * 3600
DEFAULT_CSR_MAX_PER_SECOND = 50.0
DEFAULT_SIGNERS = 3
# Consul's IntermediateCertTTL (8760 h): a signer re-issues itself a fresh one
# long before, and on every rotation.
DEFAULT_INTERMEDIATE_TTL_S = 365 * 24 * 3600
# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CAConfigRecord:
    """The cluster's CA identity and settings (the ``config`` key)."""

    cluster_id: str
    trust_domain: str
    leaf_ttl_s: int = DEFAULT_LEAF_TTL_S
    csr_max_per_second: float = DEFAULT_CSR_MAX_PER_SECOND
    ca_signers: int = DEFAULT_SIGNERS
    intermediate_ttl_s: int = DEFAULT_INTERMEDIATE_TTL_S
    updated_by: str = ""
    updated_at_s: float = 0.0
    # The root whose key signed the fields above, and its ECDSA signature.
    root_id: str = ""
    signature: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class RootRecord:
    """One root certificate; `cross_pem` is it signed by the root of `previous_id`."""

    id: str
    cluster_id: str
    cert_pem: str
    generation: int
    created_at_s: float
    created_by: str
    cross_pem: str = ""
    previous_id: str = ""

    @property
    def rank(self) -> tuple[int, str]:
        """The order of roots: the highest rank of a cluster is the active root."""
        return (self.generation, self.id)


@dataclass(frozen=True, slots=True)
class IntermediateRecord:
    """A signer's intermediate certificate under root `root_id`."""

    node: str
    root_id: str
    cert_pem: str
    created_at_s: float


def root_key(root_id: str) -> str:
    return _ROOT_PREFIX + root_id


def intermediate_key(node: str) -> str:
    return _INTERMEDIATE_PREFIX + node


def cert_id(cert_pem: str) -> str:
    """A root's id, as `RootCA.id` computes it: the colon-hex SHA-256 fingerprint."""
    return colon_hex(load_cert(cert_pem).fingerprint(hashes.SHA256()))


_CONFIG_SIGNED_WHAT = "meshnode ca config v1"
# An ECDSA P-256 signature is at most 72 bytes in DER.
_SIGNATURE_MAX_BYTES = 160


def _config_fields(record: CAConfigRecord) -> dict[str, Any]:
    return {
        "cluster_id": record.cluster_id,
        "trust_domain": record.trust_domain,
        "leaf_ttl_s": record.leaf_ttl_s,
        "csr_max_per_second": float(record.csr_max_per_second),
        "ca_signers": record.ca_signers,
        "intermediate_ttl_s": record.intermediate_ttl_s,
        "updated_by": record.updated_by,
        "updated_at_s": float(record.updated_at_s),
    }


def _config_signed_bytes(record: CAConfigRecord, root_id: str) -> bytes:
    return dump({"what": _CONFIG_SIGNED_WHAT, "root_id": root_id, **_config_fields(record)})


def sign_config(record: CAConfigRecord, root_id: str, root_key_pem: str) -> CAConfigRecord:
    """`record` signed with the key of root `root_id`: what agents accept as the config."""
    message = _config_signed_bytes(record, root_id)
    signature = key_from_pem(root_key_pem).sign(message, ec.ECDSA(hashes.SHA256()))
    return replace(record, root_id=root_id, signature=signature)


def config_verifies(record: CAConfigRecord, root_cert_pem: str) -> bool:
    """Whether `record` is signed by the key of the root certificate `root_cert_pem`."""
    if not record.signature:
        return False
    message = _config_signed_bytes(record, record.root_id)
    return root_signed(root_cert_pem, message, record.signature)


def encode_config(record: CAConfigRecord) -> bytes:
    value = _config_fields(record)
    if record.signature:
        value["root_id"] = record.root_id
        value["signature"] = record.signature
    return dump(value)


def encode_root(record: RootRecord) -> bytes:
    value: dict[str, Any] = {
        "id": record.id,
        "cluster_id": record.cluster_id,
        "cert_pem": record.cert_pem,
        "generation": record.generation,
        "created_at_s": float(record.created_at_s),
        "created_by": record.created_by,
    }
    if record.cross_pem:
        value["cross_pem"] = record.cross_pem
        value["previous_id"] = record.previous_id
    return dump(value)


def encode_intermediate(record: IntermediateRecord) -> bytes:
    return dump(
        {
            "node": record.node,
            "root_id": record.root_id,
            "cert_pem": record.cert_pem,
            "created_at_s": float(record.created_at_s),
        }
    )


def decode_config(data: bytes) -> CAConfigRecord:
    value = load_map(data)
    return CAConfigRecord(
        cluster_id=text(value, "cluster_id", 64),
        trust_domain=text(value, "trust_domain", 255),
        leaf_ttl_s=integer(value, "leaf_ttl_s", 60, 10 * 365 * 24 * 3600),
        csr_max_per_second=number(value, "csr_max_per_second", 0.1, 1e6),
        ca_signers=integer(value, "ca_signers", 1, 64),
        intermediate_ttl_s=integer(value, "intermediate_ttl_s", 3600, 20 * 365 * 24 * 3600),
        updated_by=optional_text(value, "updated_by", TEXT_MAX_CHARS),
        updated_at_s=number(value, "updated_at_s", 0, 1e12),
        root_id=optional_text(value, "root_id", 128),
        signature=(
            blob(value, "signature", 1, _SIGNATURE_MAX_BYTES) if "signature" in value else b""
        ),
    )


def decode_root(key: str, data: bytes) -> RootRecord:
    value = load_map(data)
    record = RootRecord(
        id=text(value, "id", 128),
        cluster_id=text(value, "cluster_id", 64),
        cert_pem=text(value, "cert_pem", PEM_MAX_CHARS),
        generation=integer(value, "generation", 1, 2**31),
        created_at_s=number(value, "created_at_s", 0, 1e12),
        created_by=text(value, "created_by"),
        cross_pem=optional_text(value, "cross_pem", PEM_MAX_CHARS),
        previous_id=optional_text(value, "previous_id", 128),
    )
    if key != root_key(record.id):
        malformed(f"key {key[:80]!r} does not match root id {record.id[:80]!r}")
    if cert_id(record.cert_pem) != record.id:
        malformed(f"root {record.id[:80]} certificate has another key id")
    if record.cross_pem:
        load_cert(record.cross_pem)
    return record


def decode_intermediate(key: str, data: bytes) -> IntermediateRecord:
    value = load_map(data)
    record = IntermediateRecord(
        node=text(value, "node", 128),
        root_id=text(value, "root_id", 128),
        cert_pem=text(value, "cert_pem", PEM_MAX_CHARS),
        created_at_s=number(value, "created_at_s", 0, 1e12),
    )
    if key != intermediate_key(record.node):
        malformed(f"key {key[:80]!r} does not match node {record.node[:80]!r}")
    load_cert(record.cert_pem)
    return record


# --- the view ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CAView:
    """Everything the store says about the CA, decoded; `stray` roots belong to no cluster."""

    config: CAConfigRecord | None = None
    roots: tuple[RootRecord, ...] = ()  # trusted ones, highest rank first
    stray_roots: tuple[RootRecord, ...] = ()  # untrusted: a losing bootstrap's, a forgery
    intermediates: tuple[IntermediateRecord, ...] = ()
    # Approvals whose signature verifies against one of `roots`; requests as claimed.
    approvals: tuple[SignerApproval, ...] = ()
    requests: tuple[SignerRequest, ...] = ()
    # Keys of approvals that are forged or under a losing bootstrap's root:
    # the best signer deletes them (one under a root not seen yet is kept).
    bad_approvals: tuple[str, ...] = ()
    malformed: int = 0
    # Whether the store holds a ``config`` at all, trusted or not (no bootstrap then).
    config_written: bool = False
    # What this agent pins: the oldest trusted root still in the store.
    pin: Anchor | None = None
    _by_id: dict[str, RootRecord] = field(default_factory=dict, compare=False, repr=False)

    @property
    def active(self) -> RootRecord | None:
        return self.roots[0] if self.roots else None

    def root(self, root_id: str) -> RootRecord | None:
        return self._by_id.get(root_id)

    def superseded_at_s(self, root: RootRecord) -> float | None:
        """When a root stopped being active: the creation of the oldest root ranked above it."""
        above = [r.created_at_s for r in self.roots if r.rank > root.rank]
        return min(above) if above else None

    def trusted_until_s(self, root: RootRecord) -> float:
        """Wall time until which `root` belongs in the trust bundle (inf for the active one)."""
        superseded = self.superseded_at_s(root)
        if superseded is None or self.config is None:
            return math.inf
        return superseded + 2 * self.config.leaf_ttl_s

    def trusted(self, now_wall_s: float) -> list[RootRecord]:
        """The roots of the bundle now: the active one and those not yet past their trust."""
        return [r for r in self.roots if self.trusted_until_s(r) > now_wall_s]

    def expired(self, now_wall_s: float) -> list[RootRecord]:
        """Roots whose leaves have all expired: to prune."""
        return [r for r in self.roots if self.trusted_until_s(r) <= now_wall_s]

    def intermediates_of(self, root_id: str) -> list[IntermediateRecord]:
        return [i for i in self.intermediates if i.root_id == root_id]

    def intermediate(self, node: str) -> IntermediateRecord | None:
        return next((i for i in self.intermediates if i.node == node), None)

    def approval(self, node: str) -> SignerApproval | None:
        return next((a for a in self.approvals if a.node == node), None)

    def request(self, node: str) -> SignerRequest | None:
        return next((r for r in self.requests if r.node == node), None)

    def approved(self, node: NodeInfo) -> SignerApproval | None:
        """The verified approval of this member, if its node id is the one approved."""
        found = self.approval(node.name)
        if found is None or found.node_id != (node.node_id or node.name):
            return None
        return found


def _first_use_roots(config: CAConfigRecord | None, roots: list[RootRecord]) -> list[RootRecord]:
    """With no anchor: the chain of the root that signed the config, as the store has it."""
    if config is None:
        return []
    by_id = {r.id: r for r in roots}
    signer = by_id.get(config.root_id)
    start: RootRecord | None = None
    if signer is not None and config_verifies(config, signer.cert_pem):
        start = signer
    elif not config.signature:
        # Written before configs were signed: the cluster's highest root, as then.
        ours = [r for r in roots if r.cluster_id == config.cluster_id]
        start = max(ours, key=lambda r: r.rank) if ours else None
    if start is None:
        return []
    return trusted_roots(roots, [chain_origin(roots, start)])


def _config_trusted(
    config: CAConfigRecord | None, trusted: list[RootRecord], anchors: Sequence[Anchor]
) -> bool:
    if config is None:
        return False
    certs = {a.root_id: a.cert_pem for a in anchors if a.cert_pem}
    certs.update((r.id, r.cert_pem) for r in trusted)
    cert_pem = certs.get(config.root_id)
    return cert_pem is not None and config_verifies(config, cert_pem)


_Decoded = CAConfigRecord | RootRecord | IntermediateRecord | SignerApproval | SignerRequest
# Room for every entry of the CA kind (its cap in gossip/store.py) twice over:
# the live ones and as many replaced since.
_DECODED_MAX = 2 * 4096
_decoded: OrderedDict[tuple[str, bytes], _Decoded | MalformedCARecord] = OrderedDict()


def forget_decoded() -> None:
    """Drop every cached decode and signature check (the benchmark's cold read)."""
    _decoded.clear()
    root_signed.cache_clear()
    approval_verifies.cache_clear()
    _unsigned_approval.cache_clear()


def _decode_entry(key: str, value: bytes) -> _Decoded | MalformedCARecord:
    """One CA entry decoded, or why not; each distinct (key, value) is decoded once.

    The view is re-read on every CA change, and a gossip-key holder may fill
    the CA's 4,096 entries with well-formed forged roots: decoding them all
    each time (an X.509 parse and a fingerprint each) held the event loop
    for tens of ms. The store keeps each value's bytes object, whose hash
    Python keeps, so a hit costs a dict lookup.
    """
    cache_key = (key, value)
    found = _decoded.get(cache_key)
    if found is not None:
        _decoded.move_to_end(cache_key)
        return found
    try:
        found = _decode_uncached(key, value)
    except MalformedCARecord as exc:
        found = exc
    _decoded[cache_key] = found
    if len(_decoded) > _DECODED_MAX:
        _decoded.popitem(last=False)
    return found


def _decode_uncached(key: str, value: bytes) -> _Decoded:
    if key == CONFIG_KEY:
        return decode_config(value)
    if key.startswith(_ROOT_PREFIX):
        return decode_root(key, value)
    if key.startswith(_INTERMEDIATE_PREFIX):
        return decode_intermediate(key, value)
    if key.startswith(APPROVAL_PREFIX):
        return decode_approval(key, value)
    if key.startswith(REQUEST_PREFIX):
        return decode_request(key, value)
    malformed(f"unknown key {key[:80]!r}")


@functools.lru_cache(maxsize=_DECODED_MAX)
def _unsigned_approval(node: str) -> MalformedCARecord:
    """Why an approval is skipped; made once per node, as 4,096 forged ones recur per change."""
    why = f"signer approval of {node[:80]!r} is not signed by a root of this CA"
    return MalformedCARecord(f"malformed CA record: {why}")


def read_view(
    state: ReplicatedState, anchors: Sequence[Anchor] = ()
) -> tuple[CAView, list[tuple[str, MalformedCARecord]]]:
    """Decode every live CA entry and keep what `anchors` make trusted (first use: none).

    The skipped entries come back with their reason; an untrusted ``config``
    is skipped (`config` is None), untrusted roots are `stray_roots`.
    """
    config: CAConfigRecord | None = None
    roots: list[RootRecord] = []
    intermediates: list[IntermediateRecord] = []
    approvals: list[tuple[str, SignerApproval]] = []
    requests: list[SignerRequest] = []
    skipped: list[tuple[str, MalformedCARecord]] = []
    for entry in state.store.items(KIND):
        decoded = _decode_entry(entry.key, entry.value)
        match decoded:
            case MalformedCARecord():
                skipped.append((entry.key, decoded))
            case CAConfigRecord():
                config = decoded
            case RootRecord():
                roots.append(decoded)
            case IntermediateRecord():
                intermediates.append(decoded)
            case SignerApproval():
                approvals.append((entry.key, decoded))
            case SignerRequest():
                requests.append(decoded)
    config_written = config is not None
    if anchors:
        trusted = trusted_roots(roots, anchors)
        if not _config_trusted(config, trusted, anchors):
            config = None
    else:
        trusted = _first_use_roots(config, roots)
        if not trusted:
            config = None
    if config_written and config is None:
        why = "the config is not signed by a root this agent trusts"
        skipped.append((CONFIG_KEY, MalformedCARecord(f"malformed CA record: {why}")))
    ours = sorted(trusted, key=lambda r: r.rank, reverse=True)
    by_id = {r.id: r for r in ours}
    stray = tuple(r for r in roots if r.id not in by_id)
    verified: list[SignerApproval] = []
    bad: list[str] = []
    stray_ids = {r.id for r in stray}
    for key, approval in approvals:
        root = by_id.get(approval.root_id)
        if root is not None and approval_verifies(approval, root.cert_pem):
            verified.append(approval)
        else:
            if root is not None or approval.root_id in stray_ids:
                bad.append(key)
            skipped.append((key, _unsigned_approval(approval.node)))
    return (
        CAView(
            config=config,
            roots=tuple(ours),
            stray_roots=stray,
            intermediates=tuple(sorted(intermediates, key=lambda i: i.node)),
            approvals=tuple(sorted(verified, key=lambda a: a.node)),
            requests=tuple(sorted(requests, key=lambda r: r.node)),
            bad_approvals=tuple(bad),
            malformed=len(skipped),
            config_written=config_written,
            pin=Anchor(ours[-1].id, ours[-1].cert_pem) if ours else None,
            _by_id=by_id,
        ),
        skipped,
    )


# --- signers ----------------------------------------------------------------------------------


def eligible_nodes(nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """Alive members that gossip ``"signer": true`` in their meta (they *ask* to sign)."""
    return [n for n in nodes if n.state == "alive" and n.meta.get(META_SIGNER) is True]


def approved_nodes(view: CAView, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """Eligible members with a verified approval for their node id: they may sign."""
    return [n for n in eligible_nodes(nodes) if view.approved(n) is not None]


def signers_for(view: CAView, nodes: Iterable[NodeInfo]) -> list[str]:
    """Node names of the active signers (approved ones only), best first; [] before a CA."""
    if view.config is None:
        return []
    eligible = approved_nodes(view, nodes)
    # The hash is over node ids (stable across renames); fall back to the name.
    by_id = {(n.node_id or n.name): n.name for n in eligible}
    chosen = signer_set(view.config.cluster_id, list(by_id), k=view.config.ca_signers)
    return [by_id[i] for i in chosen]


def rfc3339(wall_s: float) -> str:
    """Consul's timestamps: second precision, UTC, ``Z``."""
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
