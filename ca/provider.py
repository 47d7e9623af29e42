"""The CA provider interface and the built-in provider: root, intermediate, cross-sign, leaf.

Everything here is pure and synchronous: wall-clock time comes in as `now`
(timezone-aware), certificates go in and out as PEM text. Only key generation
and serial numbers draw on OpenSSL's and the OS's CSPRNG, which a CA must
(a predictable serial is an attack on the signature, and a key must be secret).

The certificate profile (docs/ca.md has the table):

- **Root**: self-signed, ECDSA P-256, 10 years; CA:TRUE (critical);
  keyCertSign|cRLSign (critical); SKI and AKI (its own SKI); URI SAN
  ``spiffe://<td>``; name constraints (critical) permitting only URIs whose
  host is exactly ``<td>``. RFC 5280 applies a URI constraint to the URI's
  host; a constraint without a leading ``.`` matches that host alone, which
  is a SPIFFE trust domain. OpenSSL, Go and BoringSSL read it so (see
  `BuiltinProvider` for cryptography's verifier, which does not).
- **Intermediate** (one per signer): issued by the root, CA:TRUE with
  pathlen 0, the same key usage, name constraints and URI SAN, AKI = the
  root's SKI. Its life never runs past the root's.
- **Cross-signed root**: the new root's subject, key and extensions, issued
  (and AKI'd) by the old root. Holders of the old root verify
  leaf <- intermediate <- cross-signed <- old root.
- **Leaf**: empty subject, URI SAN (critical, because the subject is empty)
  with exactly the CSR's SPIFFE ID, CA:FALSE (critical), key usage
  digitalSignature (critical), EKU serverAuth+clientAuth, SKI, AKI = the
  issuer's SKI, a random 128-bit serial, NotBefore = now - 1 min. Its life
  never runs past its issuer's.

Key usage of a leaf: Consul writes digitalSignature|keyEncipherment|
dataEncipherment|keyAgreement, Go's defaults for an RSA key. Our keys are
ECDSA: RFC 5480 section 3 says keyEncipherment and dataEncipherment MUST NOT
be set for them, and keyAgreement only serves static ECDH cipher suites,
which TLS 1.3 does not have (its ECDHE is ephemeral and the certificate only
signs). digitalSignature alone is what the X.509-SVID spec requires.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .csr import ValidatedCSR
from .pem import cert_from_pem, cert_to_pem, colon_hex, generate_key, key_from_pem, key_to_pem
from .spiffe import SpiffeError, validate_trust_domain

__all__ = [
    "CLOCK_SKEW_S",
    "ROOT_TTL_S",
    "BuiltinProvider",
    "CAProvider",
    "FileRootProvider",
    "Intermediate",
    "ProviderError",
    "RootCA",
    "trust_domain_of",
]

# A root outlives every cluster we expect; rotation replaces it before then.
ROOT_TTL_S = 10 * 365 * 86400
# NotBefore is backdated this much: a node whose clock is a little behind
# the signer's must not see a fresh certificate as "not yet valid".
CLOCK_SKEW_S = 60
# Parsed issuers kept by a provider: one per signer intermediate and root in use.
_ISSUER_CACHE_MAX = 16


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KEY_USAGE = _key_usage(cert_sign=True)
_LEAF_KEY_USAGE = _key_usage(digital_signature=True)
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_LEAF_BASIC = x509.BasicConstraints(ca=False, path_length=None)
_EMPTY_NAME = x509.Name([])


class ProviderError(ValueError):
    """A provider was given something it cannot sign with or for (one-line message)."""


def trust_domain_of(cert: x509.Certificate) -> str:
    """The trust domain a CA certificate names in its ``spiffe://<td>`` URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ProviderError("CA certificate has no subjectAltName spiffe://<td>") from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
            return uri[len("spiffe://") :]
    raise ProviderError("CA certificate has no URI SAN spiffe://<td>")


