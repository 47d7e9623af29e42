"""The leaf manager's renewal and re-issue timing, and the CA endpoints' shapes and refusals."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode.api.ca_endpoints import register_ca_routes
from meshnode.ca.leaf_manager import Issued, LeafError, LeafManager, UnknownLocalService
from meshnode.ca.service import CASettings, ConfigChange, owned_service_names
from meshnode.http import Request, Router
from meshnode.intentions.replica import InvalidCertURI
from tests.ca.test_service import Mesh


async def make(tmp_path: Path, nursery: trio.Nursery) -> tuple[Mesh, LeafManager]:
    mesh = Mesh(
        tmp_path,
        nursery,
        ["n1", "n2"],
        {"n1"},
        settings=CASettings(bootstrap_wait_s=0, leaf_ttl_s=1000),
    )
    mesh.ca["n1"].bootstrap()
    await mesh.reconcile()
    mesh.register("n2", "web")
    return mesh, await n2_leaves(mesh, nursery)


async def n2_leaves(mesh: Mesh, nursery: trio.Nursery) -> LeafManager:
    """n2's leaf manager over its CA service, following the bundle, running."""
    ca = mesh.ca["n2"]
    leaves = LeafManager(
        issue=ca.issue,
        spiffe_id=ca.spiffe_id,
        roots=ca.roots,
        is_local=lambda s: s in owned_service_names(mesh.catalogs["n2"].local_services()),
        rng=random.Random(1),
        wall_clock=mesh.clock,
        reissue_jitter_s=30.0,
    )
    ca.on_view_change(leaves.roots_changed)
    await nursery.start(leaves.run)
    return leaves


