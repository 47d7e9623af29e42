"""Issue 15, finding 2 (residual): the gossip key must not be enough to install a root.

The store is writable by every holder of the gossip key. Here an attacker
writes what such a holder can: its own ``config`` (a new cluster id and
trust domain) and its own ``root/<id>`` ranked above the real one, or a root
that claims to be a rotation of the real one. Agents must keep trusting the
cluster's root alone, so nothing the attacker signs verifies against their
trust bundle, while `meshnode ca rotate` keeps working.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import trio

from meshnode.ca import BuiltinProvider, RootCA, generate_key, make_csr
from meshnode.ca.leaf_manager import Roots
from meshnode.ca.records import (
    CONFIG_KEY,
    KIND,
    CAConfigRecord,
    RootRecord,
    encode_config,
    encode_root,
    root_key,
)
from meshnode.ca.service import CASettings
from meshnode.ca.spiffe import ServiceID, trust_domain_for
from tests.ca.conftest import issue_leaf, make_intermediate, openssl_verify
from tests.ca.test_service import Mesh

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


async def test_config_settings_written_without_the_root_key_are_ignored(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    config = mesh.ca["n2"].view.config
    assert config is not None
    # Same cluster, but a ten-year leaf and every member may sign.
    tampered = replace(config, leaf_ttl_s=10 * 365 * 24 * 3600, ca_signers=64, updated_by="rogue")
    mesh.state.put(KIND, CONFIG_KEY, encode_config(tampered))
    await mesh.reconcile()
    seen = mesh.ca["n2"].view.config
    assert seen is not None
    assert (seen.leaf_ttl_s, seen.ca_signers) == (config.leaf_ttl_s, config.ca_signers)


def csr_for_td(trust_domain: str) -> str:
    return make_csr(generate_key(), ServiceID(trust_domain, "dc1", "web").uri)
