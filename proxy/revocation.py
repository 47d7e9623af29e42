"""Revoked peer leaves and pruned roots: refused at each handshake, cut on live connections.

Rules that live here:

- `RevocationSource`: the cluster's revocation list as a proxy asks it
  (`refusal(serial, spki_sha256)`, two dict look-ups) plus a generation that
  rises on every change, so live connections can be re-evaluated.
- `PeerLeaves`: what a handshake's peer leaf is (serial, public key hash, and
  the root its chain was verified to), cached per leaf so a resumed session
  costs one hash. OpenSSL keeps no verified chain for a resumed session, so
  its root is the one remembered from the leaf's full handshake on this
  proxy (a session never outlives its context, hence its bundle).
- A new handshake whose peer leaf is revoked, by serial or by key, is
  refused (inbound) or moves on to another instance (outbound).
- `enforce_revocations`: when the list changes, every live connection whose
  peer leaf is now revoked is cut, inbound and outbound; when the trust
  bundle changes, every live connection whose chain ended at a root that has
  left it is cut (one whose root is not known is cut when any root left).
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..ca.revocation import RevocationSet, spki_sha256
from ..logs import get_logger, log
from .sources import CertSource, Versioned

if TYPE_CHECKING:
    from .tracker import ConnectionTracker, LiveConnection

__all__ = [
    "NO_REVOCATIONS",
    "PeerLeaf",
    "PeerLeaves",
    "RevocationList",
    "RevocationSource",
    "bundle_roots",
    "enforce_revocations",
]

_log = get_logger("proxy")
# Distinct peer leaves remembered per proxy: each is ~100 bytes, and a proxy
# sees one leaf per peer instance per leaf life (72 h).
_LEAVES_MAX = 4096
# Waits are re-armed this often even with no change (a bound on a missed wake-up).
_WAIT_S = 300.0
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for the private chain objects of Python < 3.13


class RevocationSource(Protocol):
    """The revocation list, kept current by its owner."""

    @property
    def generation(self) -> int:
        """Rises on every change of the list."""
        ...

    def refusal(self, serial: int, spki_sha256: bytes) -> str | None:
        """Why a leaf with this serial and public key hash is refused; None: it is not."""
        ...

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        """Block until the list changed after `since_generation` (or the timeout)."""
        ...


class _NoRevocations:
    """The empty list (a proxy built without a source)."""

    generation = 0

    def refusal(self, serial: int, spki_sha256: bytes) -> str | None:
        return None

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        await trio.sleep(timeout_s)
        return 0


NO_REVOCATIONS: RevocationSource = _NoRevocations()


class RevocationList:
    """A `RevocationSource` whose owner replaces the whole set (HTTP followers, fakes)."""

    def __init__(self) -> None:
        self._versions = Versioned()
        self._set = RevocationSet()

    @property
    def generation(self) -> int:
        return self._versions.generation

    @property
    def revoked(self) -> RevocationSet:
        return self._set

    def refusal(self, serial: int, spki_sha256: bytes) -> str | None:
        return self._set.refusal(serial, spki_sha256)

    def replace(self, found: RevocationSet) -> None:
        self._set = found
        self._versions.bump()

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)


@dataclass(frozen=True, slots=True)
class PeerLeaf:
    """The peer's certificate as revocation and root checks need it."""

    serial: int
    spki_sha256: bytes
    root_sha256: bytes  # SHA-256 of the trust anchor's DER; b"": not known


