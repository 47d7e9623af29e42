"""Signer approvals: who may hold the root key, signed by the root; sans-IO.

Rules that live here:

- Every agent has a P-256 *identity key* (kept in its data dir, encrypted
  at rest by `KeyStore`). An agent started with ``-signer`` that is not
  approved publishes a request, ``signer-request/<node>``: its node name,
  node id and identity public key, and, when it was given a signer token,
  ``proof = HMAC-SHA256(token, node | node id | public key)``.
- An approval, ``signer/<node>``, names the node, its node id and its
  identity public key, and is signed (ECDSA P-256, SHA-256) by the key of a
  root of this cluster. Only a holder of the root key can make one: the
  node that bootstraps the CA approves itself, then an approved signer
  approves others (an operator's ``meshnode ca signers approve NODE``, or a
  request whose proof verifies under the signer token it was given).
- The store is writable by every holder of the gossip key, so a request is
  only a claim, and an approval counts only when its signature verifies
  against a root of this cluster's view; anything else is skipped as
  malformed. An approval under a root that is no longer active is re-signed
  by the best signer, before that root is pruned.
- The fingerprint an operator compares is the colon-hex SHA-256 of the
  public key (DER SubjectPublicKeyInfo); the agent logs its own at start.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .fields import (
    blob,
    dump,
    load_cert,
    load_map,
    malformed,
    number,
    text,
)
from .pem import colon_hex, key_from_pem

__all__ = [
    "APPROVAL_PREFIX",
    "REQUEST_PREFIX",
    "SignerApproval",
    "SignerRequest",
    "approval_key",
    "approval_verifies",
    "decode_approval",
    "decode_request",
    "encode_approval",
    "encode_request",
    "fingerprint",
    "identity_public_key",
    "public_der",
    "request_key",
    "root_signed",
    "sign_approval",
    "token_proof",
    "token_proof_ok",
]

APPROVAL_PREFIX = "signer/"
REQUEST_PREFIX = "signer-request/"
# A P-256 SubjectPublicKeyInfo is 91 bytes; an ECDSA signature at most 72.
_DER_MAX_BYTES = 200
_SIGNATURE_MAX_BYTES = 160
_PROOF_BYTES = 32
_SIGNED_WHAT = "meshnode signer approval v1"
_PROOF_WHAT = b"meshnode signer request v1"


@dataclass(frozen=True, slots=True)
class SignerRequest:
    """A node asks to be a signer (a claim: anyone with the gossip key can write one)."""

    node: str
    node_id: str
    public_key_der: bytes
    requested_at_s: float
    proof: bytes = b""  # HMAC under the signer token, empty without one


@dataclass(frozen=True, slots=True)
class SignerApproval:
    """A node approved to hold the root key, signed by the root `root_id`."""

    node: str
    node_id: str
    public_key_der: bytes
    root_id: str
    approved_by: str
    approved_at_s: float
    signature: bytes


def approval_key(node: str) -> str:
    return APPROVAL_PREFIX + node


def request_key(node: str) -> str:
    return REQUEST_PREFIX + node


def public_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(public_key_der: bytes) -> str:
    """What an operator compares: the colon-hex SHA-256 of the public key."""
    return colon_hex(hashlib.sha256(public_key_der).digest())


def identity_public_key(public_key_der: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in `public_key_der`; `MalformedCARecord` for anything else."""
    try:
        key = serialization.load_der_public_key(public_key_der)
    except ValueError:
        malformed("public_key is not a DER public key")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        malformed("public_key is not a P-256 key")
    return key


def token_proof(token: str, node: str, node_id: str, public_key_der: bytes) -> bytes:
    """The proof a node holds the signer token, bound to its name, id and key."""
    message = b"\x00".join((_PROOF_WHAT, node.encode(), node_id.encode(), public_key_der))
    return hmac.new(token.encode(), message, hashlib.sha256).digest()


def token_proof_ok(token: str, request: SignerRequest) -> bool:
    expected = token_proof(token, request.node, request.node_id, request.public_key_der)
    return hmac.compare_digest(expected, request.proof)


def _signed_bytes(
    node: str,
    node_id: str,
    public_key_der: bytes,
    root_id: str,
    approved_by: str,
    approved_at_s: float,
) -> bytes:
    return dump(
        {
            "what": _SIGNED_WHAT,
            "node": node,
            "node_id": node_id,
            "public_key": public_key_der,
            "root_id": root_id,
            "approved_by": approved_by,
            "approved_at_s": float(approved_at_s),
        }
    )


