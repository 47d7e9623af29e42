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
