"""Native services across real agents: meshnode.connect in this process, agents as processes.

Each application here holds its own leaf from its agent's HTTP API and
speaks mTLS itself; the catalog, the intentions and the CA are the agents'
replicas, so every byte crosses a real TLS 1.3 hop between two loopback
addresses, and a deny or a rotation travels by gossip.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import dnslib
import pytest
import trio

from meshnode.connect import Service
from meshnode.proxy.testing import TestCA, exchange
from meshnode.proxy.testing import echo as plain_echo
from meshnode.testutil import AgentProc, Cluster
from tests.connect.conftest import (
    READY_S,
    agents_in_nursery,
    api,
    cli,
    dial_when_ready,
    echo,
    free_port,
    register,
)

pytestmark = pytest.mark.slow

_CUT_S = 3.0  # the bound for a deny to cut a live connection
_TEST_S = 90.0


async def open_service(agent: AgentProc, name: str) -> Service:
    return await Service.open(name, http_addr=agent.http, first_leaf_timeout_s=READY_S)


async def serve_native(
    nursery: trio.Nursery, agent: AgentProc, tmp_path: Path, name: str
) -> tuple[Service, int]:
    """Register `name` as native on `agent` at a free port, open it and serve an echo there."""
    port = free_port(agent.ip)
    await register(
        agent,
        tmp_path,
        {"name": name, "id": name, "address": agent.ip, "port": port, "connect": {"native": True}},
    )
    service = await open_service(agent, name)
    await nursery.start(
        lambda task_status: service.serve(echo, port=port, host=agent.ip, task_status=task_status)
    )
    return service, port


async def native_pair(
    nursery: trio.Nursery, web_agent: AgentProc, db_agent: AgentProc, tmp_path: Path
) -> tuple[Service, Service]:
    """A native db serving an echo on `db_agent` and a native web on `web_agent`."""
    db, _ = await serve_native(nursery, db_agent, tmp_path, "db")
    await register(web_agent, tmp_path, {"name": "web", "connect": {"native": True}})
    return db, await open_service(web_agent, "web")


async def test_native_client_and_server_on_two_agents_exchange_data(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with agents_in_nursery(cluster, 2, _TEST_S) as ([web_agent, db_agent], nursery):
        db, port = await serve_native(nursery, db_agent, tmp_path, "db")
        await register(web_agent, tmp_path, {"name": "web", "connect": {"native": True}})
        web = await open_service(web_agent, "web")
        stream = await dial_when_ready(web, "db")
        assert stream.peer_uri.endswith("/svc/db")
        payload = bytes(range(256)) * 4096  # 1 MiB each way
        assert await exchange(stream, payload) == payload
        await stream.aclose()
        # The catalog shows a native endpoint, Consul's shape, and DNS names it.
        [entry] = await api(web_agent, "/v1/health/connect/db?passing")
        assert entry["Service"]["Connect"] == {"Native": True}
        assert (entry["Service"]["Address"], entry["Service"]["Port"]) == (db_agent.ip, port)
        [record] = await api(web_agent, "/v1/catalog/service/db")
        assert record["ServiceConnect"] == {"Native": True}
        answer = await dns_a(web_agent, "db.connect.mesh")
        assert answer == [db_agent.ip]
        assert db.stats.accepted_total >= 1
        await web.aclose()
        await db.aclose()


async def dns_a(agent: AgentProc, name: str) -> list[str]:
    """The A records the agent's DNS answers for `name` (UDP)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, trio.fail_after(5):
        await sock.sendto(dnslib.DNSRecord.question(name).pack(), (agent.ip, 8600))
        data = await sock.recv(4096)
    return [str(r.rdata) for r in dnslib.DNSRecord.parse(data).rr if r.rtype == dnslib.QTYPE.A]


async def plain_round_trip(port: int, payload: bytes = b"ping") -> bytes:
    """Through a sidecar's upstream port with a plain TCP client: what came back."""
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                return await exchange(stream, payload)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        return b""