async def test_leaves_renew_between_60_and_90_percent_and_reissue_after_a_rotation(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    mesh, leaves = await make(tmp_path, nursery)
    first = await leaves.get("web")
    assert first is await leaves.get("web")  # cached
    assert first.spiffe_id.endswith("/ns/default/dc/dc1/svc/web")
    with pytest.raises(UnknownLocalService):
        await leaves.get("db")

    start = trio.current_time()
    generation = await leaves.wait_changed("web", first.generation, 2000.0)
    renewed_after_s = trio.current_time() - start
    assert generation > first.generation
    # Life is 1000 s + the 60 s backdating of NotBefore: 60-90 % of 1060 s, from NotBefore.
    life_s = first.valid_before_s - first.valid_after_s
    elapsed_at_issue_s = mesh.clock.now_s - first.valid_after_s
    assert 0.6 * life_s - elapsed_at_issue_s - 1 <= renewed_after_s <= 0.9 * life_s

    roots_generation = leaves.roots().generation  # type: ignore[union-attr]
    current = leaves.cached("web")
    assert current is not None
    await mesh.ca["n2"].configure(ConfigChange(rotate=True))
    await mesh.reconcile()
    assert leaves.roots().generation > roots_generation  # type: ignore[union-attr]
    start = trio.current_time()
    await leaves.wait_changed("web", current.generation, 100.0)
    assert trio.current_time() - start <= 30.0  # within the jitter window
    reissued = leaves.cached("web")
    assert reissued is not None and reissued.root_id == mesh.ca["n2"].view.active.id  # type: ignore[union-attr]
    assert reissued.create_generation == first.create_generation


async def test_authorize_parser_accepts_only_our_trust_domain(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh, _ = await make(tmp_path, nursery)
    ca = mesh.ca["n2"]
    ours = ca.spiffe_id("web")
    assert ca.service_from_uri(ours) == "web"
    for uri, reason in [
        (ours.replace(".mesh/", ".other/"), "not this cluster's"),
        ("spiffe://x.mesh/agent/client/dc/dc1/id/n1", "not a service ID"),
        ("https://example.com/", "not a spiffe"),
    ]:
        with pytest.raises(InvalidCertURI, match=reason):
            ca.service_from_uri(uri)


async def call(router: Router, method: str, target: str, body: object = None) -> tuple[int, object]:
    raw = b"" if body is None else json.dumps(body).encode()
    response = await router.dispatch(Request.from_target(method, target, [], raw))
    return response.status, json.loads(response.body) if response.body.strip() else None


async def test_ca_endpoints_answer_consul_shapes_and_refuse_bad_input(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh, leaves = await make(tmp_path, nursery)
    router = Router()
    register_ca_routes(
        router, mesh.ca["n2"], leaves, mesh.catalogs["n2"].local_services, wall_clock=mesh.clock
    )
    status, roots = await call(router, "GET", "/v1/agent/connect/ca/roots")
    assert status == 200 and isinstance(roots, dict)
    assert set(roots) == {"ActiveRootID", "TrustDomain", "Roots"}
    root = roots["Roots"][0]
    assert root["Active"] and root["ID"] == roots["ActiveRootID"]
    assert {"SerialNumber", "SigningKeyID", "NotBefore", "NotAfter", "RootCert"} <= set(root)
    assert root["IntermediateCerts"] and root["PrivateKeyType"] == "ec"

    status, leaf = await call(router, "GET", "/v1/agent/connect/ca/leaf/web")
    assert status == 200 and isinstance(leaf, dict)
    assert leaf["Service"] == "web" and leaf["ServiceURI"].endswith("/svc/web")
    assert (
        leaf["CertPEM"].count("BEGIN CERTIFICATE") == 2 and "PRIVATE KEY" in leaf["PrivateKeyPEM"]
    )
    status, err = await call(router, "GET", "/v1/agent/connect/ca/leaf/db")
    assert status == 404 and "not registered on this agent" in str(err)

    status, config = await call(router, "GET", "/v1/connect/ca/configuration")
    assert status == 200 and isinstance(config, dict)
    assert config["Provider"] == "meshnode" and config["Config"]["LeafCertTTL"] == "0h16m40s"
    for body, reason in [
        ({"Provider": "vault", "Config": {}}, "not supported"),
        ({"Config": {"PrivateKey": "x"}}, "not supported"),
        ({"Config": {"LeafCertTTL": "soon"}}, "LeafCertTTL"),
        ({"Config": {"CSRMaxPerSecond": -1}}, "CSRMaxPerSecond"),
        ({"Config": {"RotateRoot": "yes"}}, "RotateRoot"),
        ({"Config": {"Bogus": 1}}, "unknown field"),
    ]:
        status, err = await call(router, "PUT", "/v1/connect/ca/configuration", body)
        assert status == 400 and reason in str(err), (body, err)
    body = {"Provider": "meshnode", "Config": {"LeafCertTTL": "2h"}}
    status, _ = await call(router, "PUT", "/v1/connect/ca/configuration", body)
    assert status == 200
    assert mesh.ca["n2"].view.config.leaf_ttl_s == 7200  # type: ignore[union-attr]
    status, names = await call(router, "GET", "/v1/connect/ca/signers")
    assert status == 200 and names == ["n1"]


async def test_a_first_leaf_waits_for_the_ca_and_comes_at_once_when_it_arrives(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A service registered before the cluster has a CA gets its leaf when the CA appears."""
    mesh = Mesh(tmp_path, nursery, ["n1", "n2"], {"n1"}, settings=CASettings(bootstrap_wait_s=0))
    mesh.register("n2", "web")
    leaves = await n2_leaves(mesh, nursery)
    got: list[float] = []

    async def ask() -> None:
        await leaves.get("web")
        got.append(trio.current_time())

    nursery.start_soon(ask)
    await trio.sleep(1.35)  # the CA is made while the first attempts fail
    assert not got
    mesh.ca["n1"].bootstrap()
    await mesh.reconcile()
    bootstrapped_at = trio.current_time()
    with trio.fail_after(1.0):
        while not got:
            await trio.sleep(0.01)
    assert got[0] - bootstrapped_at < 0.1  # woken by the bundle, not by the back-off


async def test_a_first_leaf_gives_up_after_the_retry_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[float] = []

    async def refuse(service: str, csr_pem: str) -> Issued:
        attempts.append(trio.current_time())
        raise LeafError("n1 refused: node n2 does not own service 'web'")

    leaves = LeafManager(
        issue=refuse,
        spiffe_id=lambda s: f"spiffe://t.consul/ns/default/dc/dc1/svc/{s}",
        roots=lambda: None,
        is_local=lambda s: True,
        rng=random.Random(1),
        first_leaf_retry_s=5.0,
    )
    start = trio.current_time()
    with pytest.raises(LeafError, match="does not own"):
        await leaves.get("web")
    assert 5.0 <= trio.current_time() - start < 6.1
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0], abs=0.01)  # doubling to 1 s
    assert len(attempts) <= 10
