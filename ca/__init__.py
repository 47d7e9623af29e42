"""meshnode's certificate authority: SPIFFE IDs, CSRs, the provider, signer election.

The mechanics are pure and synchronous (no trio, no network, no store):
time comes in as `now`, certificates go in and out as PEM. The agent side
(bootstrap, signer RPC, the leaf manager) drives them. docs/ca.md describes
the identities and the certificate profile.
"""

from .csr import CSRError, ValidatedCSR, make_csr, validate_csr
from .election import signer_set, signer_weight
from .pem import (
    PemError,
    cert_from_pem,
    cert_to_pem,
    certs_from_pem,
    colon_hex,
    generate_key,
    key_from_pem,
    key_id,
    key_to_pem,
    serial_colon_hex,
)
from .provider import (
    CLOCK_SKEW_S,
    ROOT_TTL_S,
    BuiltinProvider,
    CAProvider,
    FileRootProvider,
    Intermediate,
    ProviderError,
    RootCA,
    trust_domain_of,
)
from .spiffe import (
    AgentID,
    ServiceID,
    SpiffeError,
    parse_spiffe_id,
    trust_domain_for,
    validate_trust_domain,
)

__all__ = [
    "CLOCK_SKEW_S",
    "ROOT_TTL_S",
    "AgentID",
    "BuiltinProvider",
    "CAProvider",
    "CSRError",
    "FileRootProvider",
    "Intermediate",
    "PemError",
    "ProviderError",
    "RootCA",
    "ServiceID",
    "SpiffeError",
    "ValidatedCSR",
    "cert_from_pem",
    "cert_to_pem",
    "certs_from_pem",
    "colon_hex",
    "generate_key",
    "key_from_pem",
    "key_id",
    "key_to_pem",
    "make_csr",
    "parse_spiffe_id",
    "serial_colon_hex",
    "signer_set",
    "signer_weight",
    "trust_domain_for",
    "trust_domain_of",
    "validate_csr",
    "validate_trust_domain",
]