def _verified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The verified chain (leaf first, root last) as DER; [] after a resumed handshake."""
    public = getattr(tls, "get_verified_chain", None)  # Python 3.13+
    if public is not None:
        return list(public() or [])
    private: Any = getattr(tls, "_sslobj", None)
    chain = private.get_verified_chain() if private is not None else None
    return [c.public_bytes(_ENCODING_DER) for c in chain or []]


class PeerLeaves:
    """Peer leaves by the SHA-256 of their DER, least recently used dropped first."""

    def __init__(self, max_entries: int = _LEAVES_MAX) -> None:
        self.max_entries = max_entries
        self._known: OrderedDict[bytes, PeerLeaf] = OrderedDict()

    def of(self, tls: ssl.SSLSocket) -> PeerLeaf:
        """The peer leaf of a verified handshake (`ValueError` if there is none)."""
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise ValueError("the peer sent no certificate")
        digest = hashlib.sha256(der).digest()
        known = self._known.get(digest)
        if known is not None and (known.root_sha256 or tls.session_reused):
            self._known.move_to_end(digest)
            return known
        chain = [] if tls.session_reused else _verified_chain(tls)
        cert = x509.load_der_x509_certificate(der)
        leaf = PeerLeaf(
            serial=cert.serial_number,
            spki_sha256=spki_sha256(cert),
            root_sha256=hashlib.sha256(chain[-1]).digest() if chain else b"",
        )
        self._known[digest] = leaf
        if len(self._known) > self.max_entries:
            self._known.popitem(last=False)
        return leaf


def bundle_roots(roots_pem: str) -> frozenset[bytes]:
    """SHA-256 of the DER of every root in a PEM bundle."""
    try:
        roots = x509.load_pem_x509_certificates(roots_pem.encode("ascii"))
    except ValueError:
        return frozenset()
    return frozenset(hashlib.sha256(r.public_bytes(Encoding.DER)).digest() for r in roots)


def _cut(tracker: ConnectionTracker, why_of: Callable[[LiveConnection], str | None]) -> int:
    """Cut every connection `why_of` gives a reason for (audited as a deny); how many."""
    cut = 0
    for conn in tracker:
        why = why_of(conn)
        if why and not conn.cut_reason:
            conn.denied = True
            conn.cut(why)
            cut += 1
    return cut


def _revoked(conn: LiveConnection, revocations: RevocationSource) -> str | None:
    leaf = conn.peer_leaf
    if leaf is None:
        return None
    return revocations.refusal(leaf.serial, leaf.spki_sha256)


def _outside(conn: LiveConnection, roots: frozenset[bytes]) -> str | None:
    """Why a connection must end after roots left the bundle (now `roots`); None: it stays."""
    leaf = conn.peer_leaf
    if leaf is None or leaf.root_sha256 in roots:
        return None
    if leaf.root_sha256:
        return "the peer's root left the trust bundle"
    return "a root left the trust bundle and the peer's root is not known"


async def enforce_revocations(
    tracker: ConnectionTracker,
    revocations: RevocationSource,
    certs: CertSource,
    log_fields: dict[str, Any],
    *,
    on_cut: Callable[[], object] | None = None,
) -> None:
    """Cut live connections on every revocation change and every root leaving the bundle.

    `log_fields` name the owner in the log; `on_cut` runs after a round that cut any.
    """

    def cut_logged(why_of: Callable[[LiveConnection], str | None], what: str) -> None:
        cut = _cut(tracker, why_of)
        if cut:
            log(_log, "info", what, **log_fields, count=cut)
            if on_cut is not None:
                on_cut()

    async def follow_revocations() -> None:
        generation = revocations.generation
        while True:
            generation = await revocations.wait_changed(generation, _WAIT_S)
            cut_logged(lambda c: _revoked(c, revocations), "cut connections of revoked leaves")

    async def follow_bundle() -> None:
        material = certs.current()
        generation = material.generation if material is not None else 0
        roots = bundle_roots(material.roots_pem) if material is not None else frozenset()
        while True:
            generation = await certs.wait_changed(generation, _WAIT_S)
            material = certs.current()
            if material is None:
                continue
            now_roots = bundle_roots(material.roots_pem)
            if not now_roots:
                continue  # a bundle we cannot read is not a bundle without roots
            left = roots - now_roots
            roots = now_roots
            if not left:
                continue
            cut_logged(
                functools.partial(_outside, roots=now_roots), "cut connections of pruned roots"
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_revocations)
        nursery.start_soon(follow_bundle)
