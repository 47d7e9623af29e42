"""Signer approval: the gossip key alone never makes a signer nor gets a CA private key.

A "rogue" here is an agent with the cluster's gossip key started with
``-signer`` (``"signer": true`` in its meta) that nobody approved. It talks
to the real signers over the real CA RPC (framing, encryption, strict
decoding) and may write anything into the replicated store.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from meshnode.api.ca_endpoints import register_ca_routes
from meshnode.ca import BuiltinProvider, ServiceID
from meshnode.ca.approval import (
    SignerRequest,
    approval_key,
    encode_approval,
    encode_request,
    fingerprint,
    public_der,
    request_key,
    sign_approval,
)
from meshnode.ca.leaf_manager import LeafError, LeafManager
from meshnode.ca.records import KIND, read_view
from meshnode.ca.rpc import Refusal, RootKey, RootKeyRequest, SignRequest
from meshnode.ca.sealing import SealError, open_sealed
from meshnode.ca.service import CAError, CASettings, ConfigChange
from meshnode.config import ConfigError, load_config
from meshnode.gossip.messages import Addr
from meshnode.http import Router
from tests.ca.conftest import NOW, issue_leaf, make_intermediate, openssl_verify
from tests.ca.test_service import Mesh, bootstrapped, csr_for, two_signers_and_n3
from tests.meshnode.test_ca_leaves_api import call

NODES = ["n1", "n2", "rogue"]


async def rogue_mesh(tmp_path: Path, nursery: trio.Nursery, **settings: object) -> Mesh:
    """n1 bootstraps the CA; rogue asks to sign; web runs on n2."""
    mesh = Mesh(
        tmp_path,
        nursery,
        NODES,
        {"n1", "rogue"},
        settings=replace(CASettings(bootstrap_wait_s=0), **settings),  # type: ignore[arg-type]
    )
    mesh.ca["n1"].bootstrap()
    for _ in range(3):
        await mesh.reconcile()
    mesh.register("n2", "web")
    return mesh


async def test_a_rogue_with_the_gossip_key_and_signer_gets_no_key_no_intermediate_no_leaf(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshnode.ca")
    mesh = await rogue_mesh(tmp_path, nursery)
    rogue, n1 = mesh.ca["rogue"], mesh.ca["n1"]
    active = n1.view.active
    assert active is not None

    # Not elected anywhere, no root key fetched, no intermediate published.
    assert all(mesh.ca[n].signers() == ["n1"] for n in NODES)
    assert rogue.keystore.held() == set()
    assert rogue.view.intermediate("rogue") is None
    assert [(r.node, r.status) for r in rogue.signer_table()] == [
        ("n1", "elected"),
        ("rogue", "pending"),
    ]

    # Asking for the root key directly: refused, counted and logged by the signer.
    reply = await rogue._ask("n1", RootKeyRequest("rogue", active.id))
    assert isinstance(reply, Refusal) and reply.code == "forbidden"
    assert mesh.counters["n1"].values["ca.refused.forbidden"] >= 1
    assert any(
        r.getMessage() == "refused a CA request"
        and getattr(r, "meshnode_fields", {}).get("node") == "rogue"
        for r in caplog.records
    )

    # No leaf for a service registered on n2, neither as itself nor as n2.
    with pytest.raises(LeafError, match="does not own service 'web'"):
        await rogue.issue("web", csr_for(mesh, "web"))
    as_n2 = await n1.handle(
        SignRequest("n2", "web", csr_for(mesh, "web")), Addr(mesh.host("rogue"), 40000)
    )
    assert isinstance(as_n2, Refusal) and as_n2.code == "forbidden"

    # It cannot approve itself, nor apply configuration changes itself.
    with pytest.raises(CAError, match="not an approved signer"):
        rogue.approve("rogue")
    reply = rogue._configure_here(replace(ConfigChange(), rotate=True))  # type: ignore[arg-type]
    assert isinstance(reply, Refusal) and reply.code == "forbidden"
    assert b"PRIVATE KEY" not in b"".join(e.value for e in mesh.state.store.items(KIND))


async def test_a_replayed_root_key_reply_opens_only_with_the_approved_identity_key(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await rogue_mesh(tmp_path, nursery)
    active = mesh.active_root("n1")
    # n2 is not eligible; make it ask and approve it, as an operator would.
    mesh.ca["n2"].settings = replace(mesh.ca["n2"].settings, eligible=True)
    await mesh.reconcile("n2")
    mesh.ca["n1"].approve("n2", mesh.ca["n2"].fingerprint())
    # The rogue forges n2's address (or records n2's exchange): the reply is sealed to n2.
    reply = await mesh.ca["n1"].handle(RootKeyRequest("n2", active.id), Addr(mesh.host("n2"), 1))
    assert isinstance(reply, RootKey)
    aad = f"meshnode root key|{active.id}|n2".encode()
    with pytest.raises(SealError):
        open_sealed(mesh.ca["rogue"].keystore.identity_key(), reply.sealed_key, aad)
    opened = open_sealed(mesh.ca["n2"].keystore.identity_key(), reply.sealed_key, aad)
    assert opened.decode() == mesh.ca["n1"].keystore.load(active.id)


async def test_approvals_not_signed_by_a_root_of_the_cluster_are_ignored_and_deleted(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await rogue_mesh(tmp_path, nursery)
    rogue, n1 = mesh.ca["rogue"], mesh.ca["n1"]
    active = n1.view.active
    assert active is not None
    request = SignerRequest(
        "rogue", "id-rogue", public_der(rogue.keystore.identity_key().public_key()), 0.0
    )
    # Signed with a key the rogue made itself, claiming the cluster's active root.
    own_root = BuiltinProvider().generate_root("c1.mesh", now=n1._now())
    forged = sign_approval(own_root.key_pem, active.id, request, approved_by="n1", now_wall_s=1.0)
    mesh.state.put(KIND, approval_key("rogue"), encode_approval(forged))
    view, skipped = read_view(mesh.state)
    assert view.approval("rogue") is None
    assert [k for k, _ in skipped] == [approval_key("rogue")]
    assert view.bad_approvals == (approval_key("rogue"),)
    for _ in range(2):
        await mesh.reconcile()
    assert all(mesh.ca[n].signers() == ["n1"] for n in NODES)
    assert rogue.keystore.held() == set()
    # The best signer deleted the forgery.
    assert approval_key("rogue") not in {e.key for e in mesh.state.store.items(KIND)}


async def test_the_signer_token_approves_only_requests_that_prove_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(
        tmp_path,
        nursery,
        ["n1", "n2", "rogue"],
        {"n1", "n2", "rogue"},
        settings=CASettings(bootstrap_wait_s=0, signer_token="s3cret"),
    )
    rogue = mesh.ca["rogue"]
    rogue.settings = replace(rogue.settings, signer_token="guess")
    mesh.ca["n1"].bootstrap()
    for _ in range(3):
        await mesh.reconcile()
    active = mesh.active_root("n1")
    assert sorted(mesh.ca["rogue"].signers()) == ["n1", "n2"]
    assert mesh.ca["n2"].keystore.load(active.id) == mesh.ca["n1"].keystore.load(active.id)
    assert rogue.keystore.held() == set()
    statuses = {r.node: r.status for r in rogue.signer_table()}
    assert statuses == {"n1": "elected", "n2": "elected", "rogue": "pending"}
    assert "s3cret" not in repr(mesh.ca["n1"].settings)


async def test_operator_approval_checks_the_fingerprint_and_revoke_removes_a_signer(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = Mesh(
        tmp_path, nursery, ["n1", "n2"], {"n1", "n2"}, settings=CASettings(bootstrap_wait_s=0)
    )
    with pytest.raises(CAError, match="not an approved signer"):
        mesh.ca["n1"].approve("n2")  # no CA yet
    mesh.ca["n1"].bootstrap()
    with pytest.raises(CAError, match="no signer request from 'n2'"):
        mesh.ca["n1"].approve("n2")
    await mesh.reconcile()
    n2_print = mesh.ca["n2"].fingerprint()
    with pytest.raises(CAError, match="not approved"):
        mesh.ca["n1"].approve("n2", "00:11")
    approval = mesh.ca["n1"].approve("n2", n2_print.upper())
    assert approval.approved_by == "n1" and fingerprint(approval.public_key_der) == n2_print
    await mesh.reconcile()
    assert sorted(mesh.ca["n2"].signers()) == ["n1", "n2"]
    assert mesh.ca["n2"].view.request("n2") is None  # withdrawn once approved

    mesh.ca["n1"].revoke("n2")
    assert mesh.ca["n1"].signers() == ["n1"]
    active = mesh.active_root("n1")
    reply = await mesh.ca["n1"].handle(RootKeyRequest("n2", active.id), Addr(mesh.host("n2"), 1))
    assert isinstance(reply, Refusal) and reply.code == "forbidden"
    with pytest.raises(CAError, match="is not an approved signer"):
        mesh.ca["n1"].revoke("n2")


async def test_approvals_are_re_signed_after_a_rotation_and_outlive_the_old_root(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await two_signers_and_n3(tmp_path, nursery)
    new_id = await mesh.ca["n3"].configure(ConfigChange(rotate=True))
    await mesh.reconcile()
    assert {a.root_id for a in mesh.ca["n3"].view.approvals} == {new_id}
    mesh.clock.now_s += 2 * 3600 + 1
    for _ in range(2):
        await mesh.reconcile()
    view = mesh.ca["n3"].view
    assert [r.id for r in view.roots] == [new_id]
    assert sorted(a.node for a in view.approvals) == ["n1", "n2"]
    assert sorted(mesh.ca["n3"].signers()) == ["n1", "n2"]


def test_no_certificate_a_rogue_can_make_verifies_against_the_trust_bundle(
    tmp_path: Path,
) -> None:
    provider = BuiltinProvider()
    cluster_root = provider.generate_root("c1.mesh", now=NOW)
    own_root = provider.generate_root("c1.mesh", now=NOW)
    own_intermediate = make_intermediate(provider, own_root, node="rogue")
    leaf = issue_leaf(provider, own_intermediate, ServiceID("c1.mesh", "dc1", "web"))
    result = openssl_verify(
        tmp_path,
        leaf.cert_pem,
        trusted=[cluster_root.cert_pem],
        untrusted=[own_intermediate.cert_pem, own_root.cert_pem],
        extra=(),
    )
    assert result.returncode != 0, result.stdout


async def test_the_signer_endpoints_approve_only_on_a_signer_and_list_every_status(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = bootstrapped(tmp_path, nursery, ["n1", "n2", "n3"], {"n1", "n2"})
    await mesh.reconcile()
    routers = {}
    for name in ("n1", "n3"):
        routers[name] = Router()
        leaves = LeafManager(
            issue=mesh.ca[name].issue,
            spiffe_id=mesh.ca[name].spiffe_id,
            roots=mesh.ca[name].roots,
            is_local=lambda s: False,
            rng=random.Random(0),
            wall_clock=mesh.clock,
        )
        register_ca_routes(routers[name], mesh.ca[name], leaves, lambda: [], wall_clock=mesh.clock)

    status, rows = await call(routers["n3"], "GET", "/v1/connect/ca/signers?all")
    assert status == 200 and isinstance(rows, list)
    assert [(r["Node"], r["Status"], r["Alive"]) for r in rows] == [
        ("n1", "elected", True),
        ("n2", "pending", True),
    ]
    n2_print = mesh.ca["n2"].fingerprint()
    assert rows[1]["Fingerprint"] == n2_print and rows[0]["ApprovedBy"] == "n1"

    status, body = await call(routers["n3"], "PUT", "/v1/connect/ca/signers/n2")
    assert status == 400 and "run this against a signer" in str(body)
    status, body = await call(routers["n1"], "PUT", "/v1/connect/ca/signers/n2?fingerprint=ab:cd")
    assert status == 400 and "not approved" in str(body)
    status, body = await call(
        routers["n1"], "PUT", f"/v1/connect/ca/signers/n2?fingerprint={n2_print}"
    )
    assert status == 200 and body == {"Node": "n2", "Fingerprint": n2_print, "ApprovedBy": "n1"}
    await mesh.reconcile()
    status, names = await call(routers["n3"], "GET", "/v1/connect/ca/signers")
    assert status == 200 and isinstance(names, list) and sorted(names) == ["n1", "n2"]

    status, _ = await call(routers["n1"], "DELETE", "/v1/connect/ca/signers/n2")
    assert status == 200
    status, body = await call(routers["n1"], "DELETE", "/v1/connect/ca/signers/n2")
    assert status == 400 and "not an approved signer" in str(body)


def test_the_signer_token_comes_from_the_flag_or_the_config_file(
    tmp_path: Path,
) -> None:
    def no_keyring(path: Path) -> bool:
        return False

    flags = {"dev": True, "signer_token": "from-flag"}
    config = load_config(flags, has_stored_keyring=no_keyring)
    assert config.ca_signer_token == "from-flag"
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"connect": {"ca_signer": True, "signer_token": "from-file"}}))
    config = load_config({"dev": True}, [path], has_stored_keyring=no_keyring)
    assert config.ca_signer_token == "from-file" and config.ca_signer
    path.write_text(json.dumps({"connect": {"signer_token": " padded "}}))
    with pytest.raises(ConfigError, match=r"connect\.signer_token"):
        load_config({"dev": True}, [path], has_stored_keyring=no_keyring)


async def test_a_forged_request_for_an_approved_signer_needs_its_fingerprint_to_replace_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await rogue_mesh(tmp_path, nursery)
    n1, rogue = mesh.ca["n1"], mesh.ca["rogue"]
    rogue_der = public_der(rogue.keystore.identity_key().public_key())
    forged = SignerRequest("n1", "id-n1", rogue_der, 0.0)
    mesh.state.put(KIND, request_key("n1"), encode_request(forged))
    with pytest.raises(CAError, match=r"is approved with key .* pass --fingerprint"):
        n1.approve("n1")
    approval = n1.view.approval("n1")
    assert approval is not None and approval.public_key_der != rogue_der
    await mesh.reconcile("n1")  # the real n1 withdraws the request made in its name
    assert n1.view.request("n1") is None
