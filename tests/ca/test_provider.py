"""The certificate profile, checked by real verifiers: openssl, cryptography, the spiffe package."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe.svid.x509_svid import X509Svid

from meshnode.ca import (
    CLOCK_SKEW_S,
    BuiltinProvider,
    CAProvider,
    FileRootProvider,
    ProviderError,
    RootCA,
    ServiceID,
    ValidatedCSR,
    cert_from_pem,
    cert_to_pem,
    colon_hex,
    generate_key,
    key_id,
    key_to_pem,
    serial_colon_hex,
)
from tests.ca.conftest import (
    LEAF_TTL_S,
    NOW,
    TD,
    WEB,
    Chain,
    issue_leaf,
    make_intermediate,
    openssl_verify,
)

E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


# --- the profile ------------------------------------------------------------------------------


def test_root_profile(chain: Chain) -> None:
    root = chain.root.cert
    assert root.subject == root.issuer
    assert root.not_valid_before_utc == NOW - timedelta(seconds=CLOCK_SKEW_S)
    assert root.not_valid_after_utc - NOW == timedelta(days=3650)
    basic = _ext(root, x509.BasicConstraints)
    assert basic.critical and basic.value == x509.BasicConstraints(ca=True, path_length=None)
    usage = _ext(root, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    san = _ext(root, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://{TD}")]
    nc = _ext(root, x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier(TD)]
    assert nc.value.excluded_subtrees is None
    assert _ski(root) == key_id(chain.root.key.public_key()) == _aki(root)
    assert chain.root.trust_domain == TD
    assert chain.root.id == colon_hex(root.fingerprint(hashes.SHA256()))
    assert len(chain.root.id) == 32 * 3 - 1


def test_intermediate_profile(chain: Chain) -> None:
    inter = chain.intermediate.cert
    assert inter.issuer == chain.root.cert.subject
    assert "n1" in inter.subject.rfc4514_string()
    assert _ext(inter, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    assert _ext(inter, x509.KeyUsage).value.key_cert_sign
    assert (
        _ext(inter, x509.NameConstraints).value == _ext(chain.root.cert, x509.NameConstraints).value
    )
    assert list(_ext(inter, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(f"spiffe://{TD}")
    ]
    assert _aki(inter) == _ski(chain.root.cert)


def test_leaf_profile(chain: Chain) -> None:
    leaf = cert_from_pem(chain.leaf.cert_pem)
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == chain.intermediate.cert.subject
    assert leaf.public_key() == chain.leaf.key.public_key()
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert leaf.not_valid_before_utc == NOW - timedelta(seconds=CLOCK_SKEW_S)
    assert leaf.not_valid_after_utc == NOW + timedelta(seconds=LEAF_TTL_S)
    assert 0 < leaf.serial_number < 2**128
    assert serial_colon_hex(leaf).count(":") >= 7
    san = _ext(leaf, x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty (RFC 5280 4.2.1.6)
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB.uri)]
    basic = _ext(leaf, x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = _ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_encipherment or usage.value.key_cert_sign or usage.value.crl_sign)
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert _ski(leaf) == key_id(chain.leaf.key.public_key())
    assert _aki(leaf) == _ski(chain.intermediate.cert)


def test_serials_differ(chain: Chain) -> None:
    serials = {
        cert_from_pem(issue_leaf(chain.provider, chain.intermediate).cert_pem).serial_number
        for _ in range(20)
    }
    assert len(serials) == 20


def test_lifetimes_never_outlive_the_issuer(chain: Chain) -> None:
    provider = chain.provider
    short_root = provider.generate_root(TD, now=NOW, ttl_s=3600)
    inter = make_intermediate(provider, short_root)  # asks for 30 days
    assert inter.cert.not_valid_after_utc == short_root.cert.not_valid_after_utc
    leaf = issue_leaf(provider, inter)  # asks for 72 h
    assert cert_from_pem(leaf.cert_pem).not_valid_after_utc == inter.cert.not_valid_after_utc


# --- real verifiers ---------------------------------------------------------------------------


def test_openssl_verifies_the_leaf(chain: Chain, tmp_path: Path) -> None:
    for purpose in ("sslserver", "sslclient"):
        result = openssl_verify(
            tmp_path,
            chain.leaf.cert_pem,
            trusted=[chain.root.cert_pem],
            untrusted=[chain.intermediate.cert_pem],
            extra=["-partial_chain", "-x509_strict", "-purpose", purpose],
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": OK")


def test_openssl_refuses_without_the_intermediate(chain: Chain, tmp_path: Path) -> None:
    result = openssl_verify(tmp_path, chain.leaf.cert_pem, trusted=[chain.root.cert_pem])
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stderr


def test_openssl_refuses_an_expired_leaf(chain: Chain, tmp_path: Path) -> None:
    result = openssl_verify(
        tmp_path,
        chain.leaf.cert_pem,
        trusted=[chain.root.cert_pem],
        untrusted=[chain.intermediate.cert_pem],
        at=NOW + timedelta(seconds=LEAF_TTL_S + 1),
    )
    assert result.returncode != 0
    assert "certificate has expired" in result.stderr


def _forge_leaf(issuer_cert_pem: str, issuer_key: ec.EllipticCurvePrivateKey, uri: str) -> str:
    """A leaf built by hand, as a misbehaving signer that skips the provider's checks would."""
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(cert_from_pem(issuer_cert_pem).subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert_to_pem(cert)


def _rogue(root: RootCA) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """An intermediate under `root` that carries no name constraints of its own."""
    key = generate_key()
    cert_pem = BuiltinProvider(name_constraints=False).sign_intermediate(
        root, key.public_key(), signer_node="rogue", now=NOW, ttl_s=3600
    )
    assert not any(
        isinstance(e.value, x509.NameConstraints) for e in cert_from_pem(cert_pem).extensions
    )
    return cert_pem, key


def test_provider_refuses_a_leaf_for_another_trust_domain(chain: Chain) -> None:
    csr = ValidatedCSR(generate_key().public_key(), ServiceID("evil.mesh", "dc1", "web"))
    inter = chain.intermediate
    with pytest.raises(
        ProviderError, match=r"trust domain 'evil\.mesh', the issuer's is 'c1\.mesh'"
    ):
        chain.provider.sign_leaf(inter.cert_pem, inter.key_pem, csr, now=NOW, ttl_s=60)


def test_name_constraints_constrain(chain: Chain, chain_no_nc: Chain, tmp_path: Path) -> None:
    """The root's constraints stop a rogue intermediate's leaf for another trust domain."""

    def verify_forged(root: RootCA, uri: str) -> subprocess.CompletedProcess[str]:
        """openssl on a leaf for `uri` under a new rogue intermediate of `root`."""
        rogue_pem, rogue_key = _rogue(root)
        leaf_pem = _forge_leaf(rogue_pem, rogue_key, uri)
        return openssl_verify(
            tmp_path, leaf_pem, trusted=[root.cert_pem], untrusted=[rogue_pem], extra=[]
        )

    evil = ServiceID("evil.mesh", "dc1", "web").uri
    subdomain = ServiceID(f"x.{TD}", "dc1", "web").uri  # an exact host, not a domain
    for uri, ok in ((evil, False), (subdomain, False), (WEB.uri, True)):
        result = verify_forged(chain.root, uri)
        assert (result.returncode == 0) is ok, result.stderr
        if not ok:
            assert "permitted subtree violation" in result.stderr
    # Control: under a root without constraints the same forgery verifies.
    result = verify_forged(chain_no_nc.root, evil)
    assert result.returncode == 0, result.stderr


def _client_verifier(*roots: RootCA) -> verification.ClientVerifier:
    store = verification.Store([r.cert for r in roots])
    return verification.PolicyBuilder().store(store).time(NOW).build_client_verifier()


def test_cryptography_client_verifier(chain_no_nc: Chain) -> None:
    """cryptography's verifier accepts the leaf profile; the SPIFFE ID is ours to check."""
    leaf = cert_from_pem(chain_no_nc.leaf.cert_pem)
    verified = _client_verifier(chain_no_nc.root).verify(leaf, [chain_no_nc.intermediate.cert])
    assert verified.subjects == [x509.UniformResourceIdentifier(WEB.uri)]
    assert [c.subject for c in verified.chain] == [
        leaf.subject,
        chain_no_nc.intermediate.cert.subject,
        chain_no_nc.root.cert.subject,
    ]
    assert ExtendedKeyUsageOID.SERVER_AUTH in _ext(leaf, x509.ExtendedKeyUsage).value


def test_cryptography_server_verifier_needs_a_dns_or_ip_name(chain_no_nc: Chain) -> None:
    """The server verifier matches a DNSName or IPAddress subject only, never a URI SAN.

    A SPIFFE leaf has no DNS or IP name, so it can never pass; the client
    verifier above (and openssl with -purpose sslserver) stand in for it.
    """
    store = verification.Store([chain_no_nc.root.cert])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(NOW)
        .build_server_verifier(x509.DNSName("web"))
    )
    with pytest.raises(verification.VerificationError, match="no matching subjectAltName"):
        verifier.verify(cert_from_pem(chain_no_nc.leaf.cert_pem), [chain_no_nc.intermediate.cert])


