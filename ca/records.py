"""The CA's replicated records (kind ``"ca"``) and the pure decisions made from them.

Rules that live here:

- Three kinds of key, all public material; a private key is never in the store:
  - ``config``: the cluster id, trust domain and cluster-wide CA settings
    (leaf TTL, CSR rate, how many signers). One last-writer-wins register:
    two bootstraps at once resolve to the higher store version.
  - ``root/<id>``: one root certificate, written once by the eligible node
    that made it, with its *generation* (1 at bootstrap, +1 per rotation),
    its creation wall time, and for a rotated-in root the certificate of the
    new root cross-signed by the previous one.
  - ``intermediate/<node>``: the intermediate certificate of an active
    signer, written by that signer, for the root it was issued under.
- The active root is the live root of *this* cluster (same cluster id as
  ``config``) with the highest (generation, id); roots are never edited, so
  a rotation and a prune can never overwrite each other. A root from a
  losing bootstrap (another cluster id) is ignored and then deleted.
- A root that is no longer active stays trusted until ``2 x leaf TTL`` after
  the root that replaced it was made, so every leaf issued under it has
  expired by then; after that it is pruned.
- Values are strict CBOR maps (`load_strict`), at most `VALUE_MAX_BYTES`;
  unknown map keys are ignored so a newer agent can add fields. A value that
  does not decode, or a certificate whose id does not match its key, is
  skipped and counted, never raised out of a merge.
- Signers: the `ca_signers` eligible alive members with the highest
  rendezvous hash of (cluster id, node id) (`ca/election.py`), so every
  node computes the same set from the same member list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..gossip.errors import DecodeError
from ..gossip.strict_cbor import load_strict
from ..store.state import NodeInfo, ReplicatedState
from .election import signer_set
from .pem import PemError, cert_from_pem, colon_hex

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
    "cert_id",
    "decode_config",
    "decode_intermediate",
    "decode_root",
    "eligible_nodes",
    "encode_config",
    "encode_intermediate",
    "encode_root",
    "intermediate_key",
    "read_view",
    "rfc3339",
    "root_key",
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
# Two certificates in PEM and a few fields take about 2 KiB; 32 KiB is room
# for larger keys without letting one value hold megabytes.
VALUE_MAX_BYTES = 32 * 1024
_TEXT_MAX_CHARS = 256
_PEM_MAX_CHARS = 12 * 1024


class MalformedCARecord(DecodeError):
    """A replicated CA value from the network cannot be read (a remote error)."""


def _malformed(why: str) -> NoReturn:
    raise MalformedCARecord(f"malformed CA record: {why}")


def _refusal(why: str) -> MalformedCARecord:
    return MalformedCARecord(f"malformed CA record: {why}")


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
    return colon_hex(_load_cert(cert_pem).fingerprint(hashes.SHA256()))


def _load_cert(pem: str) -> x509.Certificate:
    try:
        return cert_from_pem(pem)
    except PemError as exc:
        _malformed(str(exc))


def _dump(value: dict[str, Any]) -> bytes:
    return cbor2.dumps({"v": 1, **value}, canonical=True)


def encode_config(record: CAConfigRecord) -> bytes:
    return _dump(
        {
            "cluster_id": record.cluster_id,
            "trust_domain": record.trust_domain,
            "leaf_ttl_s": record.leaf_ttl_s,
            "csr_max_per_second": float(record.csr_max_per_second),
            "ca_signers": record.ca_signers,
            "intermediate_ttl_s": record.intermediate_ttl_s,
            "updated_by": record.updated_by,
            "updated_at_s": float(record.updated_at_s),
        }
    )


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
    return _dump(value)


def encode_intermediate(record: IntermediateRecord) -> bytes:
    return _dump(
        {
            "node": record.node,
            "root_id": record.root_id,
            "cert_pem": record.cert_pem,
            "created_at_s": float(record.created_at_s),
        }
    )


def _map(data: bytes) -> dict[str, Any]:
    if len(data) > VALUE_MAX_BYTES:
        _malformed(f"{len(data)} bytes is more than {VALUE_MAX_BYTES}")
    value = load_strict(data, max_depth=2, refuse=_refusal)
    if not isinstance(value, dict):
        _malformed("value is not a map")
    if value.get("v") != 1:
        _malformed(f"unknown format version {value.get('v')!r}")
    return value


def _text(value: dict[str, Any], name: str, max_chars: int = _TEXT_MAX_CHARS) -> str:
    found = value.get(name)
    if not isinstance(found, str) or not 0 < len(found) <= max_chars:
        _malformed(f"{name} is not text of 1..{max_chars} characters")
    return found


def _optional_text(value: dict[str, Any], name: str, max_chars: int) -> str:
    return "" if value.get(name, "") == "" else _text(value, name, max_chars)


def _int(value: dict[str, Any], name: str, low: int, high: int) -> int:
    found = value.get(name)
    # `type(...) is int`: a bool is an int but never a count.
    if type(found) is not int or not low <= found <= high:
        _malformed(f"{name} is not an integer in {low}..{high}")
    return found


def _number(value: dict[str, Any], name: str, low: float, high: float) -> float:
    found = value.get(name)
    if not (type(found) is int or type(found) is float):
        _malformed(f"{name} is not a number")
    if not math.isfinite(found) or not low <= found <= high:
        _malformed(f"{name} is not a number in {low}..{high}")
    return float(found)


def decode_config(data: bytes) -> CAConfigRecord:
    value = _map(data)
    return CAConfigRecord(
        cluster_id=_text(value, "cluster_id", 64),
        trust_domain=_text(value, "trust_domain", 255),
        leaf_ttl_s=_int(value, "leaf_ttl_s", 60, 10 * 365 * 24 * 3600),
        csr_max_per_second=_number(value, "csr_max_per_second", 0.1, 1e6),
        ca_signers=_int(value, "ca_signers", 1, 64),
        intermediate_ttl_s=_int(value, "intermediate_ttl_s", 3600, 20 * 365 * 24 * 3600),
        updated_by=_optional_text(value, "updated_by", _TEXT_MAX_CHARS),
        updated_at_s=_number(value, "updated_at_s", 0, 1e12),
    )


def decode_root(key: str, data: bytes) -> RootRecord:
    value = _map(data)
    record = RootRecord(
        id=_text(value, "id", 128),
        cluster_id=_text(value, "cluster_id", 64),
        cert_pem=_text(value, "cert_pem", _PEM_MAX_CHARS),
        generation=_int(value, "generation", 1, 2**31),
        created_at_s=_number(value, "created_at_s", 0, 1e12),
        created_by=_text(value, "created_by"),
        cross_pem=_optional_text(value, "cross_pem", _PEM_MAX_CHARS),
        previous_id=_optional_text(value, "previous_id", 128),
    )
    if key != root_key(record.id):
        _malformed(f"key {key[:80]!r} does not match root id {record.id[:80]!r}")
    if cert_id(record.cert_pem) != record.id:
        _malformed(f"root {record.id[:80]} certificate has another key id")
    if record.cross_pem:
        _load_cert(record.cross_pem)
    return record


def decode_intermediate(key: str, data: bytes) -> IntermediateRecord:
    value = _map(data)
    record = IntermediateRecord(
        node=_text(value, "node", 128),
        root_id=_text(value, "root_id", 128),
        cert_pem=_text(value, "cert_pem", _PEM_MAX_CHARS),
        created_at_s=_number(value, "created_at_s", 0, 1e12),
    )
    if key != intermediate_key(record.node):
        _malformed(f"key {key[:80]!r} does not match node {record.node[:80]!r}")
    _load_cert(record.cert_pem)
    return record


# --- the view ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CAView:
    """Everything the store says about the CA, decoded; `stray` roots belong to no cluster."""

    config: CAConfigRecord | None = None
    roots: tuple[RootRecord, ...] = ()  # this cluster's, highest rank first
    stray_roots: tuple[RootRecord, ...] = ()  # from a bootstrap that lost
    intermediates: tuple[IntermediateRecord, ...] = ()
    malformed: int = 0
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


def read_view(state: ReplicatedState) -> tuple[CAView, list[tuple[str, MalformedCARecord]]]:
    """Decode every live CA entry; the skipped ones come back with their reason."""
    config: CAConfigRecord | None = None
    roots: list[RootRecord] = []
    intermediates: list[IntermediateRecord] = []
    skipped: list[tuple[str, MalformedCARecord]] = []
    for entry in state.store.items(KIND):
        try:
            if entry.key == CONFIG_KEY:
                config = decode_config(entry.value)
            elif entry.key.startswith(_ROOT_PREFIX):
                roots.append(decode_root(entry.key, entry.value))
            elif entry.key.startswith(_INTERMEDIATE_PREFIX):
                intermediates.append(decode_intermediate(entry.key, entry.value))
            else:
                _malformed(f"unknown key {entry.key[:80]!r}")
        except MalformedCARecord as exc:
            skipped.append((entry.key, exc))
    cluster = config.cluster_id if config is not None else None
    ours = sorted((r for r in roots if r.cluster_id == cluster), key=lambda r: r.rank, reverse=True)
    stray = tuple(r for r in roots if r.cluster_id != cluster)
    return (
        CAView(
            config=config,
            roots=tuple(ours),
            stray_roots=stray,
            intermediates=tuple(sorted(intermediates, key=lambda i: i.node)),
            malformed=len(skipped),
            _by_id={r.id: r for r in ours},
        ),
        skipped,
    )


# --- signers ----------------------------------------------------------------------------------


def eligible_nodes(nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """Alive members that gossip ``"signer": true`` in their meta."""
    return [n for n in nodes if n.state == "alive" and n.meta.get(META_SIGNER) is True]


def signers_for(view: CAView, nodes: Iterable[NodeInfo]) -> list[str]:
    """Node names of the active signers, best first; [] before the CA exists."""
    if view.config is None:
        return []
    eligible = eligible_nodes(nodes)
    # The hash is over node ids (stable across renames); fall back to the name.
    by_id = {(n.node_id or n.name): n.name for n in eligible}
    chosen = signer_set(view.config.cluster_id, list(by_id), k=view.config.ca_signers)
    return [by_id[i] for i in chosen]


def rfc3339(wall_s: float) -> str:
    """Consul's timestamps: second precision, UTC, ``Z``."""
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
