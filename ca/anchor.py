"""The trust anchor: which roots of the store this agent trusts; sans-IO.

Every holder of the gossip key can write the CA's records, so a root in the
store is only a claim. Rules that live here:

- An *anchor* is a root this agent trusts without asking the store: its id
  (the colon-hex SHA-256 fingerprint of its certificate) and, once seen,
  its certificate. The agent pins one in ``<data-dir>/ca/anchor.pin``; the
  operator may name one (``--ca-root-fingerprint``).
- A root is trusted when it is an anchor, or when its record carries its
  certificate cross-signed by the key of a trusted root (``previous_id``),
  which is what a rotation writes. Trust only flows forward: a trusted
  root never vouches for the root before it, since anyone can write a
  record naming any ``previous_id``.
- With no anchor (the agent's first use), the store's ``config`` names the
  root that signed it; the agent trusts that root's chain from its oldest
  root still in the store whose cross-sign verifies. The agent holds this
  choice provisionally for a short window, then pins it (`pin_candidate`).
- The pin is the oldest trusted root still in the store, so it advances
  when a rotation prunes the old root; the certificate kept in the pin lets
  the agent verify the next root's cross-sign after the pinned root is gone.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from .fields import MalformedCARecord, load_cert
from .pem import colon_hex

if TYPE_CHECKING:
    from .records import RootRecord

__all__ = [
    "PIN_MAX_BYTES",
    "Anchor",
    "AnchorFileError",
    "chain_origin",
    "cross_signed_by",
    "decode_pin",
    "encode_pin",
    "normalize_fingerprint",
    "trusted_roots",
]

# A fingerprint line and one root certificate in PEM (well under 12 KiB).
PIN_MAX_BYTES = 16 * 1024
_PIN_HEADER = "meshnode ca anchor v1"
_FINGERPRINT_BYTES = 32
# The CA kind's entry cap in the store (gossip/store.py): room for every record.
_CROSS_CACHE_MAX = 4096
_cross_cache: OrderedDict[bytes, bool] = OrderedDict()


class AnchorFileError(ValueError):
    """An anchor pin or fingerprint that cannot be read (one line)."""


@dataclass(frozen=True, slots=True)
class Anchor:
    """A root trusted without the store: its id, and its certificate once seen."""

    root_id: str
    cert_pem: str = ""


def normalize_fingerprint(text: str) -> str:
    """A root fingerprint as root ids are written: lowercase colon-hex SHA-256.

    Accepts colons or none, any case (what ``openssl x509 -fingerprint
    -sha256`` prints, after the ``=``); `AnchorFileError` for anything else.
    """
    raw = text.strip().split("=")[-1].replace(":", "").lower()
    try:
        digest = bytes.fromhex(raw)
    except ValueError:
        digest = b""
    if len(digest) != _FINGERPRINT_BYTES:
        raise AnchorFileError(
            f"{text.strip()[:100]!r} is not a SHA-256 root fingerprint (64 hex digits)"
        )
    return colon_hex(digest)


def encode_pin(anchor: Anchor) -> str:
    """The text of ``anchor.pin``: a header, the fingerprint, then the certificate."""
    return f"{_PIN_HEADER}\n{anchor.root_id}\n{anchor.cert_pem}"


def decode_pin(text: str) -> Anchor:
    """The anchor in a pin file's text; `AnchorFileError` when it is damaged."""
    if len(text) > PIN_MAX_BYTES:
        raise AnchorFileError(f"the pin is {len(text)} bytes, more than {PIN_MAX_BYTES}")
    lines = text.split("\n", 2)
    if len(lines) < 2 or lines[0] != _PIN_HEADER:
        raise AnchorFileError("the pin does not start with the meshnode anchor header")
    root_id = normalize_fingerprint(lines[1])
    cert_pem = lines[2] if len(lines) == 3 else ""
    if cert_pem.strip():
        try:
            found = colon_hex(load_cert(cert_pem).fingerprint(hashes.SHA256()))
        except MalformedCARecord as exc:
            raise AnchorFileError(f"the pinned certificate: {exc}") from None
        if found != root_id:
            raise AnchorFileError("the pinned certificate does not match the pinned fingerprint")
    else:
        cert_pem = ""
    return Anchor(root_id, cert_pem)


def _cross_ok(cross_pem: str, cert_pem: str, issuer_pem: str) -> bool:
    """Cached by digest: the view is re-read on every CA change, and a gossip-key
    holder may fill the CA's room with forged roots; each is verified once."""
    digest = hashlib.sha256("\0".join((cross_pem, cert_pem, issuer_pem)).encode()).digest()
    found = _cross_cache.get(digest)
    if found is not None:
        _cross_cache.move_to_end(digest)
        return found
    found = _verify_cross(cross_pem, cert_pem, issuer_pem)
    _cross_cache[digest] = found
    if len(_cross_cache) > _CROSS_CACHE_MAX:
        _cross_cache.popitem(last=False)
    return found


def _verify_cross(cross_pem: str, cert_pem: str, issuer_pem: str) -> bool:
    try:
        cross, cert, issuer = load_cert(cross_pem), load_cert(cert_pem), load_cert(issuer_pem)
    except MalformedCARecord:
        return False
    # The same root (subject and key) re-issued by the issuer, signed by its key.
    if cross.public_key() != cert.public_key() or cross.subject != cert.subject:
        return False
    try:
        cross.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def cross_signed_by(record: RootRecord, issuer_cert_pem: str) -> bool:
    """Whether `record` carries its certificate cross-signed by the key of `issuer_cert_pem`."""
    if not record.cross_pem or not issuer_cert_pem:
        return False
    return _cross_ok(record.cross_pem, record.cert_pem, issuer_cert_pem)


def trusted_roots(roots: Sequence[RootRecord], anchors: Sequence[Anchor]) -> list[RootRecord]:
    """The roots of `roots` trusted from `anchors`: anchors and their cross-signed successors."""
    by_id = {r.id: r for r in roots}
    certs: dict[str, str] = {}
    for anchor in anchors:
        known = by_id.get(anchor.root_id)
        cert_pem = known.cert_pem if known is not None else anchor.cert_pem
        if cert_pem:
            certs[anchor.root_id] = cert_pem
    trusted = {a.root_id for a in anchors if a.root_id in by_id}
    # Each pass adds every root one cross-sign away; a chain of n roots takes n passes.
    for _ in range(len(roots)):
        added = [
            r
            for r in roots
            if r.id not in trusted
            and r.previous_id in certs
            and cross_signed_by(r, certs[r.previous_id])
        ]
        if not added:
            break
        for r in added:
            trusted.add(r.id)
            certs[r.id] = r.cert_pem
    return [r for r in roots if r.id in trusted]


def chain_origin(roots: Sequence[RootRecord], start: RootRecord) -> Anchor:
    """The oldest root in `roots` from which `start` is reached by verified cross-signs.

    Only for first use, when the agent has no anchor and trusts the store as
    it finds it: then a root that claims `start` as a successor is as good
    as `start` itself.
    """
    by_id = {r.id: r for r in roots}
    current, seen = start, {start.id}
    while True:
        previous = by_id.get(current.previous_id)
        if (
            previous is None
            or previous.id in seen
            or not cross_signed_by(current, previous.cert_pem)
        ):
            return Anchor(current.id, current.cert_pem)
        seen.add(previous.id)
        current = previous