def test_cryptography_refuses_uri_name_constraints(chain: Chain) -> None:
    """Why `name_constraints=False` exists: cryptography fails closed on URI constraints.

    When this test fails, cryptography has learned URI constraints: drop the
    caveat in docs/ca.md and BuiltinProvider.
    """
    with pytest.raises(verification.VerificationError, match="unsupported name constraint"):
        _client_verifier(chain.root).verify(
            cert_from_pem(chain.leaf.cert_pem), [chain.intermediate.cert]
        )


def test_spiffe_package_parses_the_svid(chain: Chain) -> None:
    svid = X509Svid.parse(
        (chain.leaf.cert_pem + chain.intermediate.cert_pem).encode(),
        key_to_pem(chain.leaf.key).encode(),
    )
    assert str(svid.spiffe_id) == WEB.uri
    assert len(svid.cert_chain) == 2


# --- rotation ---------------------------------------------------------------------------------


def test_cross_signed_rotation(chain: Chain, tmp_path: Path) -> None:
    provider = chain.provider
    old = chain
    new_root = provider.generate_root(TD, now=NOW)
    assert new_root.cert.subject != old.root.cert.subject
    cross_pem = provider.cross_sign(old.root, new_root.cert_pem, now=NOW)
    cross = cert_from_pem(cross_pem)
    assert cross.subject == new_root.cert.subject
    assert cross.issuer == old.root.cert.subject
    assert cross.public_key() == new_root.cert.public_key()
    assert _ski(cross) == _ski(new_root.cert)
    assert _aki(cross) == _ski(old.root.cert)
    new_inter = make_intermediate(provider, new_root, "n2")
    new_leaf = issue_leaf(provider, new_inter).cert_pem

    def ok(leaf: str, trusted: list[str], untrusted: list[str]) -> bool:
        result = openssl_verify(tmp_path, leaf, trusted=trusted, untrusted=untrusted, extra=[])
        return result.returncode == 0

    # Holders of only the old root: the new leaf verifies through the cross-signed cert.
    assert ok(new_leaf, [old.root.cert_pem], [new_inter.cert_pem, cross_pem])
    assert not ok(new_leaf, [old.root.cert_pem], [new_inter.cert_pem])
    # Holders of only the new root: new leaves verify, and old ones through the
    # reverse cross-signature (the old root re-issued by the new one).
    assert ok(new_leaf, [new_root.cert_pem], [new_inter.cert_pem])
    reverse_pem = provider.cross_sign(new_root, old.root.cert_pem, now=NOW)
    assert ok(old.leaf.cert_pem, [new_root.cert_pem], [old.intermediate.cert_pem, reverse_pem])
    assert not ok(old.leaf.cert_pem, [new_root.cert_pem], [old.intermediate.cert_pem])
    # The bundle during a rotation holds both roots: both generations verify.
    bundle = [old.root.cert_pem, new_root.cert_pem]
    assert ok(old.leaf.cert_pem, bundle, [old.intermediate.cert_pem])
    assert ok(new_leaf, bundle, [new_inter.cert_pem, cross_pem])


