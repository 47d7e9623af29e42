"""PEM encoding of the CA's keys and certificates, and the identifiers derived from them.

Rules that live here:

- Every key is ECDSA P-256 (DESIGN.md, CA). A PEM key on another curve or of
  another type is refused when it is read, not when it is first used.
- Private keys are written as unencrypted PKCS#8 (``BEGIN PRIVATE KEY``):
  the form the ``spiffe`` package, Go and OpenSSL all read. Encryption at rest
  is the agent's job (the data dir), not the encoding's.
- Key identifiers are RFC 5280 section 4.2.1.2 method 1 (SHA-1 of the
  subjectPublicKey bits), what OpenSSL and cryptography compute, so an AKI we
  write matches the SKI another tool computes.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "PemError",
    "cert_from_pem",
    "cert_to_pem",
    "certs_from_pem",
    "colon_hex",
    "generate_key",
    "key_from_pem",
    "key_id",
    "key_to_pem",
    "serial_colon_hex",
]


class PemError(ValueError):
    """PEM text is not the key or certificate expected (one-line message)."""


def _as_bytes(pem: str | bytes) -> bytes:
    if isinstance(pem, bytes):
        return pem
    try:
        return pem.encode("ascii")
    except UnicodeEncodeError:
        raise PemError("PEM text holds non-ASCII characters") from None


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (from OpenSSL's CSPRNG: keys are not simulated)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """Unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def key_from_pem(pem: str | bytes) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in `pem` (PKCS#8 or SEC1); `PemError` for anything else."""
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except (ValueError, TypeError) as exc:
        raise PemError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PemError(f"private key is {type(key).__name__}, want ECDSA P-256")
    if not isinstance(key.curve, ec.SECP256R1):
        raise PemError(f"private key is on curve {key.curve.name}, want P-256 (secp256r1)")
    return key


def cert_to_pem(cert: x509.Certificate) -> str:
    """PEM text of one certificate."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def cert_from_pem(pem: str | bytes) -> x509.Certificate:
    """The first certificate in `pem`; `PemError` if there is none."""
    try:
        return x509.load_pem_x509_certificate(_as_bytes(pem))
    except ValueError as exc:
        raise PemError(f"not a PEM certificate: {exc}") from None


def certs_from_pem(pem: str | bytes) -> list[x509.Certificate]:
    """Every certificate in `pem`, in order (a chain or a bundle); `PemError` if none."""
    try:
        return x509.load_pem_x509_certificates(_as_bytes(pem))
    except ValueError as exc:
        raise PemError(f"not PEM certificates: {exc}") from None


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 20-byte subject key identifier of `public_key` (RFC 5280 method 1)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def colon_hex(b: bytes) -> str:
    """``ab:cd:ef``: lower-case hex, a colon between bytes (Consul's form for IDs)."""
    return b.hex(":")


def serial_colon_hex(cert: x509.Certificate) -> str:
    """The certificate's serial number in Consul's ``SerialNumber`` form."""
    serial = cert.serial_number
    return colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))
