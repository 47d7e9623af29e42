"""The TCP fallback probe (memberlist #37): the sans-IO decision, then real sockets.

When the UDP ping and the ping-reqs go unanswered, the core asks the driver
for one ping over TCP; an ack there keeps the target alive. The driver test
runs two real drivers on loopback whose UDP from a to b is dropped at a's
transport; the netns chaos test drops UDP with nftables instead.
"""

from __future__ import annotations

import random

import pytest
import trio

from meshnode.gossip import codec
from meshnode.gossip.config import GossipConfig
from meshnode.gossip.driver import GossipDriver
from meshnode.gossip.errors import RemoteProtocolError
from meshnode.gossip.membership import Membership, TcpPing
from meshnode.gossip.messages import Ack, Addr, Alive, IndirectPing, Ping, State
from meshnode.gossip.transport import UdpTcpTransport
from meshnode.gossip.wire import Wire
from tests.gossip.conftest import B, C, feed, make, sent
from tests.gossip.test_membership_rules import state_of


def _probe_until_indirect(m: Membership) -> tuple[float, Ping, list[TcpPing]]:
    """Run the timer until a probe pings someone, then to its indirect stage."""
    pings: list[Ping] = []
    while not pings:
        t = m.get_timer()
        m.handle_timer(t)
        pings = [x for _, batch in sent(m) for x in batch if isinstance(x, Ping)]
        assert m.tcp_pings_to_start() == []  # not before the indirect stage
    m.handle_timer(t + 0.5)
    assert any(isinstance(x, IndirectPing) for _, batch in sent(m) for x in batch)
    return t, pings[0], m.tcp_pings_to_start()


def test_an_answered_tcp_ping_keeps_the_target_alive() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""), Alive(1, "c", C, b""))
    sent(m)
    t, ping, [tcp] = _probe_until_indirect(m)
    assert tcp.seq == ping.seq and tcp.addr == (B if ping.target == "b" else C)
    assert tcp.deadline_s == pytest.approx(t + 1.0)
    [sent_ping] = codec.decode_packet(tcp.payload)
    assert isinstance(sent_ping, Ping) and sent_ping.target == ping.target
    # The target answers over TCP (its core makes the ack).
    target = make(ping.target, tcp.addr)
    reply = target.answer_tcp_ping(tcp.payload)
    assert m.tcp_ping_answered(tcp.seq, reply, t + 0.6)
    m.handle_timer(t + 1.0)
    assert state_of(m, ping.target) == State.ALIVE
    assert m.counters.get("tcp_fallback_saves") == 1
    assert m.awareness_score == 1  # the UDP failure still counts against our health


def test_a_failed_or_wrong_tcp_ping_still_suspects() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""), Alive(1, "c", C, b""))
    sent(m)
    t, ping, [tcp] = _probe_until_indirect(m)
    wrong = codec.encode_packet([codec.encode_message(Ack(tcp.seq + 1))])
    assert not m.tcp_ping_answered(tcp.seq, wrong, t + 0.6)  # an ack of another ping
    m.tcp_ping_failed(tcp.seq, t + 0.9)
    m.handle_timer(t + 1.0)
    assert state_of(m, ping.target) == State.SUSPECT
    assert "tcp_fallback_saves" not in m.counters


def test_a_late_answer_does_not_clear_the_next_probe() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""), Alive(1, "c", C, b""))
    sent(m)
    t, ping, [tcp] = _probe_until_indirect(m)
    m.handle_timer(t + 1.0)  # the probe ended without an answer
    assert state_of(m, ping.target) == State.SUSPECT
    reply = make(ping.target, tcp.addr).answer_tcp_ping(tcp.payload)
    m.tcp_ping_answered(tcp.seq, reply, t + 1.05)
    assert state_of(m, ping.target) == State.SUSPECT


def test_the_fallback_can_be_turned_off() -> None:
    m = Membership(
        name="a",
        addr=Addr("127.0.0.1", 7001),
        config=GossipConfig(tcp_fallback_probe=False),
        rng=random.Random(0),
        now=0.0,
    )
    feed(m, Alive(1, "b", B, b""), Alive(1, "c", C, b""))
    sent(m)
    _, _, tcp = _probe_until_indirect(m)
    assert tcp == []


def test_answer_tcp_ping_refuses_anything_but_one_ping_for_us() -> None:
    b = make("b", B)
    misdirected = codec.encode_packet([codec.encode_message(Ping(1, "c", "a", B))])
    with pytest.raises(RemoteProtocolError, match="reached 'b'"):
        b.answer_tcp_ping(misdirected)
    two = codec.encode_packet([codec.encode_message(Ping(1, "b", "a", B))] * 2)
    with pytest.raises(RemoteProtocolError, match="exactly one ping"):
        b.answer_tcp_ping(two)
    with pytest.raises(RemoteProtocolError):
        b.answer_tcp_ping(b"\xff garbage")


async def test_two_drivers_over_tcp_only_keep_each_other_alive() -> None:
    """a's UDP to b is dropped; TCP between them works: b is never suspected."""
    config = GossipConfig(probe_interval_s=0.2, probe_timeout_s=0.1)
    ta = UdpTcpTransport(Addr("127.0.0.1", 0))
    tb = UdpTcpTransport(Addr("127.0.0.1", 0))
    try:
        cores = {
            name: Membership(
                name=name, addr=t.local_addr, config=config, rng=random.Random(i), now=0.0
            )
            for i, (name, t) in enumerate((("a", ta), ("b", tb)))
        }
        drivers = {
            name: GossipDriver(cores[name], Wire(None), t, clock=trio.current_time)
            for name, t in (("a", ta), ("b", tb))
        }
        # Start with trio's clock: the cores were made at 0.0.
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for d in drivers.values():
                    await nursery.start(d.run)
                assert await drivers["a"].join([tb.local_addr]) == 1
                with trio.fail_after(5):
                    while cores["b"].member("a") is None:
                        await trio.sleep(0.05)
                ta_send = ta.send_packet

                def drop_to_b(data: bytes, addr: Addr) -> bool:
                    return False if addr == tb.local_addr else ta_send(data, addr)

                ta.send_packet = drop_to_b  # type: ignore[method-assign]
                # Every probe of a's fails over UDP; awareness stretches its interval
                # up to 8 x 0.2 s, so 3 s hold a few probes, each saved over TCP.
                for _ in range(30):
                    await trio.sleep(0.1)
                    member = cores["a"].member("b")
                    assert member is not None and member.state is State.ALIVE
                assert cores["a"].counters.get("tcp_fallback_saves", 0) >= 2
                assert drivers["a"].counters.values.get("tcp_ping.acked", 0) >= 2
                assert drivers["b"].counters.values.get("tcp_ping.answered", 0) >= 2
                nursery.cancel_scope.cancel()
    finally:
        ta.close()
        tb.close()
