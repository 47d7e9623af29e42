"""Revocation and root pruning on a real TLS 1.3 proxy pair on loopback."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from meshnode.api.revocation_endpoints import register_revocation_routes
from meshnode.ca.csr import make_csr, validate_csr
from meshnode.ca.pem import cert_from_pem, key_from_pem, key_to_pem, serial_colon_hex
from meshnode.ca.revocation import revocation_of_cert, spki_sha256
from meshnode.ca.revocation_replica import RevocationReplica
from meshnode.ca.spiffe import ServiceID
from meshnode.connect.agent_sources import AgentHttp, HttpError, HttpRevocations
from meshnode.http import Router
from meshnode.http.server import serve_http
from meshnode.proxy import TlsMaterial
from meshnode.proxy.testing import (
    StaticCertSource,
    StaticRevocations,
    TestCA,
)
from meshnode.store.state import LocalState
from tests.proxy.conftest import HOST, Pair, read_all, round_trip, running_pair

_DEADLINE_S = 15.0


def leaf_of(material: TlsMaterial) -> x509.Certificate:
    return cert_from_pem(material.cert_chain_pem)


def reissued(ca: TestCA, material: TlsMaterial) -> TlsMaterial:
    """A new certificate (new serial) for the same key: what a thief with the key would want."""
    key = key_from_pem(material.key_pem)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sid = ServiceID(ca.trust_domain, ca.datacenter, material.service)
    csr = validate_csr(make_csr(key, sid.uri), expected=sid)
    leaf_pem = ca.provider.sign_leaf(
        ca.intermediate.cert_pem, ca.intermediate.key_pem, csr, now=datetime.now(UTC), ttl_s=3600
    )
    chain_pem = leaf_pem + ca.intermediate.cert_pem
    return replace(material, cert_chain_pem=chain_pem, key_pem=key_to_pem(key))


async def open_live(port: int) -> trio.SocketStream:
    """A connection through the proxies that has echoed once (so it is live end to end)."""
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(b"hello")
    assert await stream.receive_some(5) == b"hello"
    return stream


def revoke(mesh: Pair, material: TlsMaterial) -> None:
    cert = leaf_of(material)
    assert mesh.revocations is not None
    mesh.revocations.add(
        revocation_of_cert(cert, now_wall_s=0.0, reason="key leaked", revoked_by="test")
    )


async def test_revoked_client_leaf_is_cut_live_and_refused_after(ca: TestCA) -> None:
    async with running_pair(ca, revocations=StaticRevocations(), deadline_s=_DEADLINE_S) as mesh:
        db = await mesh.route_db(certs=StaticCertSource(ca.material("db")))
        web_material = ca.material("web")
        _, port = await mesh.add_outbound(StaticCertSource(web_material))
        # The first connection is a full handshake; the live one resumes its session,
        # so the cut also works where OpenSSL kept no verified chain.
        assert await round_trip(port) == b"ping"
        await trio.sleep(0.05)  # the outbound proxy keeps the session when the first ends
        live = await open_live(port)
        assert db.snapshot()["Inbound"]["Resumed"] == 1
        async with live:
            revoke(mesh, web_material)
            with trio.fail_after(3.0):
                assert await read_all(live) == b""  # cut: EOF
        assert await round_trip(port) == b""  # a new handshake is refused
        inbound = db.snapshot()["Inbound"]
        assert inbound["Cut"] == 1
        assert inbound["Denied"] == 1
        assert inbound["Active"] == 0


async def test_a_reissued_leaf_with_a_revoked_key_is_refused(ca: TestCA) -> None:
    async with running_pair(ca, revocations=StaticRevocations(), deadline_s=_DEADLINE_S) as mesh:
        db = await mesh.route_db(certs=StaticCertSource(ca.material("db")))
        web_material = ca.material("web")
        again = reissued(ca, web_material)
        assert leaf_of(again).serial_number != leaf_of(web_material).serial_number
        revoke(mesh, web_material)
        _, port = await mesh.add_outbound(StaticCertSource(again))
        assert await round_trip(port) == b""
        assert db.snapshot()["Inbound"]["Denied"] == 1
        # Another key of the same service is fine.
        _, fresh_port = await mesh.add_outbound(StaticCertSource(ca.material("web")))
        assert await round_trip(fresh_port) == b"ping"


async def test_revoked_server_leaf_is_cut_on_the_outbound_side(ca: TestCA) -> None:
    async with running_pair(ca, revocations=StaticRevocations(), deadline_s=_DEADLINE_S) as mesh:
        db_material = ca.material("db")
        await mesh.route_db(certs=StaticCertSource(db_material))
        web, port = await mesh.add_outbound(StaticCertSource(ca.material("web")))
        live = await open_live(port)
        async with live:
            revoke(mesh, db_material)
            with trio.fail_after(3.0):
                assert await read_all(live) == b""
        assert await round_trip(port) == b""  # the only instance is refused
        upstream = web.snapshot()["Upstreams"][0]
        assert upstream["Cut"] == 1
        assert upstream["Failed"] == 1


async def test_a_root_leaving_the_bundle_cuts_the_connections_chained_to_it(
    ca: TestCA, other_ca: TestCA
) -> None:
    async with running_pair(ca, revocations=StaticRevocations(), deadline_s=_DEADLINE_S) as mesh:
        both = ca.root.cert_pem + other_ca.root.cert_pem
        db_certs = StaticCertSource(other_ca.material("db", roots_pem=both))
        db = await mesh.route_db(certs=db_certs)
        # "web" chains to the old root, "api" to the new one; both are trusted.
        _, web_port = await mesh.add_outbound(StaticCertSource(ca.material("web", roots_pem=both)))
        _, api_port = await mesh.add_outbound(
            StaticCertSource(other_ca.material("api", roots_pem=both)), "api"
        )
        web_live = await open_live(web_port)
        api_live = await open_live(api_port)
        async with web_live, api_live:
            # The old root is pruned from db's bundle (its leaf stays the same).
            db_certs.set(other_ca.material("db", roots_pem=other_ca.root.cert_pem))
            with trio.fail_after(3.0):
                assert await read_all(web_live) == b""
            await api_live.send_all(b"still")
            assert await api_live.receive_some(5) == b"still"
        assert await round_trip(web_port) == b""  # a new handshake fails verification
        assert db.snapshot()["Inbound"]["Cut"] == 1


async def test_the_http_endpoints_and_the_http_follower(ca: TestCA) -> None:
    """PUT needs the token (none configured: refused); `HttpRevocations` sees the change."""
    state = LocalState("n1")
    replica = RevocationReplica(state)
    token: list[str | None] = [None]
    router = Router()
    register_revocation_routes(
        router,
        replica,
        own_leaf_pems=lambda: [],
        leaf_ttl_s=lambda: 3600.0,
        current_token=lambda: token[0],
    )
    web = leaf_of(ca.material("web"))
    with trio.fail_after(_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, router, host=HOST, port=0))
            follower = HttpRevocations(AgentHttp(HOST, port))
            await nursery.start(follower.run)
            assert follower.refusal(web.serial_number, spki_sha256(web)) is None
            body = {"SerialNumber": serial_colon_hex(web), "Reason": "leaked"}
            with pytest.raises(HttpError, match=r"403 .*has none"):
                await AgentHttp(HOST, port, token="t").request("PUT", "/v1/connect/ca/revoke", body)
            token[0] = "t"
            with pytest.raises(HttpError, match="403"):
                await AgentHttp(HOST, port).request("PUT", "/v1/connect/ca/revoke", body)
            with pytest.raises(HttpError, match=r"400 .*not colon hex"):
                await AgentHttp(HOST, port, token="t").request(
                    "PUT", "/v1/connect/ca/revoke", {"SerialNumber": "zz"}
                )
            before = follower.generation
            stored, _ = await AgentHttp(HOST, port, token="t").request(
                "PUT", "/v1/connect/ca/revoke", body
            )
            assert stored["SerialNumber"] == serial_colon_hex(web)
            assert stored["PublicKeySHA256"] == ""  # serial only: not this agent's leaf
            await follower.wait_changed(before, 5.0)
            assert follower.refusal(web.serial_number, b"") is not None
            # The full certificate adds the key: a re-issue for it is refused too.
            pem = web.public_bytes(Encoding.PEM).decode()
            before = follower.generation
            stored, _ = await AgentHttp(HOST, port, token="t").request(
                "PUT", "/v1/connect/ca/revoke", {"CertPEM": pem}
            )
            assert stored["PublicKeySHA256"] == spki_sha256(web).hex()
            assert stored["Reason"] == "leaked"  # the first reason stays
            await follower.wait_changed(before, 5.0)
            assert follower.refusal(web.serial_number + 1, spki_sha256(web)) is not None
            nursery.cancel_scope.cancel()
