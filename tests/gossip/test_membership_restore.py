"""`Membership.restore`: a converged member list loaded quietly (no events, no gossip)."""

from __future__ import annotations

import random

import pytest

from meshnode.gossip.errors import LocalProtocolError
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Addr, NodeState, State

SEED = 20261122


def _core(name: str = "a") -> Membership:
    return Membership(name=name, addr=Addr("10.0.0.1", 7946), rng=random.Random(SEED), now=0.0)


def test_restore_loads_members_quietly_and_probes_them() -> None:
    core = _core()
    snapshot = [
        NodeState("a", Addr("10.0.0.1", 7946), b"", 5, State.DEAD),  # ourselves: skipped
        NodeState("b", Addr("10.0.0.2", 7946), b"m", 3, State.ALIVE),
        NodeState("c", Addr("10.0.0.3", 7946), b"", 1, State.SUSPECT),
        NodeState("d", Addr("10.0.0.4", 7946), b"", 2, State.DEAD),
    ]
    assert core.restore(snapshot, 1.0) == 3
    assert core.restore(snapshot, 2.0) == 0  # known members are left as they are
    states = {m.name: (m.state, m.incarnation) for m in core.members()}
    assert states == {
        "a": (State.ALIVE, 0),
        "b": (State.ALIVE, 3),
        "c": (State.ALIVE, 1),
        "d": (State.DEAD, 2),
    }
    assert core.num_alive() == 3
    assert core.next_event() is None
    assert core.pending_broadcasts() == 0
    # The first probe round covers the restored live members.
    targets: set[str] = set()
    while (now := core.get_timer()) < 20.0:
        core.handle_timer(now)
        for addr, _data in core.packets_to_send():
            targets.add(addr.host)
    assert {"10.0.0.2", "10.0.0.3"} <= targets


def test_restore_refuses_oversized_metadata() -> None:
    core = _core()
    with pytest.raises(LocalProtocolError):
        core.restore([NodeState("b", Addr("10.0.0.2", 7946), b"x" * 513, 0, State.ALIVE)], 0.0)


def _first_push_pull_s(core: Membership, until_s: float) -> float | None:
    """When the core first asks for a periodic push/pull, driving only its timers."""
    while (now := core.get_timer()) < until_s:
        core.handle_timer(now)
        core.packets_to_send()
        if core.push_pulls_to_start():
            return now
    return None


def test_a_restored_core_pushes_pulls_within_the_interval_scaled_to_its_size() -> None:
    # 100 members: push_pull_interval_s(30, 100) = 90 s, drawn U(0, 1) x 90 s
    # rather than the joiner's U(1, 2) x 30 s, so a restarted converged cluster
    # starts at its steady-state rate of exchanges instead of all within a minute.
    snapshot = [
        NodeState(f"r{i}", Addr(f"10.0.1.{i + 1}", 7946), b"", 0, State.ALIVE) for i in range(99)
    ]
    firsts: list[float] = []
    for seed in range(40):
        core = Membership(name="me", addr=Addr("10.0.0.1", 7946), rng=random.Random(seed), now=0.0)
        core.restore(snapshot, 0.0)
        first = _first_push_pull_s(core, 200.0)
        assert first is not None
        firsts.append(first)
    assert max(firsts) < 90.0
    assert min(firsts) < 30.0  # before the earliest unscaled draw


def test_restoring_nothing_keeps_the_joiners_schedule() -> None:
    core = _core()
    before = core.get_timer()
    assert core.restore([], 0.0) == 0
    assert core.get_timer() == before
