"""Fixtures for the CA tests: one root, one signer intermediate and a leaf, and real verifiers."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshnode.ca import (
    BuiltinProvider,
    Intermediate,
    RootCA,
    ServiceID,
    generate_key,
    key_to_pem,
    make_csr,
    validate_csr,
)

# A fixed wall clock: certificates are checked at this time by every verifier
# (openssl via -attime), so the tests do not depend on today's date.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TD = "c1.mesh"
WEB = ServiceID(TD, "dc1", "web")
LEAF_TTL_S = 72 * 3600
INTERMEDIATE_TTL_S = 30 * 86400


@dataclass(frozen=True)
class Leaf:
    cert_pem: str
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Chain:
    """A root, one signer's intermediate and a leaf for `WEB` under it."""

    provider: BuiltinProvider
    root: RootCA
    intermediate: Intermediate
    leaf: Leaf


def make_intermediate(provider: BuiltinProvider, root: RootCA, node: str = "n1") -> Intermediate:
    key = generate_key()
    cert_pem = provider.sign_intermediate(
        root, key.public_key(), signer_node=node, now=NOW, ttl_s=INTERMEDIATE_TTL_S
    )
    return Intermediate(cert_pem=cert_pem, key_pem=key_to_pem(key))


def issue_leaf(provider: BuiltinProvider, intermediate: Intermediate, sid: ServiceID = WEB) -> Leaf:
    key = generate_key()
    csr = validate_csr(make_csr(key, sid.uri), expected=sid)
    cert_pem = provider.sign_leaf(
        intermediate.cert_pem, intermediate.key_pem, csr, now=NOW, ttl_s=LEAF_TTL_S
    )
    return Leaf(cert_pem, key)


def make_chain(provider: BuiltinProvider) -> Chain:
    root = provider.generate_root(TD, now=NOW)
    intermediate = make_intermediate(provider, root)
    return Chain(provider, root, intermediate, issue_leaf(provider, intermediate))


@pytest.fixture(scope="session")
def chain() -> Chain:
    """The default profile: name constraints on."""
    return make_chain(BuiltinProvider())


@pytest.fixture(scope="session")
def chain_no_nc() -> Chain:
    """The same profile without name constraints (for cryptography's verifier)."""
    return make_chain(BuiltinProvider(name_constraints=False))


def openssl_verify(
    tmp_path: Path,
    leaf_pem: str,
    *,
    trusted: Sequence[str],
    untrusted: Sequence[str] = (),
    extra: Sequence[str] = ("-partial_chain",),
    at: datetime = NOW,
) -> subprocess.CompletedProcess[str]:
    """`openssl verify` at time `at` with the given PEMs; the caller checks the result."""
    trusted_path = tmp_path / "trusted.pem"
    trusted_path.write_text("".join(trusted))
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_text(leaf_pem)
    argv = ["openssl", "verify", *extra, "-attime", str(int(at.timestamp()))]
    argv += ["-CAfile", str(trusted_path)]
    if untrusted:
        untrusted_path = tmp_path / "untrusted.pem"
        untrusted_path.write_text("".join(untrusted))
        argv += ["-untrusted", str(untrusted_path)]
    argv.append(str(leaf_path))
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