@dataclass(frozen=True, slots=True)
class RootCA:
    """A trust anchor and its key, as PEM (what the signers store and share).

    `id` is the colon-hex SHA-256 fingerprint of the certificate's DER. Consul
    uses the same form over SHA-1; SHA-256 is the fingerprint nothing can
    collide, and clients treat the ID as an opaque string.
    """

    cert_pem: str
    key_pem: str

    @property
    def cert(self) -> x509.Certificate:
        return cert_from_pem(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return key_from_pem(self.key_pem)

    @property
    def id(self) -> str:
        return colon_hex(self.cert.fingerprint(hashes.SHA256()))

    @property
    def trust_domain(self) -> str:
        return trust_domain_of(self.cert)


@dataclass(frozen=True, slots=True)
class Intermediate:
    """A signer's CA certificate (issued by a root to that one signer) and its key."""

    cert_pem: str
    key_pem: str

    @property
    def cert(self) -> x509.Certificate:
        return cert_from_pem(self.cert_pem)


class CAProvider(Protocol):
    """What the agent asks of a CA: a root, intermediates, cross-signatures, leaves.

    Certificates travel as PEM text, so a provider may keep its keys
    elsewhere (files, an HSM, Vault) and callers do not change.
    """

    def generate_root(
        self, trust_domain: str, *, now: datetime, ttl_s: float = ROOT_TTL_S
    ) -> RootCA: ...

    def sign_intermediate(
        self,
        root: RootCA,
        public_key: ec.EllipticCurvePublicKey,
        *,
        signer_node: str,
        now: datetime,
        ttl_s: float,
    ) -> str: ...

    def cross_sign(self, old_root: RootCA, new_root_cert_pem: str, *, now: datetime) -> str: ...

    def sign_leaf(
        self,
        issuer_cert_pem: str,
        issuer_key_pem: str,
        csr: ValidatedCSR,
        *,
        now: datetime,
        ttl_s: float,
    ) -> str: ...


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ProviderError("now must be timezone-aware (a naive time is ambiguous)")


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ProviderError(f"ttl_s must be positive, got {ttl_s}")


def _serial() -> int:
    """A random positive 128-bit serial (CA/Browser Forum asks for at least 64 random bits)."""
    return secrets.randbits(128) or 1


def _validity(now: datetime, ttl_s: float, limit: datetime | None) -> tuple[datetime, datetime]:
    """NotBefore backdated for clock skew; NotAfter capped at the issuer's own end."""
    not_before = now - timedelta(seconds=CLOCK_SKEW_S)
    not_after = now + timedelta(seconds=ttl_s)
    if limit is not None:
        not_after = min(not_after, limit)
    return not_before, not_after


def _name_constraints(trust_domain: str) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
        excluded_subtrees=None,
    )


def _ca_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    authority_key_id: x509.AuthorityKeyIdentifier,
    trust_domain: str,
    path_length: int | None,
    not_before: datetime,
    not_after: datetime,
    name_constraints: bool,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )
    if name_constraints:
        # RFC 5280 section 4.2.1.10: conforming CAs MUST mark name constraints critical.
        builder = builder.add_extension(_name_constraints(trust_domain), critical=True)
    return builder


