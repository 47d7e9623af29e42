"""Regression tests from a protocol review of the sans-IO core against memberlist.

Each test pins one bug that was found (and fixed) in `gossip/membership.py`,
`gossip/queue.py` or `gossip/driver.py`; the test names say what must hold.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
import trio.testing

from meshnode.gossip.config import GossipConfig
from meshnode.gossip.driver import GossipDriver
from meshnode.gossip.errors import RemoteProtocolError
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import (
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    NodeState,
    PacketMessage,
    Ping,
    PushPull,
    State,
    Suspect,
)
from meshnode.gossip.testing import MemoryNetwork
from meshnode.gossip.wire import Wire
from tests.gossip.conftest import A, B, C, feed, make, sent

U64_MAX = 2**64 - 1


def peer(i: int) -> Addr:
    return Addr(f"10.1.{i // 250}.{i % 250 + 1}", 7946)


def with_peers(n: int) -> Membership:
    m = make()
    feed(m, *(Alive(1, f"p{i}", peer(i), b"") for i in range(n)))
    sent(m)
    return m


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "msg",
    [
        Alive(U64_MAX, "a", A, b"other"),
        Suspect(U64_MAX, "a", "b"),
        Dead(U64_MAX, "a", "b"),
    ],
)
def test_unrefutable_accusation_about_us_is_a_remote_error(msg: PacketMessage) -> None:
    # Refuting needs incarnation + 1, which does not fit the wire's u64: that
    # used to escape as LocalProtocolError (from the encoder) and kill the driver.
    m = make()
    with pytest.raises(RemoteProtocolError):
        feed(m, msg)
    assert m.incarnation == 0
    m.handle_timer(m.get_timer())  # and the core still works


def test_merge_applies_the_good_entries_around_an_unrefutable_one() -> None:
    m = make()
    remote = PushPull(
        join=False,
        nodes=(
            NodeState("a", A, b"", U64_MAX, State.DEAD),
            NodeState("b", B, b"", 1, State.ALIVE),
        ),
    )
    with pytest.raises(RemoteProtocolError):
        m.merge_remote_state(remote, 0.0)
    member = m.member("b")
    assert member is not None and member.state == State.ALIVE


async def test_driver_survives_an_unrefutable_claim_in_a_push_pull_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(rng=random.Random(1))
    key = bytes(range(32))

    def driver(name: str, addr: Addr, seed: int) -> GossipDriver:
        core = Membership(name=name, addr=addr, rng=random.Random(seed), now=trio.current_time())
        wire = Wire(Keyring([key]), nonce_source=random.Random(seed).randbytes)
        return GossipDriver(core, wire, net.transport(addr))

    a, b = driver("a", A, 1), driver("b", B, 2)
    # b believes something about a that a can never refute.
    b.core.merge_remote_state(
        PushPull(join=False, nodes=(NodeState("a", A, b"", U64_MAX, State.ALIVE),)), 0.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.join([B])  # used to raise RemoteProtocolError out of the driver
        await trio.sleep(5.0)
        assert a.counters.values.get("tcp.rejected.RemoteProtocolError", 0) >= 1
        assert a.core.member("b") is not None
        nursery.cancel_scope.cancel()


def test_duplicated_nacks_do_not_count_as_good_health() -> None:
    # memberlist only ever adds (expected - received) when fewer nacks came;
    # a duplicated (or forged) nack must not turn a failed probe into a reward.
    m = with_peers(4)
    m._awareness.apply(3)
    now = m.get_timer()
    while not any(isinstance(x, Ping) for _, b in sent(m) for x in b):
        now = m.get_timer()
        m.handle_timer(now)
    reqs: list[IndirectPing] = []
    while not reqs:  # up to the probe timeout: then indirect pings go out
        now = m.get_timer()
        m.handle_timer(now)
        reqs = [x for _, b in sent(m) for x in b if isinstance(x, IndirectPing)]
    assert len(reqs) == 3
    feed(m, *([Nack(reqs[0].seq)] * 10), now=now)
    assert m._probe is not None
    m.handle_timer(m._probe.end_at_s)  # the probe ends without an ack
    assert m.awareness_score >= 3


def test_indirect_ping_flood_keeps_relays_bounded() -> None:
    m = make()
    for _ in range(20):
        feed(m, *(IndirectPing(i, "c", C, "b", B, True) for i in range(1000)), now=0.0)
        sent(m)
    assert len(m._relays) <= 4096
    m.handle_timer(1.0)
    assert not m._relays


def test_flapping_member_does_not_grow_the_probe_order() -> None:
    m = with_peers(3)
    m.handle_timer(m.get_timer())  # the first probe builds the round
    msgs: list[PacketMessage] = []
    for inc in range(2, 2000, 2):
        msgs += [Dead(inc, "p0", "x"), Alive(inc + 1, "p0", peer(0), b"")]
    for i in range(0, len(msgs), 20):
        feed(m, *msgs[i : i + 20])
    assert len(m._probe_order) <= 4


def test_push_pull_with_many_nodes_prunes_the_queue_in_amortised_time() -> None:
    m = make()
    calls = 0
    prune = m._queue.prune

    def counting_prune(max_len: int) -> None:
        nonlocal calls
        calls += 1
        prune(max_len)

    m._queue.prune = counting_prune  # type: ignore[method-assign]
    nodes = tuple(NodeState(f"n{i}", peer(i), b"", 1, State.ALIVE) for i in range(40_000))
    m.merge_remote_state(PushPull(join=True, nodes=nodes), 0.0)
    assert m.num_alive() == 40_001
    # Pruning copies a bucket: once per update beyond the cap made a big join
    # quadratic (16 s of blocked event loop for 100k nodes).
    assert calls <= 20
    assert len(m._queue) <= 25_000


# ---------------------------------------------------------------- protocol rules


def test_recently_dead_member_hears_gossip_in_a_larger_cluster() -> None:
    # memberlist picks gossip targets among alive, suspect and recently dead
    # members alike, so a falsely-declared node learns of it and refutes.
    m = with_peers(6)
    feed(m, Dead(1, "p0", "x"), now=1.0)
    targets: set[Addr] = set()
    now = 1.0
    for _ in range(100):
        now += 0.2
        m.broadcast_user(b"news")
        m.handle_timer(now)
        targets |= {addr for addr, batch in sent(m) if batch}
    assert now < 1.0 + m.config.gossip_to_dead_s
    assert peer(0) in targets


def test_update_meta_while_leaving_does_not_supersede_the_leave() -> None:
    m = with_peers(3)
    m.leave(1.0)
    sent(m)
    m.update_meta(b"new", 1.1)
    assert not m.leave_done
    msgs: list[PacketMessage] = []
    now = 1.1
    while not m.leave_done and now < 30.0:
        now += 0.2
        m.handle_timer(now)
        msgs += [x for _, batch in sent(m) for x in batch]
    assert m.leave_done
    assert not any(isinstance(x, Alive) and x.node == "a" for x in msgs)
    assert Dead(0, "a", "a") in msgs


def test_every_refutation_raises_awareness() -> None:
    # memberlist's refute() applies +1 whatever the accusation: being declared
    # dead is at least as strong a hint of our own poor health as suspicion.
    m = make()
    feed(m, Dead(0, "a", "b"))
    assert m.incarnation == 1 and m.awareness_score == 1
    feed(m, Alive(5, "a", A, b"m"))
    assert m.incarnation == 6 and m.awareness_score == 2


def test_reconnect_rate_to_a_failed_member_scales_with_the_cluster() -> None:
    # serf reconnects with probability failed / alive, so that the cluster as a
    # whole (not every member) tries each failed member about once an interval.
    # No probing here: only the reconnect timer is under test.
    config = dataclasses.replace(GossipConfig(), probe_interval_s=1e9)
    m = Membership(name="a", addr=A, config=config, rng=random.Random(0), now=0.0)
    feed(m, *(Alive(1, f"p{i}", peer(i), b"") for i in range(40)), Dead(1, "p0", "x"))
    now = 0.0
    attempts = 0
    for _ in range(200):
        now += m.config.reconnect_interval_s
        m.handle_timer(now)
        attempts += sum(1 for addr, _ in m.push_pulls_to_start() if addr == peer(0))
    assert 1 <= attempts <= 30  # about 200 / 39, not 200


def test_user_broadcast_with_a_falsy_key_still_replaces_the_queued_one() -> None:
    m = make()
    m.broadcast_user(b"v1", key=0)
    m.broadcast_user(b"v2", key=0)
    assert m.pending_broadcasts() == 1