async def test_native_and_sidecar_services_reach_each_other_both_ways(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with agents_in_nursery(cluster, 2, _TEST_S) as ([a, b], nursery):
        # A proxied web on a (plain client -> its sidecar) reaches a native db on b.
        await serve_native(nursery, b, tmp_path, "db")
        upstream = free_port()
        await register(
            a,
            tmp_path,
            {
                "name": "web",
                "port": free_port(),
                "connect": {
                    "sidecar_service": {
                        "proxy": {
                            "upstreams": [{"destination_name": "db", "local_bind_port": upstream}]
                        }
                    }
                },
            },
        )
        with trio.move_on_after(READY_S):
            while await plain_round_trip(upstream) != b"ping":
                await trio.sleep(0.2)
        assert await plain_round_trip(upstream, b"sidecar->native") == b"sidecar->native"

        # A native api on a reaches a proxied cache on b (a plain echo behind its sidecar).
        listeners = await nursery.start(trio.serve_tcp, plain_echo, 0)
        cache_port = listeners[0].socket.getsockname()[1]
        await register(
            b,
            tmp_path,
            {"name": "cache", "port": cache_port, "connect": {"sidecar_service": {}}},
        )
        await register(a, tmp_path, {"name": "api", "connect": {"native": True}})
        api_service = await open_service(a, "api")
        stream = await dial_when_ready(api_service, "cache")
        assert stream.peer_uri.endswith("/svc/cache")  # the sidecar holds cache's leaf
        assert await exchange(stream, b"native->sidecar") == b"native->sidecar"
        await stream.aclose()


async def test_a_deny_cuts_a_live_native_connection_within_3_s(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with agents_in_nursery(cluster, 3, _TEST_S) as ([web_agent, db_agent, third], nursery):
        db, web = await native_pair(nursery, web_agent, db_agent, tmp_path)
        stream = await dial_when_ready(web, "db")
        assert await exchange(stream, b"hello") == b"hello"
        out = await cli(third, "intention", "deny", "web", "db")
        assert "web => db (deny)" in out
        denied_at = time.monotonic()
        with trio.fail_after(_CUT_S + 1):
            try:
                while await exchange(stream, b"still?") == b"still?":
                    await trio.sleep(0.05)
            except trio.BrokenResourceError as exc:
                print(f"client side: {exc}")
        cut_s = time.monotonic() - denied_at
        print(f"live native connection cut {cut_s:.2f} s after the deny on a third agent")
        assert cut_s < _CUT_S
        with trio.move_on_after(_CUT_S):  # both sides cut, whichever was first
            while len(db.tracker) or len(web.tracker):
                await trio.sleep(0.05)
        assert db.tracker.counts() == {}
        assert web.tracker.counts() == {}
        await stream.aclose()
        with pytest.raises(Exception, match="denied"):
            await web.dial("db")


async def test_root_rotation_under_a_stream_of_new_connections_fails_none(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with agents_in_nursery(cluster, 2, _TEST_S) as ([web_agent, db_agent], nursery):
        db, web = await native_pair(nursery, web_agent, db_agent, tmp_path)
        await (await dial_when_ready(web, "db")).aclose()
        old_root = (await api(web_agent, "/v1/agent/connect/ca/roots"))["ActiveRootID"]
        web_chain, db_chain = web.material.cert_chain_pem, db.material.cert_chain_pem
        assert "BEGIN CERTIFICATE" in web_chain
        failures: list[str] = []
        done = 0

        async def one() -> None:
            nonlocal done
            try:
                stream = await web.dial("db", timeout_s=5.0)
                async with stream:
                    if await exchange(stream, b"r") != b"r":
                        failures.append("no echo")
                done += 1
            except Exception as exc:
                failures.append(repr(exc))

        rotated = False
        # One new connection every 100 ms: before, during and after the rotation,
        # until both leaves are re-issued under the new root (bounded in count).
        for i in range(600):
            nursery.start_soon(one)
            await trio.sleep(0.1)
            if i == 20:
                out = await cli(web_agent, "ca", "rotate")
                assert "Rotated" in out
                rotated = True
            reissued = web.material.cert_chain_pem != web_chain
            reissued = reissued and db.material.cert_chain_pem != db_chain
            if rotated and reissued:
                break
        for _ in range(20):  # then ten more new connections on the new leaves
            nursery.start_soon(one)
            await trio.sleep(0.1)
        await trio.sleep(1.0)
        roots = await api(web_agent, "/v1/agent/connect/ca/roots")
        assert roots["ActiveRootID"] != old_root
        assert len(roots["Roots"]) == 2
        assert web.material.cert_chain_pem != web_chain
        assert db.material.cert_chain_pem != db_chain
        print(f"{done} connections across the rotation, failures: {failures[:3]}")
        assert failures == []
        assert done >= 40


async def test_wrong_service_and_foreign_ca_clients_are_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with agents_in_nursery(cluster, 2, _TEST_S) as ([web_agent, db_agent], nursery):
        db, port = await serve_native(nursery, db_agent, tmp_path, "db")
        await cli(web_agent, "intention", "deny", "*", "db")
        await cli(web_agent, "intention", "allow", "web", "db")
        await register(web_agent, tmp_path, {"name": "web", "connect": {"native": True}})
        await register(web_agent, tmp_path, {"name": "api", "connect": {"native": True}})
        web = await open_service(web_agent, "web")
        async with await dial_when_ready(web, "db") as allowed:
            assert await exchange(allowed, b"ok") == b"ok"
        roots = "".join(
            r["RootCert"] for r in (await api(web_agent, "/v1/agent/connect/ca/roots"))["Roots"]
        )
        api_leaf = await api(web_agent, "/v1/agent/connect/ca/leaf/api")
        foreign = TestCA((await api(web_agent, "/v1/agent/connect/ca/roots"))["TrustDomain"])
        stranger = foreign.material("web")
        cases = {
            # A valid leaf of this mesh, for a service the intentions do not allow.
            "wrong service": (api_leaf["CertPEM"], api_leaf["PrivateKeyPEM"]),
            # The right name and trust domain, from another CA.
            "foreign CA": (stranger.cert_chain_pem, stranger.key_pem),
            "no certificate": None,
        }
        for what, pems in cases.items():
            got = await trio.to_thread.run_sync(
                raw_client, db_agent.ip, port, roots, pems, tmp_path
            )
            assert got == b"", f"{what}: the server echoed {got!r}"
        assert db.stats.denied_total == 1  # api: refused by the intention
        assert db.stats.handshake_failed_total >= 2  # the foreign CA and no certificate


def raw_client(
    ip: str, port: int, roots_pem: str, pems: tuple[str, str] | None, tmp_path: Path
) -> bytes:
    """A plain `ssl` client: what the server echoes to b"ping" (b"" when refused)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=roots_pem)
    if pems is not None:
        (tmp_path / "c.pem").write_text(pems[0])
        (tmp_path / "c.key").write_text(pems[1])
        ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    try:
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            return tls.recv(4)
    except (OSError, ssl.SSLError):
        return b""
