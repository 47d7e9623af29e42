"""The agent side of the CA on in-memory state: bootstrap, signers, RPC refusals, rotation.

Nodes share one `LocalState` (replication that never lags) unless a test is
about replication itself; CA RPC runs over trio memory streams through the
real framing, encryption and strict decoding.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode.ca.csr import make_csr
from meshnode.ca.keystore import KeyStore
from meshnode.ca.leaf_manager import LeafError
from meshnode.ca.pem import cert_from_pem, generate_key
from meshnode.ca.records import KIND, CAConfigRecord, RootRecord, read_view
from meshnode.ca.rpc import (
    STREAM_CA,
    ConfigureRequest,
    Refusal,
    RootKey,
    RootKeyRequest,
    Signed,
    SignRequest,
    call,
)
from meshnode.ca.service import CAService, CASettings, ConfigChange
from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import parse_service
from meshnode.gossip.driver import DriverCounters
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.messages import Addr
from meshnode.gossip.wire import Wire
from meshnode.store.state import LocalState, NodeInfo, StaticNodes
from tests.meshnode.test_catalog_catalog import FakeRunner

KEY = bytes(range(32))


class WallClock:
    def __init__(self) -> None:
        self.now_s = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now_s


class Mesh:
    """Several agents' CA services over one state, with RPC over memory streams."""

    def __init__(
        self,
        tmp_path: Path,
        nursery: trio.Nursery,
        names: list[str],
        eligible: set[str],
        *,
        state: LocalState | None = None,
        settings: CASettings | None = None,
    ) -> None:
        settings = settings or CASettings()
        self.nursery = nursery
        self.state = state or LocalState("shared")
        self.clock = WallClock()
        self.wire = Wire(Keyring([KEY]))
        infos = [
            NodeInfo(
                n,
                f"10.0.0.{i}",
                "alive",
                node_id=f"id-{n}",
                meta={"signer": True} if n in eligible else {},
            )
            for i, n in enumerate(names, start=1)
        ]
        self.nodes = StaticNodes(infos, self.state.tracker)
        self.catalogs: dict[str, Catalog] = {}
        self.ca: dict[str, CAService] = {}
        self.counters: dict[str, DriverCounters] = {}
        for n in names:
            self.catalogs[n] = Catalog(
                self.state, self.nodes, node_name=n, datacenter="dc1", runner=FakeRunner
            )
            self.counters[n] = DriverCounters()
            self.ca[n] = CAService(
                self.state,
                self.nodes,
                self.catalogs[n],
                node_name=n,
                node_id=f"id-{n}",
                datacenter="dc1",
                wire=self.wire,
                counters=self.counters[n],
                keystore=KeyStore(tmp_path / n / "ca", f"id-{n}"),
                member_addr=self.addr,
                local_host=lambda n=n: self.host(n),  # type: ignore[misc]
                settings=replace(settings, eligible=n in eligible),
                rng=random.Random(n),
                wall_clock=self.clock,
                connect=self.connect,
            )

    def active_root(self, name: str) -> RootRecord:
        """The active root in `name`'s view (the test fails where it has none)."""
        active = self.ca[name].view.active
        assert active is not None
        return active

    def config(self, name: str) -> CAConfigRecord:
        """The CA config in `name`'s view (the test fails where it has none)."""
        config = self.ca[name].view.config
        assert config is not None
        return config

    def host(self, name: str) -> str:
        node = self.nodes.node(name)
        assert node is not None
        return node.address

    def addr(self, name: str) -> Addr | None:
        node = self.nodes.node(name)
        return None if node is None else Addr(node.address, 7946)

    async def connect(self, addr: Addr, local_host: str | None) -> trio.abc.Stream:
        server = next(n for n in self.ca if self.host(n) == addr.host)
        node = self.nodes.node(server)
        if node is None or node.state != "alive":
            raise OSError("connection refused")
        client_end, server_end = trio.testing.memory_stream_pair()

        async def serve() -> None:
            first = await server_end.receive_some(65536)
            assert first[0] == STREAM_CA
            await self.ca[server].serve(server_end, Addr(local_host or "?", 40000), bytes(first))
            await server_end.aclose()

        self.nursery.start_soon(serve)
        return client_end

    async def start(self, first: str = "n1") -> None:
        """Bootstrap on `first`, then approve the other eligible nodes there (as an operator)."""
        self.ca[first].bootstrap()
        await self.reconcile()  # the others ask to be signers
        for name, ca in self.ca.items():
            if ca.settings.eligible and name != first:
                self.ca[first].approve(name)
        await self.reconcile()  # they fetch the root key; the elected make intermediates

    async def reconcile(self, *names: str) -> None:
        for n in names or list(self.ca):
            await self.ca[n].reconcile()

    def register(self, node: str, name: str) -> None:
        self.catalogs[node].register(parse_service({"Name": name, "Port": 80}))

    def fail(self, name: str) -> None:
        node = self.nodes.node(name)
        assert node is not None
        self.nodes.set(NodeInfo(name, node.address, "failed", node_id=node.node_id, meta=node.meta))


