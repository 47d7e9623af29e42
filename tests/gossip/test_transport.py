"""The real UDP/TCP transport: bounded streams, non-blocking sends."""

from __future__ import annotations

import trio

from meshnode.gossip.messages import Addr
from meshnode.gossip.transport import UdpTcpTransport


async def test_stream_slots_are_bounded_and_released() -> None:
    transport = UdpTcpTransport(Addr("127.0.0.1", 0), max_streams=2)
    release = trio.Event()
    served: list[Addr] = []

    async def handler(stream: trio.abc.Stream, peer: Addr) -> None:
        async with stream:
            served.append(peer)
            await release.wait()

    port = transport.local_addr.port
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve_streams, handler)
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        while len(served) < 2:
            await trio.sleep(0.01)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        # The third connection is closed by the server straight away.
        with trio.fail_after(5):
            assert await extra.receive_some(10) == b""
        await extra.aclose()
        assert transport.streams_refused == 1
        release.set()
        for s in held:
            await s.aclose()
        await trio.sleep(0.1)
        again = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            while len(served) < 3:
                await trio.sleep(0.01)
        await again.aclose()
        nursery.cancel_scope.cancel()
    transport.close()


async def test_send_to_unreachable_address_is_a_local_drop_not_an_error() -> None:
    transport = UdpTcpTransport(Addr("127.0.0.1", 0))
    try:
        # An IPv6 destination from an IPv4 socket cannot be sent to at all.
        assert transport.send_packet(b"x", Addr("::1", 9)) is False
        assert transport.send_packet(b"x", Addr("127.0.0.1", 9)) is True
    finally:
        transport.close()
