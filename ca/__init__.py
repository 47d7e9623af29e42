"""meshnode's certificate authority: SPIFFE IDs, CSRs, the provider, signers, leaves.

Sans-IO (no trio, no socket, no clock, no global random; time comes in as
`now`, randomness as a `random.Random`, certificates as PEM): `spiffe`,
`csr`, `pem`, `provider`, `election`, `records` (the replicated CA records
and the views decoded from them), `signer` (the signing decisions: rate
limit, ownership, who signs, when to renew), `approval` (signer requests
and approvals signed by a root), `anchor` (which roots are trusted: the
pinned one and roots cross-signed from it), `sealing` (a secret sealed to
one node's identity key) and `fields` (strict readers of replicated values).

Trio drivers around them: `service` (the agent's part in the CA: bootstrap,
root keys, intermediates, answering peers), `rpc` (agent-to-agent CA RPC on
the gossip port), `leaf_manager` (one fresh leaf per local service) and the
file I/O of `keystore` (keys at rest in the data dir). The drivers read the
clocks they are given and pass `now` down.

This package must not import `dns`, `proxy`, `meshnode.agent` or
`meshnode.api`: the agent wires the CA in (`meshnode/agent/ca_wiring.py`),
never the other way round. docs/ca.md describes the identities, the
certificate profile, the signers and their approval.
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
