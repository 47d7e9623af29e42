"""Settable fakes of the three sources, shipped with the package for tests and benchmarks.

They behave like the real adapters (generations, waits) but take their
answers from `set` calls, so a test or a benchmark runs proxies without an
agent; the standalone benchmark processes use them with static material.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import trio

from ..ca.csr import make_csr, validate_csr
from ..ca.pem import generate_key, key_to_pem
from ..ca.provider import BuiltinProvider, Intermediate, RootCA
from ..ca.revocation import Revocation, RevocationSet
from ..ca.spiffe import ServiceID, parse_spiffe_id
from .revocation import RevocationList
from .sources import Instance, TlsMaterial, Versioned

__all__ = [
    "StaticAuthorizer",
    "StaticCertSource",
    "StaticResolver",
    "StaticRevocations",
    "TestCA",
    "echo",
    "exchange",
]


async def echo(stream: trio.SocketStream) -> None:
    """A plain TCP echo service: echo until EOF (a half-closed client still gets everything)."""
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def exchange(stream: trio.abc.Stream, payload: bytes) -> bytes:
    """Send `payload`, read as many bytes back (fewer at EOF)."""
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        data = await stream.receive_some(65536)
        if not data:
            break
        got += data
    return got


class TestCA:
    """A root and one intermediate from the real provider, issuing leaves as `TlsMaterial`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, trust_domain: str = "c1.mesh", *, datacenter: str = "dc1", ttl_s: float = 3600.0
    ) -> None:
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.ttl_s = ttl_s
        self.provider = BuiltinProvider()
        now = datetime.now(UTC)
        self.root: RootCA = self.provider.generate_root(trust_domain, now=now)
        key = generate_key()
        self.intermediate = Intermediate(
            cert_pem=self.provider.sign_intermediate(
                self.root, key.public_key(), signer_node="n1", now=now, ttl_s=ttl_s
            ),
            key_pem=key_to_pem(key),
        )

    def material(
        self, service: str, *, spiffe_id: str = "", roots_pem: str = "", generation: int = 1
    ) -> TlsMaterial:
        """A fresh leaf for `service` (or for `spiffe_id` if given) trusting our root."""
        parsed = (
            parse_spiffe_id(spiffe_id)
            if spiffe_id
            else ServiceID(self.trust_domain, self.datacenter, service)
        )
        if not isinstance(parsed, ServiceID):
            raise ValueError(f"{spiffe_id!r} is not a service ID")
        uri = parsed.uri
        key = generate_key()
        csr = validate_csr(make_csr(key, uri), expected=parsed)
        leaf_pem = self.provider.sign_leaf(
            self.intermediate.cert_pem,
            self.intermediate.key_pem,
            csr,
            now=datetime.now(UTC),
            ttl_s=self.ttl_s,
        )
        return TlsMaterial(
            service=service,
            spiffe_id=uri,
            trust_domain=self.trust_domain,
            cert_chain_pem=leaf_pem + self.intermediate.cert_pem,
            key_pem=key_to_pem(key),
            roots_pem=roots_pem or self.root.cert_pem,
            generation=generation,
        )


class StaticCertSource:
    """A `CertSource` whose material is whatever was last `set`."""

    def __init__(self, material: TlsMaterial | None = None) -> None:
        self._versions = Versioned()
        self._material: TlsMaterial | None = None
        if material is not None:
            self.set(material)

    def current(self) -> TlsMaterial | None:
        return self._material

    def set(self, material: TlsMaterial) -> TlsMaterial:
        """Swap in new material; it gets the next generation (whatever it carried)."""
        generation = self._versions.bump()
        self._material = TlsMaterial(
            material.service,
            material.spiffe_id,
            material.trust_domain,
            material.cert_chain_pem,
            material.key_pem,
            material.roots_pem,
            generation,
        )
        return self._material

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to follow: the material changes only by `set`."""
        task_status.started()
        await trio.sleep_forever()


class StaticAuthorizer:
    """An `Authorizer` from explicit (source, destination) -> allowed rules and a default."""

    def __init__(
        self, rules: Mapping[tuple[str, str], bool] | None = None, *, default: bool = True
    ) -> None:
        self._versions = Versioned()
        self._rules = dict(rules or {})
        self._default = default

    @property
    def generation(self) -> int:
        return self._versions.generation

    def allowed(self, source: str, destination: str) -> tuple[bool, str]:
        rule = self._rules.get((source, destination))
        if rule is None:
            return self._default, f"default {'allow' if self._default else 'deny'}"
        return rule, f"{source} => {destination} {'allowed' if rule else 'denied'}"

    def set(self, source: str, destination: str, allowed: bool) -> None:
        self._rules[(source, destination)] = allowed
        self._versions.bump()

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)


class StaticResolver:
    """A `Resolver` answering the instances last `set` for each destination."""

    def __init__(self, table: Mapping[str, Iterable[Instance]] | None = None) -> None:
        self._versions = Versioned()
        self._table = {k: list(v) for k, v in (table or {}).items()}

    @property
    def generation(self) -> int:
        return self._versions.generation

    async def instances(self, destination: str) -> Sequence[Instance]:
        return self._table.get(destination, [])

    def set(self, destination: str, instances: Iterable[Instance]) -> None:
        self._table[destination] = list(instances)
        self._versions.bump()

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._versions.wait_changed(since_generation, timeout_s)


class StaticRevocations(RevocationList):
    """A `RevocationSource` holding the revocations last `add`ed."""

    def add(self, record: Revocation) -> None:
        self.replace(RevocationSet([*self.revoked.records, record]))
