"""The replication core's decisions (gossip/replication.py): entries and bytes in, no I/O."""

from __future__ import annotations

import random
from collections import Counter

import cbor2
import pytest

from meshnode.gossip import store_codec
from meshnode.gossip.messages import Addr
from meshnode.gossip.replication import (
    CHANNEL_STORE_ENTRY,
    CHANNEL_STORE_NOTICE,
    Fetch,
    Replication,
    ReplicationConfig,
)
from meshnode.gossip.store import Entry, Store, Version

ME = Addr("10.0.0.1", 7946)
PEER = Addr("10.0.0.2", 7946)
DEFAULTS = ReplicationConfig()


def core(
    name: str = "n1", config: ReplicationConfig = DEFAULTS, seed: int = 1
) -> tuple[Replication[int], Counter[str]]:
    counts: Counter[str] = Counter()

    def count(what: str, amount: int) -> None:
        counts[what] += amount

    rules: Replication[int] = Replication(
        Store(name), rng=random.Random(seed), local_addr=ME, config=config, count=count
    )
    return rules, counts


def entry_payload(entry: Entry) -> bytes:
    return bytes([CHANNEL_STORE_ENTRY]) + store_codec.encode_entry(entry)


def test_a_small_write_is_broadcast_whole_keyed_by_kind_and_key() -> None:
    rules, counts = core()
    entry = rules.store.put("kv", "a", b"1")
    (b,) = rules.local_writes([entry])
    assert b.payload == entry_payload(entry)
    assert b.key == ("store", "kv", "a")
    assert counts["broadcast.entry"] == 1


def test_a_big_write_is_broadcast_as_a_notice_naming_us() -> None:
    rules, counts = core()
    entry = rules.store.put("kv", "big", bytes(5000))
    (b,) = rules.local_writes([entry])
    assert b.payload[0] == CHANNEL_STORE_NOTICE
    assert cbor2.loads(b.payload[1:]) == [
        "kv",
        "big",
        entry.version.lamport,
        "n1",
        ME.host,
        ME.port,
    ]
    assert counts["broadcast.notice"] == 1


def test_a_write_whose_notice_does_not_fit_is_left_to_anti_entropy() -> None:
    rules, counts = core(config=ReplicationConfig(broadcast_max_bytes=40))
    entry = rules.store.put("kv", "k" * 60, b"1")
    assert rules.local_writes([entry]) == []
    assert counts["broadcast.skipped"] == 1


def test_news_is_merged_and_relayed_once_and_a_duplicate_is_not() -> None:
    writer, _ = core("n2")
    rules, counts = core()
    entry = writer.store.put("kv", "a", b"1")
    first = rules.receive_user(entry_payload(entry))
    assert first is not None
    assert first.changed == [entry]
    assert [b.payload for b in first.broadcasts] == [entry_payload(entry)]
    again = rules.receive_user(entry_payload(entry))
    assert again is not None and again.changed == [] and again.broadcasts == []
    assert counts["relayed"] == 1


def test_an_older_version_is_neither_merged_nor_relayed() -> None:
    writer, _ = core("n2")
    rules, _ = core()
    old = writer.store.put("kv", "a", b"old")
    new = writer.store.put("kv", "a", b"new")
    rules.receive_user(entry_payload(new))
    out = rules.receive_user(entry_payload(old))
    assert out is not None and out.changed == [] and out.broadcasts == []
    assert rules.store.get("kv", "a") == new


def test_anti_entropy_merges_are_not_relayed() -> None:
    writer, _ = core("n2")
    rules, _ = core()
    entry = writer.store.put("kv", "a", b"1")
    out = rules.receive_entries([entry], relay=False)
    assert out.changed == [entry] and out.broadcasts == []


def test_other_channels_are_not_ours_and_garbage_is_rejected_not_raised() -> None:
    rules, counts = core()
    assert rules.receive_user(b"") is None
    assert rules.receive_user(b"\x01keyring") is None
    bad = [
        bytes([CHANNEL_STORE_ENTRY]) + b"\xff\x00",
        bytes([CHANNEL_STORE_NOTICE]) + b"\x83\x01\x02",
        bytes([CHANNEL_STORE_NOTICE]) + cbor2.dumps(["kv", "k", 1, "n2", "h", 0]),
        bytes([CHANNEL_STORE_ENTRY])
        + store_codec.encode_entry(Entry("kv", "k", b"", Version(1, "n")))[:-1],
    ]
    for payload in bad:
        out = rules.receive_user(payload)
        assert out is not None and len(out.rejected) == 1 and not out.changed
    assert counts["rejected"] == len(bad)
    # A well-formed message with an invalid entry: the entry is dropped.
    out = rules.receive_entries([Entry("kv", "k", b"v", Version(0, "n2"))], relay=True)
    assert out.changed == [] and len(out.rejected) == 1


def notice(kind: str, key: str, lamport: int, node: str, origin: Addr) -> bytes:
    return bytes([CHANNEL_STORE_NOTICE]) + cbor2.dumps(
        [kind, key, lamport, node, origin.host, origin.port]
    )


def test_a_notice_fetches_once_per_key_until_the_fetch_ends() -> None:
    rules, _ = core()
    out = rules.receive_user(notice("kv", "big", 5, "n2", PEER))
    assert out is not None and out.fetches == [Fetch(PEER, "kv", "big")]
    second = rules.receive_user(notice("kv", "big", 6, "n2", PEER))
    assert second is not None and second.fetches == []  # one at a time
    rules.fetch_done(out.fetches[0])
    third = rules.receive_user(notice("kv", "big", 6, "n2", PEER))
    assert third is not None and third.fetches == [Fetch(PEER, "kv", "big")]