def _authority_key_id(cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI naming `cert` as issuer: its SKI as written, else computed from its key."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ProviderError("issuer key is not ECDSA") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@dataclass(frozen=True, slots=True)
class _Issuer:
    """A parsed, checked issuer: parsing PEM keys on every leaf would halve the rate."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    authority_key_id: x509.AuthorityKeyIdentifier
    trust_domain: str | None
    # The part of every leaf that only depends on the issuer, built once:
    # CertificateBuilder copies its extension list on each add.
    leaf_template: x509.CertificateBuilder


def _load_issuer(cert_pem: str, key_pem: str) -> _Issuer:
    cert = cert_from_pem(cert_pem)
    key = key_from_pem(key_pem)
    if cert.public_key() != key.public_key():
        raise ProviderError("issuer key does not match the issuer certificate")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ProviderError("issuer certificate has no basicConstraints CA:TRUE") from None
    if not basic.ca:
        raise ProviderError("issuer certificate is not a CA (basicConstraints CA:FALSE)")
    try:
        trust_domain: str | None = trust_domain_of(cert)
    except ProviderError:
        trust_domain = None
    authority_key_id = _authority_key_id(cert)
    leaf_template = (
        x509.CertificateBuilder()
        .issuer_name(cert.subject)
        .subject_name(_EMPTY_NAME)
        .add_extension(_LEAF_BASIC, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(authority_key_id, critical=False)
    )
    return _Issuer(cert, key, authority_key_id, trust_domain, leaf_template)


def _root_subject(trust_domain: str) -> x509.Name:
    # A random tag keeps every root's subject distinct, so that path builders
    # never confuse an old root with its successor during a rotation.
    tag = secrets.token_hex(4)
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshnode root {tag} {trust_domain}"[:64]),
        ]
    )


class BuiltinProvider:
    """The default provider: every key is generated and held by the agent itself.

    `name_constraints` (default on) writes the URI name constraints into
    roots and intermediates. OpenSSL, Go and BoringSSL (Envoy) enforce them;
    cryptography's own verifier (`cryptography.x509.verification`, up to at
    least 50.0) refuses any chain that carries a URI name constraint
    ("unsupported name constraint"), so a cluster whose clients verify with
    it must turn them off. Consul's roots carry none.
    """

    def __init__(self, *, name_constraints: bool = True) -> None:
        self.name_constraints = name_constraints
        self._issuers: dict[tuple[str, str], _Issuer] = {}

    def _issuer(self, cert_pem: str, key_pem: str) -> _Issuer:
        found = self._issuers.get((cert_pem, key_pem))
        if found is None:
            found = _load_issuer(cert_pem, key_pem)
            if len(self._issuers) >= _ISSUER_CACHE_MAX:
                del self._issuers[next(iter(self._issuers))]
            self._issuers[(cert_pem, key_pem)] = found
        return found

    def generate_root(
        self, trust_domain: str, *, now: datetime, ttl_s: float = ROOT_TTL_S
    ) -> RootCA:
        """A new self-signed root for `trust_domain`, constrained to it."""
        _check_now(now)
        _check_ttl(ttl_s)
        try:
            validate_trust_domain(trust_domain)
        except SpiffeError as exc:
            raise ProviderError(f"cannot make a root: {exc}") from None
        key = generate_key()
        subject = _root_subject(trust_domain)
        not_before, not_after = _validity(now, ttl_s, None)
        cert = _ca_builder(
            subject=subject,
            issuer=subject,
            public_key=key.public_key(),
            authority_key_id=x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            trust_domain=trust_domain,
            path_length=None,
            not_before=not_before,
            not_after=not_after,
            name_constraints=self.name_constraints,
        ).sign(key, hashes.SHA256())
        return RootCA(cert_pem=cert_to_pem(cert), key_pem=key_to_pem(key))

    def sign_intermediate(
        self,
        root: RootCA,
        public_key: ec.EllipticCurvePublicKey,
        *,
        signer_node: str,
        now: datetime,
        ttl_s: float,
    ) -> str:
        """The intermediate for one signer's key: CA:TRUE pathlen 0, within the root's life."""
        _check_now(now)
        _check_ttl(ttl_s)
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ProviderError(f"intermediate key is on {public_key.curve.name}, want P-256")
        issuer = self._issuer(root.cert_pem, root.key_pem)
        if issuer.trust_domain is None:
            raise ProviderError("root certificate has no URI SAN spiffe://<td>")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME,
                    f"meshnode signer {secrets.token_hex(4)} {signer_node}"[:64],
                ),
            ]
        )
        not_before, not_after = _validity(now, ttl_s, issuer.cert.not_valid_after_utc)
        cert = _ca_builder(
            subject=subject,
            issuer=issuer.cert.subject,
            public_key=public_key,
            authority_key_id=issuer.authority_key_id,
            trust_domain=issuer.trust_domain,
            path_length=0,
            not_before=not_before,
            not_after=not_after,
            name_constraints=self.name_constraints,
        ).sign(issuer.key, hashes.SHA256())
        return cert_to_pem(cert)

    def cross_sign(self, old_root: RootCA, new_root_cert_pem: str, *, now: datetime) -> str:
        """The new root's certificate re-issued by the old root (same subject, key, SKI)."""
        _check_now(now)
        issuer = self._issuer(old_root.cert_pem, old_root.key_pem)
        new_root = cert_from_pem(new_root_cert_pem)
        public_key = new_root.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ProviderError("new root's key is not ECDSA")
        limit = min(new_root.not_valid_after_utc, issuer.cert.not_valid_after_utc)
        not_before = now - timedelta(seconds=CLOCK_SKEW_S)
        builder = (
            x509.CertificateBuilder()
            .subject_name(new_root.subject)
            .issuer_name(issuer.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(limit)
        )
        for extension in new_root.extensions:
            if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
                builder = builder.add_extension(extension.value, extension.critical)
        builder = builder.add_extension(issuer.authority_key_id, critical=False)
        return cert_to_pem(builder.sign(issuer.key, hashes.SHA256()))

    def sign_leaf(
        self,
        issuer_cert_pem: str,
        issuer_key_pem: str,
        csr: ValidatedCSR,
        *,
        now: datetime,
        ttl_s: float,
    ) -> str:
        """A leaf for the CSR's key and SPIFFE ID (the profile is the CA's, not the CSR's)."""
        _check_now(now)
        _check_ttl(ttl_s)
        issuer = self._issuer(issuer_cert_pem, issuer_key_pem)
        spiffe_id = csr.spiffe_id
        if issuer.trust_domain is not None and spiffe_id.trust_domain != issuer.trust_domain:
            raise ProviderError(
                f"leaf is for trust domain {spiffe_id.trust_domain!r}, "
                f"the issuer's is {issuer.trust_domain!r}"
            )
        issuer_end = issuer.cert.not_valid_after_utc
        if now >= issuer_end:
            raise ProviderError(f"issuer certificate expired at {issuer_end.isoformat()}")
        not_before, not_after = _validity(now, ttl_s, issuer_end)
        cert = (
            issuer.leaf_template.public_key(csr.public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key), False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id.uri)]),
                critical=True,
            )
            .sign(issuer.key, hashes.SHA256())
        )
        return cert_to_pem(cert)


