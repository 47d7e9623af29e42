"""Member changes counted as serf counts them: joins, failures, leaves, flaps."""

from __future__ import annotations

from meshnode.agent.gossip_events import FLAP_WINDOW_S, MemberEventCounts
from meshnode.gossip import events as ev
from meshnode.gossip.messages import Addr, State

MemberFailed, MemberJoined, MemberLeft = ev.MemberFailed, ev.MemberJoined, ev.MemberLeft


def _member(name: str, state: State, at_s: float) -> ev.Member:
    return ev.Member(name, Addr("10.0.0.1", 7946), b"", 1, state, at_s)


def test_join_fail_leave_and_update_are_counted() -> None:
    counts = MemberEventCounts()
    counts.observe(MemberJoined(_member("a", State.ALIVE, 1.0)))
    counts.observe(MemberJoined(_member("b", State.ALIVE, 1.0)))
    counts.observe(ev.MemberUpdated(_member("a", State.ALIVE, 2.0)))
    counts.observe(MemberFailed(_member("b", State.DEAD, 3.0)))
    counts.observe(MemberLeft(_member("a", State.LEFT, 4.0)))
    counts.observe(ev.UserMessage(b"x", Addr("10.0.0.1", 7946)))
    assert counts.values == {"joined": 2, "failed": 1, "left": 1, "updated": 1, "flapped": 0}


def test_a_member_back_within_the_window_flapped_and_later_did_not() -> None:
    counts = MemberEventCounts()
    counts.observe(MemberFailed(_member("a", State.DEAD, 100.0)))
    counts.observe(MemberJoined(_member("a", State.ALIVE, 100.0 + FLAP_WINDOW_S - 0.1)))
    assert counts.values["flapped"] == 1
    counts.observe(MemberFailed(_member("a", State.DEAD, 200.0)))
    counts.observe(MemberJoined(_member("a", State.ALIVE, 200.0 + FLAP_WINDOW_S)))
    assert counts.values["flapped"] == 1
    # A join after a graceful leave, or after the failed member was reaped, is no flap.
    counts.observe(MemberFailed(_member("b", State.DEAD, 300.0)))
    counts.observe(MemberLeft(_member("b", State.LEFT, 301.0)))
    counts.observe(MemberJoined(_member("b", State.ALIVE, 302.0)))
    counts.observe(MemberFailed(_member("c", State.DEAD, 300.0)))
    counts.observe(ev.MemberReaped("c"))
    counts.observe(MemberJoined(_member("c", State.ALIVE, 302.0)))
    assert counts.values["flapped"] == 1 and counts.values["joined"] == 4