def test_a_notice_for_what_we_have_or_from_ourselves_fetches_nothing() -> None:
    rules, _ = core()
    entry = rules.store.put("kv", "a", b"1")
    v = entry.version
    for payload in (notice("kv", "a", v.lamport, v.node, PEER), notice("kv", "b", 9, "n1", ME)):
        out = rules.receive_user(payload)
        assert out is not None and out.fetches == []


def test_pick_peers_gives_distinct_alive_members_and_finds_a_rare_one() -> None:
    rules, _ = core()
    alive = {3, 5, 8}
    for _ in range(50):
        picked = rules.pick_peers(range(10), alive.__contains__, 2)
        assert len(picked) == 2 and len(set(picked)) == 2 and set(picked) <= alive
    # One alive member among 10,000: the random draws miss it, the exact pick does not.
    assert rules.pick_peers(range(10_000), lambda i: i == 4321, 1) == [4321]
    assert rules.pick_peers(range(10), lambda i: False, 3) == []
    assert rules.pick_peers([], lambda i: True, 3) == []


def test_the_same_seed_makes_the_same_choices() -> None:
    a, _ = core(seed=9)
    b, _ = core(seed=9)
    assert [a.anti_entropy_delay_s() for _ in range(5)] == [
        b.anti_entropy_delay_s() for _ in range(5)
    ]
    assert a.pick_peers(range(100), lambda i: True, 3) == b.pick_peers(
        range(100), lambda i: True, 3
    )


def test_the_periodic_round_is_jittered_around_the_interval() -> None:
    rules, _ = core(config=ReplicationConfig(anti_entropy_interval_s=10.0))
    delays = [rules.anti_entropy_delay_s() for _ in range(500)]
    assert all(5.0 <= d < 15.0 for d in delays)
    assert min(delays) < 6.0 and max(delays) > 14.0


def test_rounds_beyond_the_bound_are_skipped_and_counted() -> None:
    rules, counts = core(config=ReplicationConfig(concurrent_exchanges_max=2))
    assert rules.begin_exchange() and rules.begin_exchange()
    assert not rules.begin_exchange()
    assert counts["anti_entropy.skipped"] == 1
    rules.end_exchange(ok=True)
    assert rules.begin_exchange()
    assert counts["anti_entropy.started"] == 3 and counts["anti_entropy.done"] == 1


def test_a_returning_member_starts_a_round_and_a_newcomer_does_not() -> None:
    rules, _ = core()
    assert not rules.member_joined("n2")  # a newcomer reconciles by itself
    rules.member_departed("n2")
    assert rules.member_joined("n2")  # back from failure or leave
    assert not rules.member_joined("n2")
    rules.member_departed("n3")
    rules.member_reaped("n3")  # forgotten: the set stays bounded
    assert not rules.member_joined("n3")


@pytest.mark.parametrize("members", [0, 1, 5])
def test_a_join_reconciles_with_one_alive_member(members: int) -> None:
    rules, _ = core()
    peers = rules.after_join(range(members), lambda i: True)
    assert len(peers) == min(members, 1)


def test_only_security_kinds_are_pushed() -> None:
    rules, _ = core()
    entries = [rules.store.put(kind, "k", b"v") for kind in ("kv", "intention", "revocation", "ca")]
    assert [e.kind for e in rules.push_entries(entries)] == ["intention", "revocation", "ca"]


def test_a_push_goes_to_distinct_alive_peers_within_the_bound() -> None:
    config = ReplicationConfig(push_peers=3, pushes_concurrent_max=4)
    rules, counts = core(config=config)
    deny = [rules.store.put("intention", "web/db", b"deny")]
    alive = {1, 2, 4, 6, 7}
    first = rules.push_targets(deny, range(8), alive.__contains__)
    assert len(first) == 3 and len(set(first)) == 3 and set(first) <= alive
    # One slot left: one push now, two skipped (gossip and anti-entropy carry the write).
    assert len(rules.push_targets(deny, range(8), alive.__contains__)) == 1
    assert counts["push.skipped"] == 2
    assert rules.push_targets(deny, range(8), alive.__contains__) == []
    rules.push_done(ok=True)
    assert len(rules.push_targets(deny, range(8), alive.__contains__)) == 1
    assert counts["push.started"] == 5 and counts["push.ok"] == 1
    assert rules.push_targets([], range(8), alive.__contains__) == []


def test_after_a_restart_the_first_join_reconciles_with_several_peers() -> None:
    config = ReplicationConfig(restart_exchange_peers=6, concurrent_exchanges_max=4)
    rules, counts = core(config=config)
    rules.loaded(1200)
    peers = rules.after_join(range(10), lambda i: True)
    assert len(peers) == 4  # the bound; two more wait for a free slot
    for _ in peers:
        assert rules.begin_exchange()
    queued = [rules.end_exchange(ok=True), rules.end_exchange(ok=True)]
    assert rules.end_exchange(ok=True) is None
    assert len(set(peers) | {q for q in queued if q is not None}) == 6
    assert counts["anti_entropy.restart"] == 6
    # Later joins (a healed partition) are ordinary: one round.
    assert len(rules.after_join(range(10), lambda i: True)) == 1


def test_a_first_boot_reconciles_with_one_peer() -> None:
    rules, _ = core()
    rules.loaded(0)
    assert len(rules.after_join(range(10), lambda i: True)) == 1
