"""CSR validation: a good request passes, and every bad one is refused with its own reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from meshnode.ca import AgentID, CSRError, ServiceID, generate_key, make_csr, validate_csr
from tests.ca.conftest import TD, WEB

_KEY = generate_key()
_URI = x509.UniformResourceIdentifier(WEB.uri)


def _pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _build(
    *,
    names: list[x509.GeneralName] | None = None,
    subject: x509.Name | None = None,
    extra: Callable[
        [x509.CertificateSigningRequestBuilder], x509.CertificateSigningRequestBuilder
    ] = lambda b: b,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = _KEY,
    digest: hashes.SHA256 | hashes.SHA384 | None = hashes.SHA256(),  # noqa: B008
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pem(extra(builder).sign(key, digest))


def _flip_signature(pem: str) -> str:
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    # The signature's last byte is the DER's last byte: changing it keeps the
    # structure parseable and breaks only the signature.
    der[-1] ^= 0x01
    return _pem(x509.load_der_x509_csr(bytes(der)))


def test_accepts_make_csr() -> None:
    validated = validate_csr(make_csr(_KEY, WEB.uri), expected=WEB)
    assert validated.spiffe_id == WEB
    assert validated.public_key == _KEY.public_key()


def test_accepts_bytes_cn_and_basic_constraints_false() -> None:
    pem = _build(
        names=[_URI],
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]),
        extra=lambda b: b.add_extension(x509.BasicConstraints(ca=False, path_length=None), True),
    )
    assert validate_csr(pem.encode(), expected=WEB).spiffe_id == WEB


def test_accepts_agent_csr() -> None:
    agent = AgentID(TD, "dc1", "n1")
    pem = _build(
        names=[x509.UniformResourceIdentifier(agent.uri)],
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]),
    )
    assert validate_csr(pem, expected=agent).spiffe_id == agent


def _cases() -> list[tuple[str, str | bytes, str]]:
    good = make_csr(_KEY, WEB.uri)
    other_td = ServiceID("c2.mesh", "dc1", "web").uri
    return [
        ("garbage bytes", b"\x00\xff garbage \x13" * 10, "not a PEM 'CERTIFICATE REQUEST'"),
        ("non-ASCII text", "-----BEGIN CERTIFICATE REQUEST-----\né", "non-ASCII"),
        ("oversized", good + " " * 8192, "over the 8192-byte limit"),
        (
            "a certificate, not a CSR",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "is a PEM 'CERTIFICATE' block",
        ),
        (
            "bad base64",
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
            "does not decode",
        ),
        ("two CSRs", good + good, "holds 2 PEM blocks"),
        ("wrong self-signature", _flip_signature(good), "self-signature does not verify"),
        (
            "P-384 key",
            _build(names=[_URI], key=ec.generate_private_key(ec.SECP384R1())),
            "curve secp384r1, want P-256",
        ),
        (
            "RSA key",
            _build(names=[_URI], key=rsa.generate_private_key(65537, 1024)),
            "RSAPublicKey, want ECDSA P-256",
        ),
        (
            "Ed25519 key",
            _build(names=[_URI], key=ed25519.Ed25519PrivateKey.generate(), digest=None),
            "Ed25519PublicKey, want ECDSA P-256",
        ),
        (
            "SHA-384 signature",
            _build(names=[_URI], digest=hashes.SHA384()),
            "want ecdsa-with-SHA256",
        ),
        ("no SAN", _build(), "no subjectAltName"),
        (
            "other service",
            make_csr(_KEY, ServiceID(TD, "dc1", "db").uri),
            "for service 'db', want 'web'",
        ),
        ("other trust domain", make_csr(_KEY, other_td), "trust domain 'c2.mesh', want 'c1.mesh'"),
        (
            "agent ID instead of service ID",
            make_csr(_KEY, AgentID(TD, "dc1", "web").uri),
            "want spiffe://c1.mesh/ns/default/dc/dc1/svc/web",
        ),
        (
            "URI that is not a SPIFFE ID",
            _build(names=[x509.UniformResourceIdentifier("https://x")]),
            "not a meshnode SPIFFE ID",
        ),
        (
            "extra DNS SAN",
            _build(names=[_URI, x509.DNSName("web.example")]),
            "DNS:web.example besides its SPIFFE ID",
        ),
        (
            "extra IP SAN",
            _build(names=[_URI, x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
            "IP:10.0.0.1 besides",
        ),
        ("extra email SAN", _build(names=[_URI, x509.RFC822Name("a@b.c")]), "email:a@b.c besides"),
        (
            "second URI SAN",
            _build(names=[_URI, x509.UniformResourceIdentifier(other_td)]),
            "2 URI SANs, want exactly one",
        ),
        (
            "CA:TRUE",
            _build(
                names=[_URI],
                extra=lambda b: b.add_extension(
                    x509.BasicConstraints(ca=True, path_length=None), True
                ),
            ),
            "asks for a CA certificate",
        ),
        (
            "key usage requested",
            _build(
                names=[_URI],
                extra=lambda b: b.add_extension(
                    x509.KeyUsage(True, False, False, False, False, True, False, False, False), True
                ),
            ),
            "requests extension KeyUsage (2.5.29.15)",
        ),
        (
            "subject with O",
            _build(
                names=[_URI],
                subject=x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, "web"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                    ]
                ),
            ),
            "must be empty or CN=web",
        ),
        (
            "subject CN of another service",
            _build(
                names=[_URI], subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")])
            ),
            "'CN=db' must be empty or CN=web",
        ),
        (
            "challengePassword attribute",
            _build(
                names=[_URI],
                extra=lambda b: b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"secret"),
            ),
            "carries attribute 1.2.840.113549.1.9.7",
        ),
    ]


_CASES = _cases()


@pytest.mark.parametrize(
    ("pem", "reason"), [(c[1], c[2]) for c in _CASES], ids=[c[0] for c in _CASES]
)
def test_refuses(pem: str | bytes, reason: str) -> None:
    with pytest.raises(CSRError) as info:
        validate_csr(pem, expected=WEB)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message


def test_reasons_are_distinct() -> None:
    """Each refusal says what was wrong, so an operator can tell them apart in a log."""
    messages = set()
    for _, pem, _ in _CASES:
        with pytest.raises(CSRError) as info:
            validate_csr(pem, expected=WEB)
        messages.add(str(info.value))
    assert len(messages) == len(_CASES)


def test_max_bytes_is_a_parameter() -> None:
    with pytest.raises(CSRError, match="over the 100-byte limit"):
        validate_csr(make_csr(_KEY, WEB.uri), expected=WEB, max_bytes=100)


def test_make_csr_refuses_a_bad_id() -> None:
    with pytest.raises(ValueError, match="spiffe"):
        make_csr(_KEY, "https://c1.mesh/x")
