"""The broadcast queue's rules: transmit limit, order, invalidation, budget."""

from __future__ import annotations

from meshnode.gossip.queue import BroadcastQueue


def test_each_update_is_sent_limit_times_then_dropped() -> None:
    q = BroadcastQueue()
    q.push(b"a" * 10, key="n1")
    sent = [q.pop_batch(1000, 0, limit=3) for _ in range(5)]
    assert sent == [[b"a" * 10]] * 3 + [[], []]
    assert len(q) == 0


def test_least_sent_first_then_newest_first() -> None:
    q = BroadcastQueue()
    q.push(b"old-update", key="a")
    assert q.pop_batch(1000, 0, limit=5) == [b"old-update"]
    q.push(b"new-update-1", key="b")
    q.push(b"new-update-2", key="c")
    assert q.pop_batch(1000, 0, limit=5) == [b"new-update-2", b"new-update-1", b"old-update"]


def test_newer_update_for_same_key_replaces_older_and_notifies() -> None:
    q = BroadcastQueue()
    done: list[str] = []
    q.push(b"alive-1-xxx", key="n1", on_done=lambda: done.append("first"))
    q.push(b"dead-2-xxxx", key="n1")
    assert done == ["first"]
    assert q.pop_batch(1000, 0, limit=5) == [b"dead-2-xxxx"]


def test_budget_is_respected_and_smaller_items_fill_the_rest() -> None:
    q = BroadcastQueue()
    q.push(b"x" * 50, key="small")
    q.push(b"y" * 200, key="big")
    batch = q.pop_batch(120, 2, limit=5)
    assert batch == [b"x" * 50]
    assert q.pop_batch(300, 2, limit=5) == [b"y" * 200, b"x" * 50]


def test_on_done_fires_when_transmit_limit_reached() -> None:
    q = BroadcastQueue()
    done: list[bool] = []
    q.push(b"leave-notice", key="me", on_done=lambda: done.append(True))
    q.pop_batch(1000, 0, limit=2)
    assert not done
    q.pop_batch(1000, 0, limit=2)
    assert done == [True]


def test_prune_keeps_the_least_sent() -> None:
    q = BroadcastQueue()
    for i in range(10):
        q.push(f"update-{i:02d}".encode(), key=i)
        q.pop_batch(15, 0, limit=100)  # each sent once: ties drop oldest first
    q.prune(3)
    assert len(q) == 3
    assert sorted(q.pop_batch(1000, 0, limit=100)) == [b"update-07", b"update-08", b"update-09"]
