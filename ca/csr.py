"""Certificate signing requests: made by agents, checked by signers.

A CSR comes from another node, so `validate_csr` treats it as remote bytes
(DESIGN.md, principle 4): every way it can be wrong is a `CSRError` with a
one-line reason, and nothing from it reaches a certificate except its public
key. The leaf's profile (subject, key usage, validity) is the CA's; the SPIFFE
ID is the one the signer expected, which the CSR must ask for exactly.

Rules that live here:

- At most `max_bytes` (8 KiB): a P-256 CSR is about 450 bytes of PEM.
- Exactly one PEM block, ``CERTIFICATE REQUEST``.
- Key: ECDSA P-256. Self-signature: ecdsa-with-SHA256, and it must verify.
- Extensions: subjectAltName (required) and basicConstraints with CA:FALSE
  (Go and some tools add it); any other requested extension is refused
  rather than ignored, so a request never silently means less than it says.
- subjectAltName: exactly one URI, equal to the expected SPIFFE ID; no DNS,
  IP, e-mail or other name.
- Subject: empty (what `make_csr` writes, and what Consul's agents send), or
  a single ``CN`` equal to the service name (or the node name of an agent
  ID), which ``openssl req -subj /CN=web`` users write. The issued leaf's
  subject is empty in both cases.
- Attributes: only the extension request (no challengePassword, no others).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier, SignatureAlgorithmOID

from .spiffe import AgentID, ServiceID, SpiffeError, parse_spiffe_id

__all__ = ["CSRError", "ValidatedCSR", "make_csr", "validate_csr"]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"
# PKCS#9 extensionRequest: the attribute that carries the requested extensions.
_EXTENSION_REQUEST = ObjectIdentifier("1.2.840.113549.1.9.14")
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ALLOWED_EXTENSIONS = frozenset(
    {ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.BASIC_CONSTRAINTS}
)


class CSRError(ValueError):
    """A CSR is refused; the message is the one-line reason."""


@dataclass(frozen=True, slots=True)
class ValidatedCSR:
    """What a signer may use from an accepted CSR: its key and the ID it asked for."""

    public_key: ec.EllipticCurvePublicKey
    spiffe_id: ServiceID | AgentID


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_uri: str) -> str:
    """A PEM CSR for `spiffe_uri` (validated first) with an empty subject."""
    parse_spiffe_id(spiffe_uri)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        # Critical because the subject is empty (RFC 5280 section 4.2.1.6).
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_uri)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _describe_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value[:100]}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value[:100]}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value[:100]}"
    return type(name).__name__


def _load(pem: str | bytes, max_bytes: int) -> x509.CertificateSigningRequest:
    if len(pem) > max_bytes:
        raise CSRError(f"CSR is {len(pem)} bytes, over the {max_bytes}-byte limit")
    if isinstance(pem, str):
        try:
            data = pem.encode("ascii")
        except UnicodeEncodeError:
            raise CSRError("CSR is not PEM: it holds non-ASCII characters") from None
    else:
        data = pem
    blocks = data.count(b"-----BEGIN ")
    if blocks == 0:
        raise CSRError("CSR is not a PEM 'CERTIFICATE REQUEST' block")
    if _PEM_BEGIN not in data:
        start = data.index(b"-----BEGIN ") + len(b"-----BEGIN ")
        label = data[start : data.find(b"-----", start)][:40].decode("ascii", "replace")
        raise CSRError(f"CSR input is a PEM {label!r} block, not a 'CERTIFICATE REQUEST'")
    if blocks > 1:
        raise CSRError(f"CSR input holds {blocks} PEM blocks, want exactly one")
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise CSRError("CSR PEM block does not decode as a PKCS#10 request") from None


def _check_key(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CSRError("CSR public key is of an unsupported type, want ECDSA P-256") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CSRError(f"CSR key is {type(key).__name__}, want ECDSA P-256")
    if not isinstance(key.curve, ec.SECP256R1):
        raise CSRError(f"CSR key is on curve {key.curve.name}, want P-256 (secp256r1)")
    if csr.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise CSRError(
            f"CSR is signed with {csr.signature_algorithm_oid.dotted_string}, "
            "want ecdsa-with-SHA256"
        )
    # The same check as `csr.is_signature_valid` (the algorithm is fixed just
    # above), without its second decoding of the key: a quarter of the cost.
    try:
        key.verify(csr.signature, csr.tbs_certrequest_bytes, _ECDSA_SHA256)
    except InvalidSignature:
        raise CSRError("CSR self-signature does not verify with its own key") from None
    return key


def _check_extensions(csr: x509.CertificateSigningRequest, expected: str) -> None:
    try:
        for attribute in csr.attributes:
            if attribute.oid != _EXTENSION_REQUEST:
                raise CSRError(
                    f"CSR carries attribute {attribute.oid.dotted_string}; "
                    "only the extension request is accepted"
                )
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CSRError(f"CSR attributes or extensions do not parse: {exc}") from None
    for extension in extensions:
        if extension.oid not in _ALLOWED_EXTENSIONS:
            raise CSRError(
                f"CSR requests extension {type(extension.value).__name__} "
                f"({extension.oid.dotted_string}); "
                "only subjectAltName and basicConstraints CA:FALSE are accepted"
            )
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise CSRError("CSR asks for a CA certificate (basicConstraints CA:TRUE)")
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CSRError(f"CSR has no subjectAltName; want exactly URI:{expected}") from None
    names = list(san)
    others = [n for n in names if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        raise CSRError(
            f"CSR asks for {_describe_name(others[0])} besides its SPIFFE ID; "
            "only one URI SAN is accepted"
        )
    if len(names) != 1:
        raise CSRError(f"CSR asks for {len(names)} URI SANs, want exactly one")
    uri = names[0].value
    if uri != expected:
        raise CSRError(_wrong_id_reason(uri, expected))


def _wrong_id_reason(uri: str, expected: str) -> str:
    """Why `uri` is not `expected`, in the words an operator would search for."""
    try:
        asked = parse_spiffe_id(uri)
    except SpiffeError as exc:
        return f"CSR URI SAN is not a meshnode SPIFFE ID: {exc}"
    want = parse_spiffe_id(expected)
    if asked.trust_domain != want.trust_domain:
        return f"CSR is for trust domain {asked.trust_domain!r}, want {want.trust_domain!r}"
    if type(asked) is not type(want):
        return f"CSR asks for {uri[:200]}, want {expected}"
    asked_name = asked.service if isinstance(asked, ServiceID) else asked.node
    want_name = want.service if isinstance(want, ServiceID) else want.node
    if asked_name != want_name:
        kind = "service" if isinstance(want, ServiceID) else "agent"
        return f"CSR is for {kind} {asked_name!r}, want {want_name!r}"
    return f"CSR asks for {uri[:200]}, want {expected}"


def _check_subject(csr: x509.CertificateSigningRequest, expected: ServiceID | AgentID) -> None:
    subject = csr.subject
    if len(subject) == 0:
        return
    name = expected.service if isinstance(expected, ServiceID) else expected.node
    attributes = list(subject)
    if (
        len(subject.rdns) == 1
        and len(attributes) == 1
        and attributes[0].oid == NameOID.COMMON_NAME
        and attributes[0].value == name
    ):
        return
    raise CSRError(f"CSR subject {subject.rfc4514_string()[:200]!r} must be empty or CN={name}")


def validate_csr(
    pem: str | bytes, *, expected: ServiceID | AgentID, max_bytes: int = 8192
) -> ValidatedCSR:
    """The key and ID of a CSR that asks for exactly `expected`; `CSRError` otherwise."""
    csr = _load(pem, max_bytes)
    key = _check_key(csr)
    _check_extensions(csr, expected.uri)
    _check_subject(csr, expected)
    return ValidatedCSR(public_key=key, spiffe_id=expected)
