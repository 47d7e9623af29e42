"""ChangeTracker: indexes rise on every change, waits wake on their topics only."""

from __future__ import annotations

import trio
import trio.testing

from meshnode.store.state import TOPIC_MEMBERS, LocalState, NodeInfo, StaticNodes


def test_indexes_listeners_and_tombstones() -> None:
    state = LocalState("n1")
    seen: list[list[str]] = []
    state.tracker.subscribe("service", lambda entries: seen.append([e.key for e in entries]))
    state.put("service", "n1/web", b"1")
    first = state.tracker.entry_indexes("service", "n1/web")
    state.put("kv", "x", b"1")  # another kind: no listener call
    state.put("service", "n1/web", b"2")
    create, modify = state.tracker.entry_indexes("service", "n1/web")
    assert create == first[0] and modify > first[1]
    state.delete_many("service", ["n1/web"])
    assert state.tracker.entry_indexes("service", "n1/web")[0] == 0  # gone
    assert seen == [["n1/web"], ["n1/web"], ["n1/web"]]
    assert state.tracker.topic_index("service") > state.tracker.topic_index("kv")


async def test_wait_wakes_on_any_of_its_topics_and_not_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state = LocalState("n1")
    nodes = StaticNodes([NodeInfo("n1", "127.0.0.1", "alive")], state.tracker)
    start = state.tracker.index
    woke: list[tuple[float, int]] = []

    async def waiter() -> None:
        got = await state.tracker.wait(("service", TOPIC_MEMBERS), start, 60.0)
        woke.append((trio.current_time(), got))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1.0)
        state.put("kv", "x", b"1")  # not a topic the waiter reads
        await trio.sleep(1.0)
        assert woke == []
        nodes.set(NodeInfo("n1", "127.0.0.1", "failed"))
    assert woke and woke[0][0] == 2.0 and woke[0][1] > start
    # Nothing new: the wait runs out and answers the same index.
    again = await state.tracker.wait(("service", TOPIC_MEMBERS), woke[0][1], 5.0)
    assert again == woke[0][1] and trio.current_time() == 7.0
    # An index from before a restart (above ours) answers at once.
    assert await state.tracker.wait("service", state.tracker.index + 50, 60.0) == 0
    assert trio.current_time() == 7.0


def test_merge_applies_remote_entries_once() -> None:
    a, b = LocalState("a"), LocalState("b")
    entry = a.put("intention", "web\x00db", b"deny")
    assert b.merge([entry, entry]) == 1
    assert b.merge([entry]) == 0
    got = b.store.get("intention", "web\x00db")
    assert got is not None and got.value == b"deny"