def sign_approval(
    root_key_pem: str,
    root_id: str,
    request: SignerRequest,
    *,
    approved_by: str,
    now_wall_s: float,
) -> SignerApproval:
    """An approval of `request`'s node and key, signed with the root key."""
    key = key_from_pem(root_key_pem)
    message = _signed_bytes(
        request.node, request.node_id, request.public_key_der, root_id, approved_by, now_wall_s
    )
    return SignerApproval(
        node=request.node,
        node_id=request.node_id,
        public_key_der=request.public_key_der,
        root_id=root_id,
        approved_by=approved_by,
        approved_at_s=now_wall_s,
        signature=key.sign(message, ec.ECDSA(hashes.SHA256())),
    )


# Room for every entry of the CA kind (its cap in gossip/store.py) twice over.
_VERIFIED_MAX = 2 * 4096


@functools.lru_cache(maxsize=_VERIFIED_MAX)
def approval_verifies(approval: SignerApproval, root_cert_pem: str) -> bool:
    """Whether `approval` is signed by the key of the root certificate `root_cert_pem`.

    Cached as `root_signed` is, and before the signed bytes are encoded again.
    """
    return root_signed(
        root_cert_pem,
        _signed_bytes(
            approval.node,
            approval.node_id,
            approval.public_key_der,
            approval.root_id,
            approval.approved_by,
            approval.approved_at_s,
        ),
        approval.signature,
    )


@functools.lru_cache(maxsize=_VERIFIED_MAX)
def root_signed(root_cert_pem: str, message: bytes, signature: bytes) -> bool:
    """Whether the root's key signed `message` (ECDSA, SHA-256): approvals and the config.

    Cached: the view is re-read on every CA change, signed records rarely
    change, and a gossip-key holder may fill the CA's 4,096 entries with
    approvals naming the real root: with room for 256, each change verified
    them all again (105 ms at 4,094, bench/ca_view.py).
    """
    public = load_cert(root_cert_pem).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --- codec ------------------------------------------------------------------------------------


def encode_request(request: SignerRequest) -> bytes:
    value: dict[str, Any] = {
        "node": request.node,
        "node_id": request.node_id,
        "public_key": request.public_key_der,
        "requested_at_s": float(request.requested_at_s),
    }
    if request.proof:
        value["proof"] = request.proof
    return dump(value)


def encode_approval(approval: SignerApproval) -> bytes:
    return dump(
        {
            "node": approval.node,
            "node_id": approval.node_id,
            "public_key": approval.public_key_der,
            "root_id": approval.root_id,
            "approved_by": approval.approved_by,
            "approved_at_s": float(approval.approved_at_s),
            "signature": approval.signature,
        }
    )


def _check_key(key: str, expected: str, node: str) -> None:
    if key != expected:
        malformed(f"key {key[:80]!r} does not match node {node[:80]!r}")


def decode_request(key: str, data: bytes) -> SignerRequest:
    value = load_map(data)
    proof = value.get("proof", b"")
    if proof != b"":
        proof = blob(value, "proof", _PROOF_BYTES, _PROOF_BYTES)
    request = SignerRequest(
        node=text(value, "node", 128),
        node_id=text(value, "node_id", 128),
        public_key_der=blob(value, "public_key", 1, _DER_MAX_BYTES),
        requested_at_s=number(value, "requested_at_s", 0, 1e12),
        proof=proof,
    )
    _check_key(key, request_key(request.node), request.node)
    identity_public_key(request.public_key_der)
    return request


def decode_approval(key: str, data: bytes) -> SignerApproval:
    value = load_map(data)
    approval = SignerApproval(
        node=text(value, "node", 128),
        node_id=text(value, "node_id", 128),
        public_key_der=blob(value, "public_key", 1, _DER_MAX_BYTES),
        root_id=text(value, "root_id", 128),
        approved_by=text(value, "approved_by", 128),
        approved_at_s=number(value, "approved_at_s", 0, 1e12),
        signature=blob(value, "signature", 1, _SIGNATURE_MAX_BYTES),
    )
    _check_key(key, approval_key(approval.node), approval.node)
    identity_public_key(approval.public_key_der)
    return approval
