"""A secret sealed to one node's P-256 public key (ECIES), sans-IO.

Rules that live here:

- ``seal`` makes an ephemeral P-256 key, derives an AES-256-GCM key with
  HKDF-SHA256 from the ECDH secret (salted with both public keys), and
  encrypts with the caller's associated data. The output is
  ``b"MNS1" | ephemeral point (65 bytes, uncompressed) | nonce (12) | ciphertext``.
- Only the holder of the private key opens it; anyone else, including a
  holder of the gossip key who reads or replays the exchange, sees noise.
- ``SealError`` for anything that does not open: wrong key, other associated
  data, truncated or altered bytes.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealError", "open_sealed", "seal"]

_MAGIC = b"MNS1"
_POINT_BYTES = 65
_NONCE_BYTES = 12
_INFO = b"meshnode ca sealed to a node v1"


class SealError(ValueError):
    """Sealed bytes do not open with this key and associated data."""


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _aead(shared: bytes, ephemeral: bytes, recipient: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO)
    return AESGCM(key.derive(shared))


def seal(recipient: ec.EllipticCurvePublicKey, plain: bytes, aad: bytes) -> bytes:
    """`plain` encrypted so that only `recipient`'s private key opens it."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    eph_point = _point(ephemeral.public_key())
    shared = ephemeral.exchange(ec.ECDH(), recipient)
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _aead(shared, eph_point, _point(recipient)).encrypt(nonce, plain, aad)
    return _MAGIC + eph_point + nonce + sealed


def open_sealed(key: ec.EllipticCurvePrivateKey, data: bytes, aad: bytes) -> bytes:
    """The plain bytes of `seal(key.public_key(), ..., aad)`; `SealError` otherwise."""
    head = len(_MAGIC) + _POINT_BYTES + _NONCE_BYTES
    if not data.startswith(_MAGIC) or len(data) < head + 16:
        raise SealError("not a sealed meshnode secret")
    eph_point = data[len(_MAGIC) : len(_MAGIC) + _POINT_BYTES]
    nonce = data[len(_MAGIC) + _POINT_BYTES : head]
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), eph_point)
        shared = key.exchange(ec.ECDH(), ephemeral)
        return _aead(shared, eph_point, _point(key.public_key())).decrypt(nonce, data[head:], aad)
    except (ValueError, InvalidTag):
        raise SealError("the sealed secret does not open with this node's key") from None
