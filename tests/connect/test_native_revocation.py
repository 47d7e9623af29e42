"""`meshnode ca revoke` against native services: refused at the handshake, cut when live.

A native db serves an echo on one agent; a second db instance on the other
agent is stuck on its first leaf (as a host whose key leaked keeps it); a
native web dials db. Revoking the stuck instance's leaf makes web skip it
for the good instance and cut its live stream to it; revoking web's leaf
makes db cut web's live stream and refuse the old leaf at the handshake.
The lists reach each native service from its own agent's HTTP API, as the
standalone `meshnode connect proxy` follows them.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
import trio

from meshnode.ca.pem import cert_from_pem, serial_colon_hex
from meshnode.connect import MeshStream, ReplicaAuthorizer, Service
from meshnode.proxy import TlsMaterial
from meshnode.proxy.testing import StaticAuthorizer, StaticCertSource, StaticResolver, exchange
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
from tests.connect.test_native_agents import open_service, raw_client, serve_native

pytestmark = pytest.mark.slow

_TOKEN = "native-revoke-token"  # revoking needs the agent's API token
_CUT_S = 3.0  # the bound: within a dissemination round (well under 1 s on loopback)
_TEST_S = 120.0


def serial_of(material: TlsMaterial) -> str:
    """The leaf's serial in colon hex, as `meshnode ca leaf` prints it."""
    return serial_colon_hex(cert_from_pem(material.cert_chain_pem))


async def serve_stuck(nursery: trio.Nursery, agent: AgentProc, tmp_path: Path) -> tuple[int, str]:
    """A second native db instance on `agent` that keeps its first leaf: (its port, serial)."""
    port = free_port(agent.ip)
    definition = {"name": "db", "id": "db-stuck", "address": agent.ip, "port": port}
    await register(agent, tmp_path, {**definition, "connect": {"native": True}})
    async with Service.open("db", http_addr=agent.http, first_leaf_timeout_s=READY_S) as fresh:
        frozen = fresh.material
    stuck = Service(
        "db",
        certs=StaticCertSource(frozen),  # never renewed: what the holder of a leaked key has
        decider=ReplicaAuthorizer(StaticAuthorizer()),  # it lets anyone in
        resolver=StaticResolver(),
        rng=random.Random(7),
    )
    await nursery.start(stuck.run)
    await nursery.start(
        lambda task_status: stuck.serve(echo, port=port, host=agent.ip, task_status=task_status)
    )
    return port, serial_of(frozen)


async def dial_port(web: Service, port: int, tries: int = 60) -> MeshStream:
    """A stream from web to the db instance at `port` (the balancer picks; bounded tries)."""
    for _ in range(tries):
        stream = await dial_when_ready(web, "db")
        if stream.socket.getpeername()[1] == port:
            return stream
        await stream.aclose()
    raise AssertionError(f"web never reached the db instance at port {port}")


async def cut_after_s(stream: MeshStream, since_s: float, limit_s: float) -> float:
    """Seconds from `since_s` (monotonic) until `stream` stops echoing; inf: still up."""
    with trio.move_on_after(limit_s):
        try:
            while await exchange(stream, b"still?") == b"still?":
                await trio.sleep(0.05)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            print(f"cut: {exc}")
        return time.monotonic() - since_s
    return math.inf


async def revoke_cuts_after_s(agent: AgentProc, serial: str, how: str, live: MeshStream) -> float:
    """`meshnode ca revoke SERIAL` on `agent`: seconds from the command to `live` being cut."""
    revoked_at_s = time.monotonic()
    out = await cli(agent, "ca", "revoke", serial, "--reason", "key leaked")
    assert f"Revoked {serial} (by {how})" in out
    return await cut_after_s(live, revoked_at_s, _CUT_S + 1)


async def test_native_services_refuse_and_cut_revoked_leaves(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHNODE_HTTP_TOKEN", _TOKEN)  # the CLI and the native services
    async with agents_in_nursery(cluster, 2, _TEST_S, "-api-token", _TOKEN) as (agents, nursery):
        web_agent, db_agent = agents
        db, db_port = await serve_native(nursery, db_agent, tmp_path, "db")
        stuck_port, stuck_serial = await serve_stuck(nursery, web_agent, tmp_path)
        await register(web_agent, tmp_path, {"name": "web", "connect": {"native": True}})
        web = await open_service(web_agent, "web")
        to_db = await dial_port(web, db_port)
        to_stuck = await dial_port(web, stuck_port)  # both instances serve before
        for live in (to_db, to_stuck):
            assert await exchange(live, b"hello") == b"hello"

        # A server's leaf revoked (by serial, on an agent that does not hold it).
        cut_s = await revoke_cuts_after_s(db_agent, stuck_serial, "serial", to_stuck)
        print(f"web's live stream to the revoked server cut {cut_s:.2f} s after `ca revoke`")
        assert cut_s < _CUT_S
        assert web.tracker.counts() == {("web", "db"): 1}  # to_db is still up
        for _ in range(10):  # every new dial skips the revoked instance
            async with await web.dial("db", timeout_s=5.0) as stream:
                assert stream.socket.getpeername()[1] == db_port
                assert await exchange(stream, b"ping") == b"ping"

        # A client's leaf revoked (on its own agent: by serial and key).
        old_leaf = web.material
        web_serial = serial_of(old_leaf)
        cut_s = await revoke_cuts_after_s(web_agent, web_serial, "serial and public key", to_db)
        print(f"db cut web's live stream {cut_s:.2f} s after `ca revoke`")
        assert cut_s < _CUT_S
        with trio.move_on_after(_CUT_S):
            while len(db.tracker):
                await trio.sleep(0.05)
        assert db.tracker.counts() == {}
        denied = db.stats.denied_total
        got = await trio.to_thread.run_sync(
            raw_client,
            db_agent.ip,
            db_port,
            old_leaf.roots_pem,
            (old_leaf.cert_chain_pem, old_leaf.key_pem),
            tmp_path,
        )
        assert got == b""  # the old leaf is refused at the handshake
        assert db.stats.denied_total == denied + 1

        # web's agent owns its leaf: it takes a new one and web reaches db again.
        with trio.fail_after(READY_S):
            while serial_of(web.material) == web_serial:
                await trio.sleep(0.1)
        async with await dial_when_ready(web, "db") as stream:
            assert stream.socket.getpeername()[1] == db_port
            assert await exchange(stream, b"back") == b"back"
        listed = await api(db_agent, "/v1/connect/ca/revocations")
        assert sorted(r["SerialNumber"] for r in listed) == sorted([stuck_serial, web_serial])
        await to_db.aclose()
        await to_stuck.aclose()
