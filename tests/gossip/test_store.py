"""Unit tests of the replicated store: LWW rules, the clock, tombstones, limits, sizes."""

from __future__ import annotations

import pytest

from meshnode.gossip.errors import DecodeError, LocalProtocolError
from meshnode.gossip.store import (
    DIGEST_BUCKETS,
    Entry,
    EntryTooLarge,
    InvalidEntry,
    RemoteEntryTooLarge,
    RemoteInvalidEntry,
    RemoteStoreFull,
    Store,
    StoreFull,
    StoreLimits,
    Version,
)
from meshnode.gossip.store_codec import (
    decode_entry,
    encode_bucket_versions,
    encode_digest,
    encode_entries,
    encode_entry,
)


def live(key: str, lamport: int, node: str, value: bytes = b"v") -> Entry:
    return Entry("kv", key, value, Version(lamport, node))


def dead(key: str, lamport: int, node: str, since: float = 0.0) -> Entry:
    return Entry("kv", key, b"", Version(lamport, node), True, since)


def test_equal_lamport_is_broken_by_node_id() -> None:
    for order in ([live("k", 3, "a", b"A"), live("k", 3, "b", b"B")],) * 2:
        for entries in (order, order[::-1]):
            store = Store("r")
            for entry in entries:
                store.merge(entry)
            assert store.get("kv", "k") == live("k", 3, "b", b"B")


def test_higher_lamport_wins_over_node_id() -> None:
    store = Store("r")
    assert store.merge(live("k", 4, "a", b"A"))
    assert not store.merge(live("k", 3, "z", b"Z"))
    assert store.get("kv", "k") == live("k", 4, "a", b"A")


def test_local_write_after_receiving_a_higher_lamport_gets_a_higher_one() -> None:
    store = Store("me")
    assert store.put("kv", "k", b"1").version == Version(1, "me")
    store.merge(live("other", 41, "peer"))
    assert store.put("kv", "k", b"2").version == Version(42, "me")
    # Even a losing entry advances the clock.
    store.merge(live("other", 10, "a"))
    store.merge(live("k", 99, "peer"))
    store.merge(live("k", 50, "peer"))
    assert store.clock == 99
    assert store.put("kv", "k", b"3").version == Version(100, "me")


def test_tombstone_beats_older_value_and_loses_to_newer() -> None:
    store = Store("r")
    store.merge(live("k", 1, "a"))
    assert store.merge(dead("k", 2, "b", since=5.0))
    assert store.get("kv", "k") is None
    assert store.get("kv", "k", tombstones=True) == dead("k", 2, "b", since=5.0)
    assert not store.merge(live("k", 1, "z"))
    assert store.items("kv") == []
    assert store.merge(live("k", 3, "a", b"back"))
    assert store.get("kv", "k") == live("k", 3, "a", b"back")


def test_same_version_different_content_resolves_the_same_everywhere() -> None:
    """Only after a node lost its data; the content breaks the tie."""
    one, other = live("k", 5, "a", b"x"), live("k", 5, "a", b"y")
    a, b = Store("a"), Store("b")
    a.merge(one)
    a.merge(other)
    b.merge(other)
    b.merge(one)
    assert a.get("kv", "k") == b.get("kv", "k") == other
    assert a.digest() == b.digest()


def test_delete_stamps_wall_time_and_hides_the_key() -> None:
    store = Store("me")
    store.put("kv", "k", b"v")
    tombstone = store.delete("kv", "k", now_wall=1000.0)
    assert tombstone == Entry("kv", "k", b"", Version(2, "me"), True, 1000.0)
    assert store.get("kv", "k") is None
    assert store.items("kv", tombstones=True) == [tombstone]


def test_gc_removes_only_old_tombstones() -> None:
    store = Store("me", StoreLimits(tombstone_max_age_s=100.0))
    store.put("kv", "live", b"v")
    store.delete("kv", "old", now_wall=0.0)
    store.delete("kv", "new", now_wall=60.0)
    index = store.index
    assert store.collect_tombstones(now_wall=99.0) == []
    assert store.collect_tombstones(now_wall=100.0) == [("kv", "old")]
    assert store.get("kv", "old", tombstones=True) is None
    assert store.get("kv", "new", tombstones=True) is not None
    assert store.get("kv", "live") is not None
    assert store.collect_tombstones(now_wall=100.0, max_age_s=10.0) == [("kv", "new")]
    assert len(store) == 1
    assert store.index == index  # not a visible change
    assert store.digest() == _only(store.get("kv", "live")).digest()


def _only(entry: Entry | None) -> Store:
    assert entry is not None
    store = Store("x")
    store.merge(entry)
    return store


def test_restart_keeps_the_clock_past_collected_tombstones() -> None:
    """A restart must not reuse a version that a stale tombstone elsewhere would beat."""
    store = Store("me")
    store.put("kv", "k", b"v")
    store.delete("kv", "k", now_wall=0.0)
    store.collect_tombstones(now_wall=1e9)
    restarted = Store("me")
    restarted.load(list(store.entries()), clock=store.clock)
    assert restarted.put("kv", "k", b"again").version == Version(3, "me")