class FileRootProvider(BuiltinProvider):
    """A root supplied by the operator as two PEM files; the rest is the built-in provider's.

    `generate_root` reads the files when it is called (so a replaced file is
    picked up at the next rotation) and checks that they hold a P-256 CA for
    the requested trust domain, valid at `now`, whose key matches. `ttl_s` is
    ignored: the file's certificate says how long it lives.
    """

    def __init__(
        self, cert_path: str | Path, key_path: str | Path, *, name_constraints: bool = True
    ) -> None:
        super().__init__(name_constraints=name_constraints)
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)

    def generate_root(
        self, trust_domain: str, *, now: datetime, ttl_s: float = ROOT_TTL_S
    ) -> RootCA:
        _check_now(now)
        try:
            cert_pem = self.cert_path.read_text(encoding="ascii")
            key_pem = self.key_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderError(f"cannot read the root files: {exc}") from None
        try:
            issuer = _load_issuer(cert_pem, key_pem)
        except ValueError as exc:
            raise ProviderError(f"{self.cert_path}: {exc}") from None
        if issuer.cert.subject != issuer.cert.issuer:
            raise ProviderError(f"{self.cert_path}: not a self-signed root")
        if issuer.trust_domain != trust_domain:
            raise ProviderError(
                f"{self.cert_path}: root is for trust domain {issuer.trust_domain!r}, "
                f"want {trust_domain!r} (URI SAN spiffe://{trust_domain})"
            )
        if not issuer.cert.not_valid_before_utc <= now < issuer.cert.not_valid_after_utc:
            raise ProviderError(f"{self.cert_path}: root is not valid at {now.isoformat()}")
        return RootCA(cert_pem=cert_pem, key_pem=key_pem)
