"""Bytes through an outbound+inbound proxy pair: integrity, half-close, deny, retry, limits."""

from __future__ import annotations

import hashlib
import os

import trio

from meshnode.proxy import Limits
from meshnode.proxy.testing import StaticAuthorizer, StaticCertSource, TestCA, echo
from tests.proxy.conftest import (
    HOST,
    hash_then_reply,
    read_all,
    round_trip,
    running_pair,
    serve,
)

_DEADLINE_S = 10.0  # every test body is bounded; none should come near it


async def test_bytes_flow_both_ways_byte_exact_with_half_close(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        db, port = await pair.serve_db(hash_then_reply)
        payload = os.urandom(8 * 1024 * 1024 + 17)
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(payload)
            await stream.send_eof()  # half-close: the reply must still arrive in full
            reply = await read_all(stream)
        assert reply[:32] == hashlib.sha256(payload).digest()
        assert reply[32:] == bytes(range(256)) * 4096
        await trio.sleep(0.05)  # let the proxies account the finished connection
        inbound = db.snapshot()["Inbound"]
        assert inbound["BytesIn"] == len(payload)
        assert inbound["BytesOut"] == len(reply)
        assert inbound["Accepted"] == 1
        assert inbound["Active"] == 0


async def test_deny_refuses_new_connections_and_cuts_live_ones(ca: TestCA) -> None:
    authorizer = StaticAuthorizer()
    async with running_pair(ca, authorizer=authorizer, deadline_s=_DEADLINE_S) as pair:
        db, port = await pair.serve_db()
        live = await trio.open_tcp_stream(HOST, port)
        async with live:
            await live.send_all(b"hello")
            assert await live.receive_some(5) == b"hello"
            assert db.snapshot()["Connections"] == [
                {"Source": "web", "Destination": "db", "Count": 1}
            ]
            authorizer.set("web", "db", False)
            with trio.fail_after(3.0):
                assert await read_all(live) == b""  # cut: EOF, no more bytes
        assert await round_trip(port) == b""
        inbound = db.snapshot()["Inbound"]
        assert inbound["Cut"] == 1
        assert inbound["Denied"] == 1
        authorizer.set("web", "db", True)
        assert await round_trip(port) == b"ping"


async def test_wrong_server_identity_is_refused_by_the_outbound_side(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        # A proxy proving "cache" listed as an instance of "db": never talk to it.
        impostor = await pair.add_db(await serve(pair.nursery, echo), service="cache")
        pair.route("db", [impostor])
        port = await pair.start_outbound()
        assert await round_trip(port) == b""
        assert pair.outbound is not None
        upstream = pair.outbound.snapshot()["Upstreams"][0]
        assert upstream["Failed"] == 1
        assert upstream["Instances"][0]["Failed"] == 1


async def test_retry_on_another_instance_and_eject_the_dead_one(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        db = await pair.add_db(await serve(pair.nursery, echo))
        with trio.socket.socket() as probe:  # a port with nothing behind it
            await probe.bind((HOST, 0))
            dead_port = probe.getsockname()[1]
        pair.route("db", [dead_port, db])
        port = await pair.start_outbound()
        for i in range(20):
            assert await round_trip(port, b"x%d" % i) == b"x%d" % i
        assert pair.outbound is not None
        instances = {i["Port"]: i for i in pair.outbound.snapshot()["Upstreams"][0]["Instances"]}
        # Tried at most until ejected (3 failures), then left alone.
        assert 1 <= instances[dead_port]["Failed"] <= 3
        assert instances[dead_port]["Ejected"] is (instances[dead_port]["Failed"] == 3)
        assert pair.outbound.snapshot()["Upstreams"][0]["Failed"] == 0


async def test_certificate_swap_keeps_live_connections_until_their_root_leaves(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        db_certs = StaticCertSource(ca.material("db"))
        db, port = await pair.serve_db(certs=db_certs)
        live = await trio.open_tcp_stream(HOST, port)
        async with live:
            await live.send_all(b"before")
            assert await live.receive_some(6) == b"before"
            # A rotation: the bundle gains a new root, then leaves move to it
            # one side at a time, then the old root goes.
            new_ca = TestCA("c1.mesh")
            bundle = ca.root.cert_pem + new_ca.root.cert_pem
            db_certs.set(ca.material("db", roots_pem=bundle))
            pair.web_certs.set(ca.material("web", roots_pem=bundle))
            assert await round_trip(port) == b"ping"
            db_certs.set(new_ca.material("db", roots_pem=bundle))
            assert await round_trip(port) == b"ping"  # old leaf -> new leaf
            pair.web_certs.set(new_ca.material("web", roots_pem=bundle))
            assert await round_trip(port) == b"ping"
            await live.send_all(b"during")  # the first connection never noticed
            assert await live.receive_some(6) == b"during"
            fresh = await trio.open_tcp_stream(HOST, port)  # new leaves on both sides
            async with fresh:
                await fresh.send_all(b"new")
                assert await fresh.receive_some(3) == b"new"
                db_certs.set(new_ca.material("db"))
                pair.web_certs.set(new_ca.material("web"))
                assert await round_trip(port) == b"ping"
                # The old root is gone: the connection whose leaves chain to it
                # is cut, the one made under the new root stays.
                with trio.fail_after(3.0):
                    assert await read_all(live) == b""
                await fresh.send_all(b"after")
                assert await fresh.receive_some(5) == b"after"
        assert db.snapshot()["Inbound"]["HandshakeFailed"] == 0


async def test_a_stalled_handshake_is_cut_after_the_timeout(ca: TestCA) -> None:
    limits = Limits(handshake_timeout_s=0.3)
    async with running_pair(ca, limits=limits, deadline_s=_DEADLINE_S) as pair:
        db = await pair.add_db(await serve(pair.nursery, echo))
        assert db.inbound_port is not None
        stalled = await trio.open_tcp_stream(HOST, db.inbound_port)
        async with stalled:
            start = trio.current_time()
            assert await read_all(stalled) == b""  # nothing sent, then closed
            assert 0.25 <= trio.current_time() - start < 3.0
        assert db.snapshot()["Inbound"]["HandshakeFailed"] == 1


async def test_idle_connections_are_closed_and_the_listener_is_bounded(ca: TestCA) -> None:
    limits = Limits(idle_timeout_s=0.4, max_connections=2)
    async with running_pair(ca, limits=limits, deadline_s=_DEADLINE_S) as pair:
        _, port = await pair.serve_db()
        streams = [await trio.open_tcp_stream(HOST, port) for _ in range(3)]
        try:
            for s in streams[:2]:
                await s.send_all(b"a")
                assert await s.receive_some(1) == b"a"
            assert pair.outbound is not None
            # The third waits in the backlog while two are open.
            await streams[2].send_all(b"b")
            with trio.move_on_after(0.2):
                await streams[2].receive_some(1)
                raise AssertionError("a third connection was served over the limit")
            # Idle: the first two are cut, then the third gets its turn.
            assert await read_all(streams[0]) == b""
            assert await streams[2].receive_some(1) == b"b"
        finally:
            for s in streams:
                await s.aclose()
        assert pair.outbound.snapshot()["Upstreams"][0]["Cut"] >= 2