def test_cross_signed_chain_with_cryptography(chain_no_nc: Chain) -> None:
    provider = chain_no_nc.provider
    new_root = provider.generate_root(TD, now=NOW)
    cross = cert_from_pem(provider.cross_sign(chain_no_nc.root, new_root.cert_pem, now=NOW))
    new_inter = make_intermediate(provider, new_root, "n2")
    leaf = cert_from_pem(issue_leaf(provider, new_inter).cert_pem)
    verified = _client_verifier(chain_no_nc.root).verify(leaf, [new_inter.cert, cross])
    assert verified.chain[-1] == chain_no_nc.root.cert
    assert verified.chain[-2] == cross


# --- providers --------------------------------------------------------------------------------


def _as_provider(provider: CAProvider) -> CAProvider:
    return provider


def test_file_root_provider(chain: Chain, tmp_path: Path) -> None:
    """An operator's root from files plugs in where the built-in provider would."""
    cert_path, key_path = tmp_path / "root.pem", tmp_path / "root-key.pem"
    cert_path.write_text(chain.root.cert_pem)
    key_path.write_text(chain.root.key_pem)
    provider = _as_provider(FileRootProvider(cert_path, key_path))
    root = provider.generate_root(TD, now=NOW)
    assert root == chain.root
    inter_key = generate_key()
    inter_pem = provider.sign_intermediate(
        root, inter_key.public_key(), signer_node="n9", now=NOW, ttl_s=3600
    )
    sid = ServiceID(TD, "dc1", "db")
    csr = ValidatedCSR(generate_key().public_key(), sid)
    leaf = provider.sign_leaf(inter_pem, key_to_pem(inter_key), csr, now=NOW, ttl_s=600)
    result = openssl_verify(
        tmp_path, leaf, trusted=[chain.root.cert_pem], untrusted=[inter_pem], extra=[]
    )
    assert result.returncode == 0, result.stderr
    new_root = BuiltinProvider().generate_root(TD, now=NOW)
    assert cert_from_pem(provider.cross_sign(root, new_root.cert_pem, now=NOW)).issuer == (
        root.cert.subject
    )


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("other-td", "root is for trust domain 'c1.mesh', want 'c2.mesh'"),
        ("mismatched-key", "issuer key does not match"),
        ("missing", "cannot read the root files"),
        ("intermediate", "not a self-signed root"),
    ],
)
def test_file_root_provider_refuses(chain: Chain, tmp_path: Path, setup: str, reason: str) -> None:
    cert_path, key_path = tmp_path / "root.pem", tmp_path / "root-key.pem"
    cert_pem, key_pem, td = chain.root.cert_pem, chain.root.key_pem, TD
    if setup == "other-td":
        td = "c2.mesh"
    elif setup == "mismatched-key":
        key_pem = key_to_pem(generate_key())
    elif setup == "intermediate":
        cert_pem, key_pem = chain.intermediate.cert_pem, chain.intermediate.key_pem
    if setup != "missing":
        cert_path.write_text(cert_pem)
        key_path.write_text(key_pem)
    with pytest.raises(ProviderError, match=reason):
        FileRootProvider(cert_path, key_path).generate_root(td, now=NOW)


