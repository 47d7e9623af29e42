"""Lifeguard's buddy system and the direct answer to a stale accusation.

Found by the namespace chaos tests (10 % loss, seven hosts): one node missed
the suspect's refutation broadcast (a handful of packets, none of which
reached it), kept it suspect until its timer expired and listed it failed for
13 s, while everyone else saw it alive. The suspect must hear the accusation
from the accuser itself, and answer the accuser itself.
"""

from __future__ import annotations

from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Alive, Ping, State, Suspect
from tests.gossip.conftest import A, B, C, feed, make, sent


def test_a_ping_to_a_suspect_carries_the_suspicion() -> None:
    m = make("a", A)
    feed(m, Alive(1, "b", B, b""), src=B)
    feed(m, Suspect(1, "b", "c"), src=C)
    sent(m)
    for _ in range(20):  # until a probes b (round-robin over one member)
        now = m.get_timer()
        m.handle_timer(now)
        to_b = [batch for addr, batch in sent(m) if addr == B]
        if any(isinstance(x, Ping) for batch in to_b for x in batch):
            break
    else:
        raise AssertionError("a never probed b")
    ping_packet = next(b for b in to_b if any(isinstance(x, Ping) for x in b))
    assert Suspect(1, "b", "a") in ping_packet


def test_a_stale_accusation_is_answered_to_its_sender_with_our_alive() -> None:
    m = make("b", B)
    feed(m, Alive(1, "a", A, b""), Alive(1, "c", C, b""), src=A)
    feed(m, Suspect(0, "b", "c"), src=C)  # refuted: b is now at incarnation 1
    assert m.incarnation == 1
    sent(m)
    feed(m, Suspect(0, "b", "a"), src=A)  # a missed the refutation
    to_a = [x for addr, batch in sent(m) if addr == A for x in batch]
    assert Alive(1, "b", B, b"m") in to_a
    assert m.incarnation == 1  # no new refutation: the old one is still true


def drain(m: Membership, now: float) -> float:
    """Run `m` with every packet lost until its broadcast queue is spent; the time then."""
    for _ in range(500):
        if not m.pending_broadcasts():
            return now
        now = m.get_timer()
        m.handle_timer(now)
        m.packets_to_send()
    raise AssertionError("the broadcast queue never drained")


def test_the_accuser_learns_the_refutation_before_its_timer_expires() -> None:
    """a suspects b and its suspect broadcasts are all lost; then a and b talk again."""
    a, b = make("a", A), make("b", B, seed=1)
    feed(a, Alive(0, "b", B, b"m"), src=B)
    feed(b, Alive(0, "a", A, b"m"), src=A)
    now = drain(b, 0.0)
    feed(a, Suspect(0, "b", "c"), src=C, now=now)
    now = drain(a, now)
    assert a.member("b").state == State.SUSPECT  # type: ignore[union-attr]
    seen: set[State] = set()
    for _ in range(1000):
        now = min(a.get_timer(), b.get_timer())
        a.handle_timer(now)
        b.handle_timer(now)
        for addr, data in a.packets_to_send():
            if addr == B:
                b.receive_packet(data, A, now)
        for addr, data in b.packets_to_send():
            if addr == A:
                a.receive_packet(data, B, now)
        seen.add(a.member("b").state)  # type: ignore[union-attr]
        if now > 30.0:
            break
    assert State.DEAD not in seen, "a declared b failed although b answered every probe"
    assert a.member("b").state == State.ALIVE  # type: ignore[union-attr]
