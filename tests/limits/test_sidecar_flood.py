"""A sidecar's public mTLS port under a flood of idle TCP from one address (security finding 7)."""

from __future__ import annotations

import random
import socket

import trio

from meshnode.connect import MeshStream, ReplicaAuthorizer, Service
from meshnode.proxy import Limits
from meshnode.proxy.testing import (
    StaticAuthorizer,
    StaticCertSource,
    StaticResolver,
    TestCA,
    echo,
)
from meshnode.proxy.tls import build_contexts
from tests.limits.conftest import CLIENT_SOURCE, SERVED_WITHIN_S, SETTLE_S, idle_flood
from tests.proxy.conftest import HOST, Pair, serve

# The finding's count: more than the listener's 1,024 connection slots.
_FLOOD = 1100


def _tls_ping(port: int, ca: TestCA) -> bytes:
    """A mesh client ("web", its own leaf) from CLIENT_SOURCE: handshake, send, read the echo."""
    context = build_contexts(ca.material("web")).client
    with (
        socket.create_connection((HOST, port), timeout=5, source_address=(CLIENT_SOURCE, 0)) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"ping")
        return tls.recv(4)


async def test_an_idle_flood_from_one_address_does_not_delay_another() -> None:
    ca = TestCA("c1.mesh")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            pair = Pair(nursery, ca)
            db = await pair.add_db(await serve(nursery, echo))
            port = db.inbound_port
            assert port is not None
            with idle_flood(port, _FLOOD):
                await trio.sleep(SETTLE_S)
                # The flood holds at most the per-address bound; the rest were
                # closed at once and counted.
                inbound = db.snapshot()["Inbound"]
                assert inbound["Active"] <= Limits().max_handshakes_per_source
                assert inbound["Limited"] > 0
                started_s = trio.current_time()
                assert await trio.to_thread.run_sync(_tls_ping, port, ca) == b"ping"
                took_s = trio.current_time() - started_s
                assert took_s < SERVED_WITHIN_S, f"served after {took_s:.2f} s"
            nursery.cancel_scope.cancel()


async def _echo(stream: MeshStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def test_a_native_service_bounds_handshakes_per_address() -> None:
    """`Service.serve` shares the proxy's accept loop: the same bound, the same promise."""
    ca = TestCA("c1.mesh")
    limits = Limits(max_handshakes_per_source=4)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            db = Service(
                "db",
                certs=StaticCertSource(ca.material("db")),
                decider=ReplicaAuthorizer(StaticAuthorizer()),
                resolver=StaticResolver(),
                rng=random.Random(0),
                limits=limits,
            )
            await nursery.start(db.run)
            port: int = await nursery.start(
                lambda task_status: db.serve(_echo, port=0, host=HOST, task_status=task_status)
            )
            with idle_flood(port, 10):
                await trio.sleep(SETTLE_S)
                assert db.stats.limited_total == 6
                started_s = trio.current_time()
                assert await trio.to_thread.run_sync(_tls_ping, port, ca) == b"ping"
                assert trio.current_time() - started_s < SERVED_WITHIN_S
            nursery.cancel_scope.cancel()
