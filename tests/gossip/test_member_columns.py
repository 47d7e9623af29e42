"""The member columns and the shared name table: cores that disagree, big incarnations, reuse."""

from __future__ import annotations

import gc
import random

from meshnode.gossip.codec import decode_push_pull, encode_push_pull
from meshnode.gossip.config import GossipConfig
from meshnode.gossip.membership import Membership
from meshnode.gossip.messages import Addr, Alive, Dead, NodeState, State
from meshnode.gossip.names import NameSlots

SEED = 20261122


def _core(name: str, config: GossipConfig | None = None) -> Membership:
    return Membership(
        name=name, addr=Addr("10.0.0.1", 7946), rng=random.Random(SEED), now=0.0, config=config
    )


def _alive(core: Membership, msg: Alive, now: float = 0.0) -> None:
    core._apply_alive(msg, now)


def test_two_cores_keep_their_own_view_of_one_member() -> None:
    a, b = _core("col-a"), _core("col-b")
    _alive(a, Alive(1, "col-x", Addr("10.0.0.9", 7946), b"old"))
    _alive(b, Alive(1, "col-x", Addr("10.0.0.9", 7946), b"old"))
    # b hears of a newer incarnation with a new address and metadata; a does not.
    _alive(b, Alive(2, "col-x", Addr("10.0.0.10", 7000), b"new"))
    ma, mb = a.member("col-x"), b.member("col-x")
    assert ma is not None and mb is not None
    assert (ma.addr, ma.meta, ma.incarnation) == (Addr("10.0.0.9", 7946), b"old", 1)
    assert (mb.addr, mb.meta, mb.incarnation) == (Addr("10.0.0.10", 7000), b"new", 2)
    # The push/pull between them carries each view, and a then takes b's.
    a.merge_remote_state(b.local_state(join=False), 1.0)
    ma = a.member("col-x")
    assert ma is not None and (ma.addr, ma.meta, ma.incarnation) == (
        Addr("10.0.0.10", 7000),
        b"new",
        2,
    )


def test_incarnations_beyond_32_bits_are_exact() -> None:
    core = _core("col-big")
    big = 2**40 + 7
    _alive(core, Alive(big, "col-y", Addr("10.0.0.2", 7946), b""))
    _alive(core, Alive(2**32 - 2, "col-y", Addr("10.0.0.2", 7946), b"stale"))  # older: ignored
    m = core.member("col-y")
    assert m is not None and (m.incarnation, m.meta) == (big, b"")
    _alive(core, Alive(2**64 - 1, "col-y", Addr("10.0.0.2", 7946), b"max"))
    m = core.member("col-y")
    assert m is not None and m.incarnation == 2**64 - 1
    state = core.local_state(join=False)
    assert {ns.node: ns.incarnation for ns in state.nodes}["col-y"] == 2**64 - 1
    assert decode_push_pull(encode_push_pull(state), max_bytes=1 << 20) == state
    # Back below the sentinel after a reap and a rejoin.
    core._apply_dead(Dead(2**64 - 1, "col-y", "col-y"), 1.0)
    core._reap(1.0 + core.config.dead_reap_s)
    assert core.member("col-y") is None
    _alive(core, Alive(3, "col-y", Addr("10.0.0.2", 7946), b""), 2.0 + core.config.dead_reap_s)
    m = core.member("col-y")
    assert m is not None and m.incarnation == 3
    # Our own incarnation can be big too (a refutation of a big accusation).
    core._apply_alive(Alive(2**33, "col-big", Addr("10.0.0.1", 7946), b""), 3.0)
    assert core.incarnation == 2**33 + 1


def test_member_order_is_the_order_learnt_and_a_rejoin_goes_last() -> None:
    core = _core("col-o", GossipConfig(dead_reap_s=10.0))
    for name in ("col-o3", "col-o1", "col-o2"):
        _alive(core, Alive(1, name, Addr("10.0.0.3", 7946), b""))
    assert [m.name for m in core.members()] == ["col-o", "col-o3", "col-o1", "col-o2"]
    core._apply_dead(Dead(1, "col-o3", "col-x"), 1.0)
    core._reap(20.0)
    _alive(core, Alive(2, "col-o3", Addr("10.0.0.3", 7946), b""), 21.0)
    assert [m.name for m in core.members()] == ["col-o", "col-o1", "col-o2", "col-o3"]


def test_restore_shares_the_list_and_keeps_the_order() -> None:
    nodes = [
        NodeState(f"col-r{i}", Addr("10.0.1.1", 7000 + i), b"", i, State.ALIVE) for i in range(50)
    ]
    a, b = _core("col-r7"), _core("col-rx")
    assert a.restore(nodes, 0.0) == 49
    assert b.restore(nodes, 0.0) == 50
    assert [m.name for m in b.members()][1:] == [ns.node for ns in nodes]
    assert [(ns.node, ns.incarnation) for ns in b.local_state(join=False).nodes][1:] == [
        (ns.node, ns.incarnation) for ns in nodes
    ]


class _Owner:
    """Stands for a core: the table only needs something it can hold weakly."""


def test_slots_no_core_marks_are_freed_and_reused() -> None:
    table = NameSlots()
    markers = bytearray(4096)
    owner = _Owner()
    table.register(owner, markers)
    for i in range(1024):
        slot = table.intern(f"n{i}")
        markers[slot] = 1 if i < 10 else 0  # only the first ten are members somewhere
    assert len(table) == 1024
    reused = table.intern("fresh")  # the 1025th name sweeps first
    assert len(table) == 11
    assert reused < 1024 and table.name(reused) == "fresh"
    assert all(table.slot_of[f"n{i}"] == i for i in range(10))


def test_a_dropped_core_stops_marking_its_slots() -> None:
    table = NameSlots()
    owner = _Owner()
    markers = bytearray(2048)
    table.register(owner, markers)
    for i in range(1024):
        markers[table.intern(f"d{i}")] = 1
    del owner
    gc.collect()
    table.intern("after")
    assert len(table) == 1


def test_a_batch_never_gives_two_names_one_slot() -> None:
    table = NameSlots()
    owner = _Owner()
    table.register(owner, bytearray(4096))  # marks nothing: every slot is free to sweep
    for i in range(1000):
        table.intern(f"b{i}")
    names = [f"b{i}" for i in range(500)] + [f"c{i}" for i in range(600)]
    slots = table.intern_many(names)
    assert len(set(slots)) == len(names)
    assert [table.name(s) for s in slots] == names