def test_index_tracks_changes_per_kind() -> None:
    store = Store("me")
    store.put("service", "web", b"1")
    i = store.index
    assert not store.changed_since("service", i)
    store.put("kv", "k", b"1")
    assert not store.changed_since("service", i)
    assert store.changed_since("kv", i)
    store.merge(live("k", 1, "old"))  # loses: no change
    assert store.kind_index("kv") == store.index
    store.delete("service", "web", now_wall=0.0)
    assert store.changed_since("service", i)
    assert store.kind_index("never") == 0


def test_limits_give_clear_local_errors() -> None:
    limits = StoreLimits(
        kind_max_bytes=8, key_max_bytes=8, value_max_bytes=10, store_max_bytes=220, entries_max=3
    )
    store = Store("me", limits)
    with pytest.raises(EntryTooLarge, match=r"value of kv/k is 11 bytes, the limit is 10"):
        store.put("kv", "k", b"x" * 11)
    with pytest.raises(EntryTooLarge, match=r"key 'ééééé'... is 10 bytes, the limit is 8"):
        store.put("kv", "é" * 5, b"")
    with pytest.raises(EntryTooLarge, match="kind is 9 bytes"):
        store.put("k" * 9, "k", b"")
    with pytest.raises(InvalidEntry, match="kind must not be empty"):
        store.put("", "k", b"")
    with pytest.raises(InvalidEntry, match="lone surrogate"):
        store.put("kv", "\ud800", b"")
    assert store.clock == 0  # refused writes do not use a version
    for key in ("a", "b", "c"):
        store.put("kv", key, b"")
    with pytest.raises(StoreFull, match="store holds 3 entries, the limit is 3"):
        store.put("kv", "d", b"")
    store.put("kv", "a", b"0123456789")  # replacing an entry needs no new slot
    with pytest.raises(StoreFull, match=r"store would hold \d+ bytes, the limit is 220"):
        store.put("kv", "b", b"0123456789")
    store.delete("kv", "a", now_wall=0.0)  # shrinking is always allowed
    for error in (EntryTooLarge, StoreFull, InvalidEntry):
        assert issubclass(error, LocalProtocolError)
        assert "\n" not in str(error)


def test_remote_entries_over_limits_are_remote_errors() -> None:
    store = Store("me", StoreLimits(value_max_bytes=4, entries_max=1))
    with pytest.raises(RemoteEntryTooLarge):
        store.merge(live("k", 1, "a", b"12345"))
    with pytest.raises(RemoteInvalidEntry, match="tombstone has an empty value"):
        store.merge(Entry("kv", "k", b"x", Version(1, "a"), True, 0.0))
    with pytest.raises(RemoteInvalidEntry, match="finite"):
        store.merge(Entry("kv", "k", b"", Version(1, "a"), True, None))
    with pytest.raises(RemoteInvalidEntry, match="Lamport time 0"):
        store.merge(live("k", 0, "a"))
    store.merge(live("k", 1, "a"))
    with pytest.raises(RemoteStoreFull):
        store.merge(live("j", 1, "a"))
    with pytest.raises(DecodeError, match=r"Entry\.value: longer than 4 bytes"):
        decode_entry(encode_entry(live("k", 1, "a", b"12345")), limits=store.limits)


def test_messages_are_split_under_max_bytes_and_refuse_what_cannot_fit() -> None:
    store = Store("me")
    for i in range(200):
        store.put("kv", f"key-{i}", b"x" * 50)
    chunks = encode_entries(list(store.entries()), max_bytes=1400)
    assert len(chunks) > 1
    assert all(len(c) <= 1400 for c in chunks)
    versions = encode_bucket_versions(store.bucket_versions(range(DIGEST_BUCKETS)), max_bytes=600)
    assert len(versions) > 1
    assert all(len(c) <= 600 for c in versions)
    with pytest.raises(LocalProtocolError, match="does not fit"):
        encode_entries([live("k", 1, "a", b"x" * 2000)], max_bytes=1400)


def test_digest_size_and_a_small_difference_costs_little() -> None:
    a, b = Store("a"), Store("b")
    for i in range(10_000):
        entry = live(f"service/{i}", i + 1, "n1", b"x" * 40)
        a.merge(entry)
        b.merge(entry)
    assert len(encode_digest(a.digest())) == 2 + 2 + 3 + 8 * DIGEST_BUCKETS
    for i in range(3):
        a.put("kv", f"new-{i}", b"fresh")
    differing = b.diff_request(a.digest())
    assert 1 <= len(differing) <= 3
    bv = b.bucket_versions(differing)
    assert len(bv.versions) < 3 * 80  # ~40 keys a bucket, not 10,000
    assert {(e.kind, e.key) for e in a.entries_newer_than(bv)} == {
        ("kv", f"new-{i}") for i in range(3)
    }
    assert a.wanted(bv) == []
