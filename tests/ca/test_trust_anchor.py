"""Issue 15, finding 2 (residual): the gossip key must not be enough to install a root.

The store is writable by every holder of the gossip key. Here an attacker
writes what such a holder can: its own ``config`` (a new cluster id and
trust domain) and its own ``root/<id>`` ranked above the real one, or a root
that claims to be a rotation of the real one. Agents must keep trusting the
cluster's root alone, so nothing the attacker signs verifies against their
trust bundle, while `meshnode ca rotate` keeps working.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from meshnode.agent.ca_wiring import ANCHOR_FILE, load_pin, pin_saver
from meshnode.agent.errors import AgentStartError
from meshnode.ca import BuiltinProvider, RootCA, generate_key, make_csr
from meshnode.ca.anchor import (
    PIN_MAX_BYTES,
    Anchor,
    AnchorFileError,
    encode_pin,
    normalize_fingerprint,
)
from meshnode.ca.leaf_manager import Roots
from meshnode.ca.records import (
    CONFIG_KEY,
    DEFAULT_LEAF_TTL_S,
    KIND,
    CAConfigRecord,
    RootRecord,
    decode_config,
    encode_config,
    encode_root,
    read_view,
    root_key,
    sign_config,
)
from meshnode.ca.service import CASettings, ConfigChange
from meshnode.ca.spiffe import ServiceID, trust_domain_for
from meshnode.config import ConfigError, load_config
from meshnode.store.state import LocalState
from tests.ca.conftest import NOW, issue_leaf, make_intermediate, openssl_verify
from tests.ca.test_service import Mesh, sync

# Past any trust-on-first-use window the agents open at bootstrap.
_PAST_FIRST_USE_S = 3600.0


async def settled_mesh(tmp_path: Path, nursery: trio.Nursery) -> Mesh:
    """n1 bootstraps and signs, n2 runs web; both have followed the CA for an hour."""
    mesh = Mesh(tmp_path, nursery, ["n1", "n2"], {"n1"}, settings=CASettings(bootstrap_wait_s=0))
    await mesh.start()
    mesh.clock.now_s += _PAST_FIRST_USE_S
    await mesh.reconcile()
    mesh.register("n2", "web")
    return mesh


def rogue_root(mesh: Mesh, trust_domain: str) -> RootCA:
    return BuiltinProvider().generate_root(trust_domain, now=mesh.ca["n1"]._now())


def forged_leaf_rejected(
    tmp_path: Path, mesh: Mesh, root: RootCA, trust_domain: str, roots: Roots
) -> bool:
    """Whether a leaf for web under the rogue's root fails `openssl verify` against `roots`."""
    inter = make_intermediate(BuiltinProvider(), root, node="rogue")
    leaf = issue_leaf(BuiltinProvider(), inter, ServiceID(trust_domain, "dc1", "web"))
    result = openssl_verify(
        tmp_path,
        leaf.cert_pem,
        trusted=roots.pems,
        untrusted=[inter.cert_pem],
        extra=(),
        at=mesh.ca["n1"]._now(),
    )
    return result.returncode != 0