def bootstrapped(
    tmp_path: Path, nursery: trio.Nursery, names: list[str], eligible: set[str]
) -> Mesh:
    """A mesh with no bootstrap wait whose n1 has just bootstrapped the CA (nothing reconciled)."""
    mesh = Mesh(tmp_path, nursery, names, eligible, settings=CASettings(bootstrap_wait_s=0))
    mesh.ca["n1"].bootstrap()
    return mesh


async def two_signers_and_n3(tmp_path: Path, nursery: trio.Nursery) -> Mesh:
    """n1 and n2 approved signers, n3 not eligible, 1 h leaves (rotation tests)."""
    mesh = Mesh(
        tmp_path,
        nursery,
        ["n1", "n2", "n3"],
        {"n1", "n2"},
        settings=CASettings(bootstrap_wait_s=0, leaf_ttl_s=3600),
    )
    await mesh.start()
    return mesh


def csr_for(mesh: Mesh, service: str) -> str:
    return make_csr(generate_key(), mesh.ca["n1"].spiffe_id(service))


def no_private_keys(state: LocalState) -> None:
    for entry in state.store.items(KIND):
        assert b"PRIVATE KEY" not in entry.value, entry.key


async def test_an_eligible_node_bootstraps_the_ca_and_keeps_its_key_out_of_the_store(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(tmp_path, nursery, ["n1", "n2"], {"n1"}, settings=CASettings(bootstrap_wait_s=0))
    await mesh.reconcile("n2")
    assert mesh.ca["n2"].view.config is None  # not eligible: never bootstraps
    await mesh.reconcile("n1")
    view = mesh.ca["n2"].view
    assert view.config is not None and view.active is not None
    assert view.config.trust_domain == f"{view.config.cluster_id}.mesh"
    assert mesh.ca["n1"].keystore.load(view.active.id) is not None
    assert (tmp_path / "n1" / "ca" / "kek.secret").stat().st_mode & 0o777 == 0o600
    no_private_keys(mesh.state)


def sync(state_a: LocalState, state_b: LocalState, order: str) -> None:
    """Exchange every entry, as anti-entropy would, in the order given."""
    entries_a = list(state_a.store.entries())
    entries_b = list(state_b.store.entries())
    if order == "ab":
        state_a.merge(entries_b)
        state_b.merge(entries_a)
    else:
        state_b.merge(entries_a)
        state_a.merge(entries_b)


async def test_two_concurrent_bootstraps_converge_on_one_root_in_either_merge_order(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    for order in ("ab", "ba"):
        state_a, state_b = LocalState("a"), LocalState("b")
        mesh_a = Mesh(tmp_path / order / "a", nursery, ["a", "b"], {"a", "b"}, state=state_a)
        mesh_b = Mesh(tmp_path / order / "b", nursery, ["a", "b"], {"a", "b"}, state=state_b)
        mesh_a.ca["a"].bootstrap()
        mesh_b.ca["b"].bootstrap()

        sync(state_a, state_b, order)
        view_a, _ = read_view(state_a)
        view_b, _ = read_view(state_b)
        assert view_a.config == view_b.config
        assert view_a.active is not None and view_b.active is not None
        assert view_a.active.id == view_b.active.id
        assert len(view_a.roots) == 1 and len(view_a.stray_roots) == 1
        winner = view_a.active.created_by
        loser = "b" if winner == "a" else "a"
        loser_mesh = mesh_a if loser == "a" else mesh_b
        stray_id = view_a.stray_roots[0].id
        # The loser drops its root record and its key, then fetch-less:
        # its peer is only in the other mesh here, so it just cleans up.
        await loser_mesh.ca[loser]._keep_root_keys(loser_mesh.ca[loser].view)
        assert loser_mesh.ca[loser].keystore.load(stray_id) is None
        sync(state_a, state_b, order)
        for state in (state_a, state_b):
            view, _ = read_view(state)
            assert [r.id for r in view.roots] == [view_a.active.id]
            assert view.stray_roots == ()


async def test_signers_are_the_eligible_alive_members_and_follow_failures(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    names = ["n1", "n2", "n3", "n4", "n5"]
    mesh = Mesh(
        tmp_path,
        nursery,
        names,
        {"n1", "n2", "n3", "n4"},
        settings=CASettings(bootstrap_wait_s=0, ca_signers=3),
    )
    await mesh.start()
    signers = mesh.ca["n5"].signers()
    assert len(signers) == 3 and "n5" not in signers
    assert all(mesh.ca[n].signers() == signers for n in names)
    view = mesh.ca["n5"].view
    assert sorted(i.node for i in view.intermediates) == sorted(signers)
    # Every eligible node fetched the root key, so any of them can take over.
    assert all(mesh.ca[n].keystore.load(view.active.id) for n in ("n1", "n2", "n3", "n4"))  # type: ignore[union-attr]

    mesh.fail(signers[0])
    after = mesh.ca["n5"].signers()
    assert signers[0] not in after and len(after) == 3
    newcomer = (set(after) - set(signers)).pop()
    await mesh.reconcile(*after)
    nodes = sorted(i.node for i in mesh.ca["n5"].view.intermediates)
    assert nodes == sorted(after)  # the failed signer's intermediate is retired
    assert mesh.counters[after[0]].values.get("ca.intermediate.retired", 0) >= 1
    assert newcomer in nodes


async def test_a_leaf_is_issued_through_rpc_and_falls_back_when_a_signer_is_down(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    names = ["n1", "n2", "n3", "n4"]
    mesh = Mesh(
        tmp_path, nursery, names, {"n1", "n2", "n3"}, settings=CASettings(bootstrap_wait_s=0)
    )
    await mesh.start()
    mesh.register("n4", "web")
    issued = await mesh.ca["n4"].issue("web", csr_for(mesh, "web"))
    leaf = cert_from_pem(issued.leaf_pem)
    assert issued.root_id == mesh.ca["n4"].view.active.id  # type: ignore[union-attr]
    intermediate = cert_from_pem(issued.chain_pems[0])
    assert leaf.issuer == intermediate.subject

    # The first signer is down but not yet detected as failed: the next one answers.
    down = mesh.ca["n4"].signers()[0]

    async def refuse(addr: Addr, local_host: str | None) -> trio.abc.Stream:
        if addr.host == mesh.host(down):
            raise OSError("connection refused")
        return await mesh.connect(addr, local_host)

    mesh.ca["n4"]._connect = refuse
    issued = await mesh.ca["n4"].issue("web", csr_for(mesh, "web"))
    assert cert_from_pem(issued.leaf_pem)
    assert mesh.counters["n4"].values["ca.rpc.unreachable"] == 1


async def test_refusals_wrong_owner_bad_csr_rate_limit_and_a_forged_address(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    mesh = Mesh(
        tmp_path,
        nursery,
        ["n1", "n2", "n3"],
        {"n1"},
        settings=CASettings(bootstrap_wait_s=0, csr_max_per_second=2),
    )
    await mesh.start()
    mesh.register("n2", "web")
    signer = mesh.ca["n1"]
    n3 = Addr(mesh.host("n3"), 40000)

    reply = await signer.handle(SignRequest("n3", "web", csr_for(mesh, "web")), n3)
    assert isinstance(reply, Refusal) and reply.code == "not_owner"
    assert "n3 does not own service 'web'" in reply.reason and "n2" in reply.reason
    with pytest.raises(LeafError, match="does not own"):
        await mesh.ca["n3"].issue("web", csr_for(mesh, "web"))

    await trio.sleep(1.1)  # refill the bucket
    n2 = Addr(mesh.host("n2"), 40000)
    reply = await signer.handle(SignRequest("n2", "web", csr_for(mesh, "db")), n2)
    assert isinstance(reply, Refusal) and reply.code == "bad_csr"
    assert mesh.counters["n1"].values["ca.csr.bad"] == 1
    reply = await signer.handle(SignRequest("n2", "web", "garbage"), n2)
    assert isinstance(reply, Refusal) and reply.code == "bad_csr"

    reply = await signer.handle(SignRequest("n2", "web", csr_for(mesh, "web")), n2)
    assert isinstance(reply, Refusal) and reply.code == "rate_limited"
    assert reply.reason == "rate limited, retry"

    await trio.sleep(1.1)
    forged = await signer.handle(SignRequest("n2", "web", csr_for(mesh, "web")), n3)
    assert isinstance(forged, Refusal) and forged.code == "forbidden"
    reply = await signer.handle(SignRequest("n2", "web", csr_for(mesh, "web")), n2)
    assert isinstance(reply, Signed)  # and the signer still serves
    assert mesh.counters["n1"].values["ca.refused.not_owner"] >= 1


async def test_garbage_on_the_ca_stream_is_counted_and_the_signer_keeps_serving(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(tmp_path, nursery, ["n1", "n2"], {"n1"}, settings=CASettings(bootstrap_wait_s=0))
    await mesh.start()
    mesh.register("n2", "web")
    signer = mesh.ca["n1"]
    peer = Addr(mesh.host("n2"), 40000)
    plain = Wire(None)
    bad_payloads = [
        b"\x00\x00\x00\x05hello",  # a frame that does not open under the key
        b"\xff\xff\xff\xff",  # a frame longer than the limit
        mesh.wire.frame(b"\xd9\xd9\xf7\xa0"),  # a CBOR tag
        mesh.wire.frame(b"\xa1\x62op\x63zap"),  # an unknown op
        plain.frame(b"\xa0"),  # plain text on a keyed cluster
    ]
    for payload in bad_payloads:
        client, server = trio.testing.memory_stream_pair()
        await client.send_all(payload)
        await client.aclose()
        with trio.fail_after(5):
            await signer.serve(server, peer, bytes([STREAM_CA]))
    assert mesh.counters["n1"].values["ca.rpc.rejected"] == len(bad_payloads)
    reply = await call(
        Addr(mesh.host("n1"), 7946),
        SignRequest("n2", "web", csr_for(mesh, "web")),
        wire=mesh.wire,
        local_host=mesh.host("n2"),
        timeout_s=5,
        connect=mesh.connect,
    )
    assert isinstance(reply, Signed)


async def test_root_keys_go_only_to_approved_signers_sealed_to_their_identity_key(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = bootstrapped(tmp_path, nursery, ["n1", "n2", "n3"], {"n1", "n2"})
    active = mesh.active_root("n1")
    n2 = Addr(mesh.host("n2"), 1)
    n3 = Addr(mesh.host("n3"), 40000)
    reply = await mesh.ca["n1"].handle(RootKeyRequest("n3", active.id), n3)
    assert isinstance(reply, Refusal) and reply.code == "forbidden"
    # n2 asks to sign (-signer) but nobody approved it yet: no key.
    await mesh.reconcile("n2")
    assert mesh.ca["n2"].keystore.load(active.id) is None
    reply = await mesh.ca["n1"].handle(RootKeyRequest("n2", active.id), n2)
    assert isinstance(reply, Refusal) and reply.code == "forbidden"
    assert "approve n2" in reply.reason

    mesh.ca["n1"].approve("n2")
    reply = await mesh.ca["n1"].handle(RootKeyRequest("n2", active.id), n3)
    assert isinstance(reply, Refusal) and reply.code == "forbidden"  # wrong address
    reply = await mesh.ca["n1"].handle(RootKeyRequest("n2", active.id), n2)
    assert isinstance(reply, RootKey)
    assert b"PRIVATE KEY" not in reply.sealed_key  # sealed, not PEM
    await mesh.reconcile("n2")
    assert mesh.ca["n2"].keystore.load(active.id) == mesh.ca["n1"].keystore.load(active.id)
    reply = await mesh.ca["n3"].handle(
        ConfigureRequest("n1", rotate=True), Addr(mesh.host("n1"), 1)
    )
    assert isinstance(reply, Refusal) and reply.code == "forbidden"  # n3 is not a signer


async def test_rotation_cross_signs_reissues_intermediates_and_prunes_the_old_root_later(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await two_signers_and_n3(tmp_path, nursery)
    mesh.register("n3", "web")
    old = mesh.active_root("n3")
    before = await mesh.ca["n3"].issue("web", csr_for(mesh, "web"))

    new_id = await mesh.ca["n3"].configure(ConfigChange(rotate=True))  # forwarded
    view = mesh.ca["n3"].view
    assert view.active is not None and view.active.id == new_id != old.id
    assert view.active.previous_id == old.id
    cross = cert_from_pem(view.active.cross_pem)
    assert cross.issuer == cert_from_pem(old.cert_pem).subject
    assert cross.public_key() == cert_from_pem(view.active.cert_pem).public_key()
    roots = mesh.ca["n3"].roots()
    assert roots is not None and len(roots.pems) == 2  # both trusted

    await mesh.reconcile()
    assert {i.root_id for i in mesh.ca["n3"].view.intermediates} == {new_id}
    after = await mesh.ca["n3"].issue("web", csr_for(mesh, "web"))
    assert after.root_id == new_id and before.root_id == old.id
    assert after.chain_pems[-1] == view.active.cross_pem
    no_private_keys(mesh.state)

    mesh.clock.now_s += 2 * 3600 + 1  # every leaf under the old root has expired
    await mesh.reconcile()  # the first signer prunes the root...
    await mesh.reconcile()  # ...and every eligible node then drops its key
    view = mesh.ca["n3"].view
    assert [r.id for r in view.roots] == [new_id]
    assert old.id not in mesh.ca["n1"].keystore.held()


async def test_configuration_changes_apply_on_an_eligible_node_and_reach_every_view(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = bootstrapped(tmp_path, nursery, ["n1", "n2"], {"n1"})
    await mesh.ca["n2"].configure(ConfigChange(leaf_ttl_s=7200, csr_max_per_second=10))
    config = mesh.config("n2")
    assert config.leaf_ttl_s == 7200
    assert config.csr_max_per_second == 10 and config.updated_by == "n1"