def test_local_errors(chain: Chain) -> None:
    provider = chain.provider
    csr = ValidatedCSR(generate_key().public_key(), WEB)
    inter = chain.intermediate
    with pytest.raises(ProviderError, match="timezone-aware"):
        provider.generate_root(TD, now=NOW.replace(tzinfo=None))
    with pytest.raises(ProviderError, match="ttl_s must be positive"):
        provider.sign_leaf(inter.cert_pem, inter.key_pem, csr, now=NOW, ttl_s=0)
    with pytest.raises(ProviderError, match="lower-case"):
        provider.generate_root("C1.mesh", now=NOW)
    with pytest.raises(ProviderError, match="expired"):
        provider.sign_leaf(
            inter.cert_pem, inter.key_pem, csr, now=NOW + timedelta(days=31), ttl_s=60
        )
    with pytest.raises(ProviderError, match="not a CA"):
        provider.sign_leaf(chain.leaf.cert_pem, key_to_pem(chain.leaf.key), csr, now=NOW, ttl_s=60)
    with pytest.raises(ProviderError, match="does not match"):
        provider.sign_leaf(inter.cert_pem, chain.root.key_pem, csr, now=NOW, ttl_s=60)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ProviderError, match="want P-256"):
        provider.sign_intermediate(chain.root, p384, signer_node="n", now=NOW, ttl_s=60)
    assert replace(chain.root, key_pem=chain.root.key_pem).id == chain.root.id