async def test_a_gossip_key_holder_cannot_replace_the_config_and_root(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    before = mesh.ca["n2"].roots()
    assert before is not None
    # The attacker's own cluster: a fresh id and trust domain, its own root ranked first.
    cluster_id = str(uuid.uuid4())
    trust_domain = trust_domain_for(cluster_id)
    root = rogue_root(mesh, trust_domain)
    config = CAConfigRecord(cluster_id, trust_domain, updated_by="rogue")
    mesh.state.put(KIND, CONFIG_KEY, encode_config(config))
    record = RootRecord(root.id, cluster_id, root.cert_pem, 99, mesh.clock.now_s, "rogue")
    mesh.state.put(KIND, root_key(root.id), encode_root(record))
    await mesh.reconcile()

    for name in ("n1", "n2"):
        after = mesh.ca[name].roots()
        assert after is not None
        assert (after.active_id, after.trust_domain, after.pems) == (
            before.active_id,
            before.trust_domain,
            before.pems,
        ), name
        assert mesh.ca[name].spiffe_id("web") == ServiceID(before.trust_domain, "dc1", "web").uri
    # What the attacker would sign with: its leaf does not verify against n2's bundle.
    bundle = mesh.ca["n2"].roots()
    assert bundle is not None
    assert forged_leaf_rejected(tmp_path, mesh, root, trust_domain, bundle)
    # n1 still signs web for n2 under the real root.
    issued = await mesh.ca["n2"].issue("web", csr_for_td(before.trust_domain))
    assert issued.root_id == before.active_id


async def test_a_root_claiming_to_rotate_from_the_real_one_is_not_trusted(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    before = mesh.ca["n2"].roots()
    view = mesh.ca["n2"].view
    assert before is not None and view.config is not None and view.active is not None
    active = view.active
    root = rogue_root(mesh, view.config.trust_domain)
    # The attacker cannot cross-sign with the real root's key, so it signs with its own.
    cross = BuiltinProvider().cross_sign(root, root.cert_pem, now=mesh.ca["n1"]._now())
    record = RootRecord(
        root.id,
        view.config.cluster_id,
        root.cert_pem,
        active.generation + 1,
        mesh.clock.now_s,
        "n1",
        cross_pem=cross,
        previous_id=active.id,
    )
    mesh.state.put(KIND, root_key(root.id), encode_root(record))
    await mesh.reconcile()
    after = mesh.ca["n2"].roots()
    assert after is not None and after.active_id == before.active_id
    assert root.cert_pem not in after.pems
    assert forged_leaf_rejected(tmp_path, mesh, root, after.trust_domain, after)


async def test_config_settings_written_without_the_root_key_are_ignored_and_written_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    config = mesh.config("n2")
    # Same cluster, but a ten-year leaf and every member may sign.
    tampered = replace(config, leaf_ttl_s=10 * 365 * 24 * 3600, ca_signers=64, updated_by="rogue")
    mesh.state.put(KIND, CONFIG_KEY, encode_config(tampered))
    await mesh.reconcile("n2")
    seen = mesh.config("n2")
    assert (seen.leaf_ttl_s, seen.ca_signers) == (config.leaf_ttl_s, config.ca_signers)
    assert mesh.counters["n2"].values["ca.malformed_records"] >= 1
    await mesh.reconcile("n1")  # n1 (the best signer) writes the trusted one back
    stored = decode_config(mesh.state.store.get(KIND, CONFIG_KEY).value)  # type: ignore[union-attr]
    assert stored.ca_signers == config.ca_signers and stored.signature
    assert mesh.counters["n1"].values["ca.config.resigned"] == 1


def csr_for_td(trust_domain: str) -> str:
    return make_csr(generate_key(), ServiceID(trust_domain, "dc1", "web").uri)


async def test_rotation_is_trusted_the_pin_advances_and_a_pruned_root_stays_out(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    pin_path = tmp_path / "n2" / "ca" / ANCHOR_FILE
    mesh.ca["n2"]._save_pin = pin_saver(pin_path)
    old = mesh.active_root("n2")
    assert mesh.ca["n2"].anchors() == (Anchor(old.id, old.cert_pem),)

    new_id = await mesh.ca["n2"].configure(ConfigChange(rotate=True))  # forwarded to n1
    roots = mesh.ca["n2"].roots()
    assert roots is not None and roots.active_id == new_id and len(roots.pems) == 2
    assert mesh.config("n2").root_id == new_id  # re-signed by the new root
    assert not pin_path.exists()  # the old root is still in the store: still the pin

    mesh.clock.now_s += 2 * DEFAULT_LEAF_TTL_S + 1  # the old root's leaves have expired
    await mesh.reconcile()  # n1 prunes it; every agent pins the new root
    roots = mesh.ca["n2"].roots()
    assert roots is not None and [roots.active_id] == [new_id] and len(roots.pems) == 1
    assert load_pin(pin_path) == mesh.ca["n2"].anchors()[0]
    assert mesh.ca["n2"].anchors()[0].root_id == new_id
    assert pin_path.stat().st_mode & 0o777 == 0o600

    # A gossip-key holder that kept the old record puts it back: it stays out.
    mesh.state.put(KIND, root_key(old.id), encode_root(old))
    await mesh.ca["n2"].reconcile()
    roots = mesh.ca["n2"].roots()
    assert roots is not None and old.cert_pem not in roots.pems


async def test_first_use_follows_the_store_for_a_window_then_pins(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(tmp_path, nursery, ["n1", "n2"], {"n1"}, settings=CASettings(bootstrap_wait_s=0))
    pin_path = tmp_path / "n2" / "ca" / ANCHOR_FILE
    mesh.ca["n2"]._save_pin = pin_saver(pin_path)
    await mesh.start()
    active = mesh.active_root("n2")
    assert mesh.ca["n2"].anchors() == () and not pin_path.exists()  # provisional
    mesh.clock.now_s += CASettings().first_use_window_s
    await mesh.reconcile()
    assert load_pin(pin_path) == Anchor(active.id, active.cert_pem)


async def test_a_new_agent_with_the_operators_fingerprint_ignores_a_replaced_store(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(
        tmp_path, nursery, ["n1", "n2", "n3"], {"n1"}, settings=CASettings(bootstrap_wait_s=0)
    )
    await mesh.start()
    real = mesh.active_root("n1")
    # The attacker replaces the config and adds its root before n2 and n3 pin anything.
    cluster_id = str(uuid.uuid4())
    root = rogue_root(mesh, trust_domain_for(cluster_id))
    record = RootRecord(root.id, cluster_id, root.cert_pem, 99, mesh.clock.now_s, "rogue")
    mesh.state.put(KIND, root_key(root.id), encode_root(record))
    config = CAConfigRecord(cluster_id, trust_domain_for(cluster_id))
    mesh.state.put(KIND, CONFIG_KEY, encode_config(sign_config(config, root.id, root.key_pem)))
    mesh.ca["n3"]._operator_root_id = real.id
    mesh.ca["n3"]._refresh()
    mesh.ca["n2"]._refresh()
    n3_roots, n2_roots = mesh.ca["n3"].roots(), mesh.ca["n2"].roots()
    assert n3_roots is not None and n3_roots.pems == (real.cert_pem,)
    # Without a fingerprint, first use trusts the store (docs/security.md, residual risks).
    assert n2_roots is not None and n2_roots.pems == (root.cert_pem,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AB" * 32, ":".join(["ab"] * 32)),
        (":".join(["Ab"] * 32), ":".join(["ab"] * 32)),
        ("sha256 Fingerprint=" + ":".join(["0F"] * 32), ":".join(["0f"] * 32)),
        ("ab" * 31, None),
        ("zz" * 32, None),
        ("", None),
    ],
)
def test_a_root_fingerprint_is_sha256_in_any_common_spelling(
    text: str, expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(AnchorFileError, match="not a SHA-256 root fingerprint"):
            normalize_fingerprint(text)
    else:
        assert normalize_fingerprint(text) == expected


def test_a_damaged_pin_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    root = BuiltinProvider().generate_root("c1.mesh", now=NOW)
    other = BuiltinProvider().generate_root("c1.mesh", now=NOW)
    path = tmp_path / ANCHOR_FILE
    assert load_pin(path) is None
    pin_saver(path)(Anchor(root.id, root.cert_pem))
    assert load_pin(path) == Anchor(root.id, root.cert_pem)
    # A certificate that is not the pinned root's, a foreign file, an oversized one.
    for text in (
        encode_pin(Anchor(root.id, other.cert_pem)),
        "hello\n",
        encode_pin(Anchor(root.id, "x" * PIN_MAX_BYTES)),
    ):
        path.write_text(text)
        with pytest.raises(AgentStartError, match=r"CA root pin .* is damaged") as caught:
            load_pin(path)
        assert "\n" not in str(caught.value)


def test_the_root_fingerprint_is_read_from_the_flag_and_the_config_file(tmp_path: Path) -> None:
    fingerprint = ":".join(["ab"] * 32)
    base: dict[str, object] = {"dev": True, "data_dir": str(tmp_path)}
    assert load_config({**base, "ca_root_fingerprint": "AB" * 32}).ca_root_fingerprint == (
        fingerprint
    )
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps({"connect": {"ca_root_fingerprint": fingerprint}}))
    assert load_config(base, [str(config_file)]).ca_root_fingerprint == (fingerprint)
    with pytest.raises(ConfigError, match="--ca-root-fingerprint: 'nope' is not a SHA-256"):
        load_config({**base, "ca_root_fingerprint": "nope"})
    config_file.write_text(json.dumps({"connect": {"ca_root_fingerprint": 7}}))
    with pytest.raises(ConfigError, match=r"connect\.ca_root_fingerprint"):
        load_config(base, [str(config_file)])


async def test_a_deleted_config_is_written_back_and_no_second_ca_is_made(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    config = mesh.config("n2")
    mesh.state.delete_many(KIND, [CONFIG_KEY])
    await mesh.reconcile()
    assert mesh.counters["n1"].values.get("ca.bootstrapped", 0) == 1  # the first one only
    stored = mesh.state.store.get(KIND, CONFIG_KEY)
    assert stored is not None and not stored.tombstone
    assert decode_config(stored.value).cluster_id == config.cluster_id
    roots = mesh.ca["n2"].roots()
    assert roots is not None and roots.trust_domain == config.trust_domain


async def test_a_config_written_before_signed_configs_is_trusted_on_first_use_then_signed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(tmp_path, nursery, ["n1", "n2"], {"n1"}, settings=CASettings(bootstrap_wait_s=0))
    await mesh.start()
    config = mesh.config("n2")
    # What an older agent wrote: no root id, no signature.
    mesh.state.put(KIND, CONFIG_KEY, encode_config(replace(config, root_id="", signature=b"")))
    assert mesh.ca["n2"].view.config == replace(config, root_id="", signature=b"")
    await mesh.reconcile()
    stored = decode_config(mesh.state.store.get(KIND, CONFIG_KEY).value)  # type: ignore[union-attr]
    assert stored.root_id == mesh.active_root("n2").id and stored.signature


async def test_lone_bootstraps_joined_later_converge_and_the_losers_drop_their_keys(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Agents started alone and joined minutes later (the README's tour) end on one CA.

    A lone agent's first-use window waits for a peer: had b pinned its own root
    while alone, the joined cluster would hold two CAs that refuse each other.
    c holds a root it fetched from a's bootstrap; if b's bootstrap wins, that
    key goes too, instead of c writing the losing record back forever.
    """
    settings = CASettings(bootstrap_wait_s=0)
    state_a, state_b = LocalState("a"), LocalState("b")
    mesh_a = Mesh(tmp_path / "a", nursery, ["a", "c"], {"a", "c"}, state=state_a, settings=settings)
    mesh_b = Mesh(tmp_path / "b", nursery, ["b"], {"b"}, state=state_b, settings=settings)
    await mesh_a.start(first="a")
    mesh_b.ca["b"].bootstrap()
    await mesh_b.reconcile()
    mesh_b.clock.now_s += _PAST_FIRST_USE_S
    await mesh_b.reconcile()
    assert mesh_b.ca["b"].anchors() == ()  # alone for an hour: nothing pinned
    roots_a = {r.id for r in mesh_a.ca["c"].view.roots}
    assert all(mesh_a.ca[n].keystore.load(r) for n in ("a", "c") for r in roots_a)

    # The join: each side learns the other's members and entries.
    for info in mesh_a.nodes.nodes():
        mesh_b.nodes.set(info)
    for info in mesh_b.nodes.nodes():
        mesh_a.nodes.set(info)
    meshes = {"a": mesh_a, "c": mesh_a, "b": mesh_b}
    for _ in range(3):
        sync(state_a, state_b, "ab")
        for name, mesh in meshes.items():
            await mesh.ca[name].reconcile()
    view_a, _ = read_view(state_a)
    view_b, _ = read_view(state_b)
    assert view_a.active is not None and view_b.active is not None
    assert view_a.active.id == view_b.active.id
    winner = view_a.active.id
    bundles = {name: mesh.ca[name].roots() for name, mesh in meshes.items()}
    assert all(b is not None and b.pems == (view_a.active.cert_pem,) for b in bundles.values())
    for name, mesh in meshes.items():
        for root_id in mesh.ca[name].keystore.held():
            assert root_id == winner, f"{name} kept the key of a losing bootstrap"
        assert mesh.counters[name].values.get("ca.root.restored", 0) == 0

    # Now with peers, the window opens, and everyone pins the one root.
    for mesh in (mesh_a, mesh_b):
        mesh.clock.now_s += _PAST_FIRST_USE_S
    for name, mesh in meshes.items():
        await mesh.ca[name].reconcile()
        await mesh.ca[name].reconcile()
        assert [a.root_id for a in mesh.ca[name].anchors()] == [winner]
