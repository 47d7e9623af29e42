"""State rules of the sans-IO core, driven by hand with explicit `now`.

No network: messages are fed straight into `receive_packet`, so each rule
(incarnation ordering, refutation, suspicion, leave) is checked on its own.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.gossip.errors import RemoteProtocolError
from meshnode.gossip.events import Event, MemberFailed, MemberJoined, MemberLeft, MemberUpdated
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    PacketMessage,
    Ping,
    State,
    Suspect,
)
from tests.gossip.conftest import A, B, C, feed, make, sent


def events(m: Membership) -> list[Event]:
    out: list[Event] = []
    while (e := m.next_event()) is not None:
        out.append(e)
    return out


def state_of(m: Membership, name: str) -> State | None:
    member = m.member(name)
    return None if member is None else member.state


def test_alive_adds_member_and_higher_incarnation_only_updates() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b"x"))
    assert [type(e) for e in events(m)] == [MemberJoined]
    feed(m, Alive(1, "b", B, b"changed"))  # same incarnation: ignored
    assert events(m) == []
    feed(m, Alive(2, "b", B, b"changed"))
    (e,) = events(m)
    assert isinstance(e, MemberUpdated) and e.member.meta == b"changed"


def test_suspect_with_old_incarnation_is_ignored() -> None:
    m = make()
    feed(m, Alive(5, "b", B, b""))
    feed(m, Suspect(4, "b", "c"))
    assert state_of(m, "b") == State.ALIVE
    feed(m, Suspect(5, "b", "c"))
    assert state_of(m, "b") == State.SUSPECT


def test_suspect_refuted_by_higher_alive() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""), Suspect(1, "b", "c"))
    feed(m, Alive(2, "b", B, b""))
    assert state_of(m, "b") == State.ALIVE
    assert m.get_timer() < 10.0  # probes continue, but no suspicion timer fires later
    m.handle_timer(1000.0)
    assert state_of(m, "b") == State.ALIVE


def test_suspicion_expires_into_dead() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""), Suspect(1, "b", "c"))
    events(m)
    # Two members alive (a, b): k = 0, so the timeout is the minimum, 4 s.
    m.handle_timer(3.9)
    assert state_of(m, "b") == State.SUSPECT
    m.handle_timer(4.0)
    assert state_of(m, "b") == State.DEAD
    assert [type(e) for e in events(m)] == [MemberFailed]


def test_we_refute_suspicion_and_death_about_ourselves() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""))
    sent(m)
    feed(m, Suspect(0, "a", "b"))
    assert m.incarnation == 1
    feed(m, Dead(7, "a", "b"))
    assert m.incarnation == 8
    m.handle_timer(0.25)  # a gossip round carries the refutation
    msgs = [msg for _, batch in sent(m) for msg in batch]
    assert Alive(8, "a", A, b"m") in msgs


def test_dead_from_node_itself_means_left() -> None:
    m = make()
    feed(m, Alive(3, "b", B, b""))
    events(m)
    feed(m, Dead(3, "b", "b"))
    assert state_of(m, "b") == State.LEFT
    assert [type(e) for e in events(m)] == [MemberLeft]


def test_left_member_comes_back_with_higher_incarnation() -> None:
    m = make()
    feed(m, Alive(3, "b", B, b""), Dead(3, "b", "b"))
    events(m)
    feed(m, Alive(4, "b", B, b""))
    assert state_of(m, "b") == State.ALIVE
    assert [type(e) for e in events(m)] == [MemberJoined]


def test_ping_is_acked_to_its_source_and_misdirected_ping_is_rejected() -> None:
    m = make()
    feed(m, Ping(42, "a", "b", B))
    ((addr, msgs),) = sent(m)
    assert addr == B and msgs[0] == Ack(42)
    with pytest.raises(RemoteProtocolError, match="ping for 'zz'"):
        feed(m, Ping(43, "zz", "b", B))


def test_indirect_ping_relays_ack_or_nacks_on_timeout() -> None:
    m = make()
    feed(m, IndirectPing(9, "c", C, "b", B, True), src=B)
    ((addr, msgs),) = sent(m)
    assert addr == C and isinstance(msgs[0], Ping)
    relay_seq = msgs[0].seq
    feed(m, Ack(relay_seq), src=C)
    ((addr, msgs),) = sent(m)
    assert addr == B and msgs[0] == Ack(9)
    # Second request: nobody answers, so the requester gets a nack.
    feed(m, IndirectPing(10, "c", C, "b", B, True), src=B)
    sent(m)
    m.handle_timer(0.6)
    nacks = [msg for a, batch in sent(m) if a == B for msg in batch if isinstance(msg, Nack)]
    assert nacks == [Nack(10)]


def test_probe_goes_indirect_then_suspects() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""), Alive(1, "c", C, b""))
    sent(m)
    pings: list[tuple[Addr, Ping]] = []
    while not pings:
        t = m.get_timer()
        m.handle_timer(t)
        pings = [(a, x) for a, batch in sent(m) for x in batch if isinstance(x, Ping)]
    assert len(pings) == 1
    _, ping = pings[0]
    m.handle_timer(t + 0.5)
    indirect = [x for _, batch in sent(m) for x in batch if isinstance(x, IndirectPing)]
    assert len(indirect) == 1 and indirect[0].target == ping.target
    m.handle_timer(t + 1.0)
    assert state_of(m, ping.target) == State.SUSPECT
    assert m.awareness_score == 1  # the helper's nack never came


def test_leave_marks_self_left_and_finishes_after_spreading() -> None:
    m = make()
    feed(m, Alive(1, "b", B, b""))
    m.leave(1.0)
    assert state_of(m, "a") == State.LEFT
    now = 1.0
    while not m.leave_done:
        now += 0.2
        m.handle_timer(now)
        assert now < 30.0
    msgs = [x for _, batch in sent(m) for x in batch]
    assert Dead(0, "a", "a") in msgs


def test_push_pull_merge_treats_remote_dead_as_suspect() -> None:
    a = make()
    b = make("b", B, seed=1)
    feed(a, Alive(1, "c", C, b""))
    feed(b, Alive(1, "c", C, b""), Suspect(1, "c", "x"))
    b.handle_timer(1000.0)
    assert state_of(b, "c") == State.DEAD
    a.merge_remote_state(b.local_state(join=False), 0.0)
    assert state_of(a, "c") == State.SUSPECT
    assert state_of(a, "b") == State.ALIVE


def test_own_failed_probe_of_a_suspect_confirms_and_shortens_the_timer() -> None:
    m = make()
    for i, name in enumerate("bcdef"):
        feed(m, Alive(1, name, Addr("127.0.0.1", 7100 + i), b""))
    feed(m, Suspect(1, "b", "c"))
    # Six members: k = 2; with no confirmation the timer is the maximum (24 s).
    assert m.get_timer() <= 24.0
    feed(m, Suspect(1, "b", "d"))  # first confirmation
    # Our own probe of b fails: that is the second, independent confirmation.
    now = 0.0
    while m.member("b") is not None and m.member("b").state == State.SUSPECT:  # type: ignore[union-attr]
        now = m.get_timer()
        m.handle_timer(now)
        for addr, batch in sent(m):
            # everyone answers except b
            for x in batch:
                if isinstance(x, Ping) and x.target != "b":
                    feed(m, Ack(x.seq), src=addr, now=now)
        assert now < 11.0, "suspicion was not shortened by our own failed probe"
    assert state_of(m, "b") == State.DEAD


_names = st.sampled_from(["a", "b", "c", "d"])
_msgs = st.one_of(
    st.builds(lambda i, n: Alive(i, n, B, b""), st.integers(0, 5), _names),
    st.builds(lambda i, n, s: Suspect(i, n, s), st.integers(0, 5), _names, _names),
    st.builds(lambda i, n, s: Dead(i, n, s), st.integers(0, 5), _names, _names),
)


@given(st.lists(st.tuples(_msgs, st.floats(0.0, 30.0)), max_size=40))
def test_live_count_always_equals_a_recount(steps: list[tuple[PacketMessage, float]]) -> None:
    m = make()
    now = 0.0
    for msg, dt in steps:
        now += dt
        feed(m, msg, now=now)
        m.handle_timer(now)
        recount = sum(1 for x in m.members() if x.state in (State.ALIVE, State.SUSPECT))
        assert m.num_alive() == recount
