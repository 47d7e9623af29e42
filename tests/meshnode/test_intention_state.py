"""IntentionState on LocalState: writes, reads, replication between replicas, bad remote values."""

from __future__ import annotations

import itertools
import math

import cbor2
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshnode.gossip.store import Entry, Version
from meshnode.intentions import replica as intention_state
from meshnode.intentions.replica import (
    KIND,
    IntentionExists,
    IntentionRecord,
    IntentionState,
    InvalidCertURI,
    MalformedIntention,
    UnknownIntention,
    decode_value,
    encode_value,
    intention_key,
    service_from_spiffe_uri,
)
from meshnode.intentions.rules import Intention, IntentionError
from meshnode.store.state import LocalState

WEB_URI = "spiffe://c1.mesh/ns/default/dc/dc1/svc/web"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now_s: float = 1_700_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def make(node: str = "n1", clock: Clock | None = None) -> tuple[LocalState, IntentionState]:
    ids = (f"{node}-id-{i}" for i in itertools.count(1))
    local = LocalState(node, wall_clock=clock or Clock())
    return local, IntentionState(local, wall_clock=clock or Clock(), new_id=lambda: next(ids))


def sync(a: LocalState, b: LocalState) -> None:
    """One full exchange both ways, as push/pull would do."""
    b.merge(list(a.store.entries()))
    a.merge(list(b.store.entries()))


def pairs(state: IntentionState) -> list[tuple[str, str, str]]:
    return [(r.source, r.destination, r.intention.action) for r in state.list()]


def test_upsert_get_list_and_the_id_kept_across_updates() -> None:
    clock = Clock()
    local = LocalState("n1")
    state = IntentionState(local, wall_clock=clock, new_id=lambda: "id-1")
    first = state.upsert("web", "db", "allow", "web reads db")
    assert first.id == "id-1"
    assert state.get("web", "db") == first
    clock.now_s += 60
    second = state.upsert("web", "db", "deny")
    assert (second.id, second.created_at_s, second.updated_at_s) == (
        "id-1",
        first.created_at_s,
        first.created_at_s + 60,
    )
    assert state.get("web", "db") == second
    assert pairs(state) == [("web", "db", "deny")]
    create_index, modify_index = state.indexes(second)
    assert 0 < create_index < modify_index == state.index()


def test_create_refuses_an_existing_pair_unless_replace() -> None:
    _, state = make()
    state.create("web", "db", "allow")
    with pytest.raises(IntentionExists, match=r"web => db \(allow\) already exists"):
        state.create("web", "db", "deny")
    assert state.check("web", "db").allowed
    state.create("web", "db", "deny", "now denied", replace=True)
    record = state.get("web", "db")
    assert record is not None
    assert (record.intention.action, record.intention.description) == ("deny", "now denied")


def test_delete_and_unknown_intention() -> None:
    local, state = make()
    state.upsert("web", "db", "deny")
    state.delete("web", "db")
    assert state.get("web", "db") is None
    assert len(state) == 0
    with pytest.raises(UnknownIntention, match="no intention from 'web' to 'db'"):
        state.delete("web", "db")
    assert local.store.get(KIND, intention_key("web", "db"), tombstones=True) is not None


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda s: s.upsert("db*", "web", "allow"), "wildcard '*' must be the whole name"),
        (lambda s: s.upsert("web", "*db", "allow"), "invalid destination"),
        (lambda s: s.upsert("web", "db", "maybe"), "use 'allow' or 'deny'"),
        (lambda s: s.upsert("web", "db", "allow", "x" * 513), "the limit is 512"),
        (lambda s: s.upsert("web", "db", "allow", meta={"": "v"}), "meta key"),
        (lambda s: s.upsert("web", "db", "allow", meta={"k": "v" * 513}), "meta value"),
        (lambda s: s.create("web", "db*", "allow"), "invalid destination"),
        (lambda s: s.delete("web", "d b"), "invalid destination"),
        (lambda s: s.check("web*", "db"), "invalid source"),
        (lambda s: s.match("both", "db"), "use 'source' or 'destination'"),
        (lambda s: s.match("source", "w*"), "invalid source"),
        (lambda s: s.authorize("*", WEB_URI), "authorize a single service"),
        (lambda s: s.authorize("db", "spiffe://c1.mesh/agent/client/dc/dc1/id/n1"), "service ID"),
    ],
)
def test_invalid_input_is_a_typed_one_line_error_and_writes_nothing(
    call: object, fragment: str
) -> None:
    local, state = make()
    with pytest.raises(IntentionError) as caught:
        call(state)  # type: ignore[operator]
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(local.store) == 0


def test_default_policy_allows_until_a_wildcard_deny_exists() -> None:
    _, state = make()
    assert state.check("web", "db").allowed
    assert state.authorize("db", WEB_URI) == (
        True,
        "no intention matched; the default policy allows",
    )
    state.create("*", "*", "deny")  # `meshnode intention create -deny '*' '*'`
    assert not state.check("web", "db").allowed
    assert state.authorize("db", WEB_URI) == (
        False,
        "denied by intention * => * (deny) with precedence 5, the default policy",
    )
    state.upsert("web", "db", "allow")
    assert state.authorize("db", WEB_URI) == (
        True,
        "allowed by intention web => db (allow) with precedence 9",
    )
    assert not state.check("api", "db").allowed
    state.delete("*", "*")
    assert state.check("api", "db").allowed


def test_match_in_evaluation_order() -> None:
    _, state = make()
    for src, dst, action in [("*", "*", "deny"), ("web", "db", "allow"), ("*", "db", "deny")]:
        state.upsert(src, dst, action)
    assert [(r.source, r.destination) for r in state.match("destination", "db")] == [
        ("web", "db"),
        ("*", "db"),
        ("*", "*"),
    ]
    by_source = [(r.source, r.destination) for r in state.match("source", "api")]
    assert by_source == [("*", "db"), ("*", "*")]


def test_replicas_converge_last_writer_wins() -> None:
    a_local, a = make("a")
    b_local, b = make("b")
    a.upsert("web", "db", "allow")
    b.upsert("web", "db", "deny")  # same Lamport time: node "b" breaks the tie
    sync(a_local, b_local)
    assert pairs(a) == pairs(b) == [("web", "db", "deny")]
    assert not a.check("web", "db").allowed
    # A later write on `a` (its clock has seen b's) wins everywhere, keeping b's ID.
    a.upsert("web", "db", "allow")
    sync(a_local, b_local)
    assert pairs(a) == pairs(b) == [("web", "db", "allow")]
    record_a, record_b = a.get("web", "db"), b.get("web", "db")
    assert record_a is not None and record_a == record_b
    assert record_a.id == "b-id-1"


def test_delete_then_recreate_replicates() -> None:
    a_local, a = make("a")
    b_local, b = make("b")
    a.upsert("web", "db", "deny")
    sync(a_local, b_local)
    assert not b.check("web", "db").allowed
    a.delete("web", "db")
    sync(a_local, b_local)
    assert b.get("web", "db") is None and b.check("web", "db").allowed
    b.create("web", "db", "deny", "again")
    sync(a_local, b_local)
    again = a.get("web", "db")
    assert again is not None
    assert (again.id, again.intention.description) == ("b-id-1", "again")
    assert not a.check("web", "db").allowed


def test_changes_update_the_index_in_place_without_a_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_local, a = make("a")
    b_local, b = make("b")
    for i in range(100):
        a.upsert(f"s{i}", "db", "allow")
    sync(a_local, b_local)

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(intention_state, "IntentionIndex", no_rebuild)
    a.upsert("s1", "db", "deny")
    a.delete("s2", "db")
    sync(a_local, b_local)
    assert not b.check("s1", "db").allowed
    assert b.get("s2", "db") is None
    assert len(b) == 99


def _remote(key: str, value: bytes, lamport: int = 100) -> Entry:
    return Entry(KIND, key, value, Version(lamport, "evil"))


def _value(**fields: object) -> bytes:
    base: dict[str, object] = {
        "id": "x",
        "action": "deny",
        "description": "",
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    base.update(fields)
    return cbor2.dumps({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("web\x00db", b"\xff\xff"),
        ("web\x00db", cbor2.dumps(["not", "a", "map"])),
        ("web\x00db", _value(action="maybe")),
        ("web\x00db", _value(id="")),
        ("web\x00db", _value(id=None)),
        ("web\x00db", _value(created_at="yesterday")),
        ("web\x00db", _value(updated_at=math.inf)),
        ("web\x00db", _value(created_at=True)),
        ("web\x00db", _value(description=7)),
        ("web\x00db", _value(meta={"k": 1})),
        ("web\x00db", _value(meta=[1])),
        ("web\x00db", _value(id=cbor2.CBORTag(1, 0))),
        ("web\x00db", _value() + b"\x00"),
        ("web\x00db", b"\x9f\xff"),  # indefinite length
        ("web\x00db", cbor2.dumps({"a": [[[[1]]]]})),
        ("web\x00db", b"\xa0" * 70_000),
        ("webdb", _value()),
        ("web*\x00db", _value()),
        ("web\x00", _value()),
    ],
)
def test_malformed_remote_values_are_skipped_and_counted(key: str, value: bytes) -> None:
    local, state = make()
    state.upsert("web", "db", "allow")
    local.merge([_remote(key, value)])
    assert state.malformed_total == 1
    if key == "web\x00db":
        # The store moved past the old rule; an unreadable value is no rule.
        assert state.get("web", "db") is None
    # A good value at the same key later is taken again.
    local.merge([_remote("web\x00db", _value(), lamport=200)])
    assert not state.check("web", "db").allowed


def test_unknown_fields_from_a_newer_agent_are_ignored() -> None:
    local, state = make()
    local.merge([_remote("web\x00db", _value(permissions=[{"http": {}}]))])
    assert state.malformed_total == 0
    assert not state.check("web", "db").allowed


def test_built_after_load_sees_what_the_store_holds() -> None:
    local, state = make()
    state.upsert("web", "db", "deny")
    again = IntentionState(local)
    assert not again.check("web", "db").allowed


records = st.builds(
    IntentionRecord,
    intention=st.builds(
        Intention,
        source=st.sampled_from(["web", "*", "db.v2"]),
        destination=st.sampled_from(["db", "*"]),
        action=st.sampled_from(["allow", "deny"]),
        description=st.text(max_size=50),
    ),
    id=st.uuids().map(str),
    created_at_s=st.floats(0, 4e9),
    updated_at_s=st.floats(0, 4e9),
    meta=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=4),
)


@given(records)
def test_value_codec_round_trips(record: IntentionRecord) -> None:
    assert decode_value(record.source, record.destination, encode_value(record)) == record


@pytest.mark.parametrize(
    ("uri", "service"),
    [
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web", "web"),
        ("spiffe://11111111-2222.consul/ns/default/dc/east-1/svc/db.v2", "db.v2"),
    ],
)
def test_spiffe_service_ids(uri: str, service: str) -> None:
    assert service_from_spiffe_uri(uri) == service


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "web",
        "https://c1.mesh/ns/default/dc/dc1/svc/web",
        "spiffe://C1.mesh/ns/default/dc/dc1/svc/web",
        "spiffe://c1.mesh:8443/ns/default/dc/dc1/svc/web",
        "spiffe://user@c1.mesh/ns/default/dc/dc1/svc/web",
        "spiffe:///ns/default/dc/dc1/svc/web",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/web/extra",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/",
        "spiffe://c1.mesh/ns//dc/dc1/svc/web",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/web?x=1",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/web#f",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/web\n",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/w%65b",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/*",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/-web",
        "spiffe://c1.mesh/agent/client/dc/dc1/id/node1",
        "spiffe://c1.mesh/ns/default/dc/dc1/svc/" + "a" * 3000,
    ],
)
def test_spiffe_parser_is_strict(uri: str) -> None:
    with pytest.raises(IntentionError) as caught:
        service_from_spiffe_uri(uri)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, InvalidCertURI)


def test_malformed_is_a_remote_error() -> None:
    from meshnode.gossip.errors import RemoteProtocolError

    assert issubclass(MalformedIntention, RemoteProtocolError)
    assert not issubclass(MalformedIntention, IntentionError)


async def test_wait_wakes_on_a_change_and_times_out_otherwise() -> None:
    _, state = make()
    start = state.index()
    assert await state.wait(start, 0.05) == start

    async def write_later() -> None:
        await trio.sleep(0.01)
        state.upsert("web", "db", "deny")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_later)
        with trio.fail_after(5):
            woke = await state.wait(start, 60)
    assert woke > start == 0


# --- IDs ------------------------------------------------------------------------------------


def test_ids_find_the_same_intention_on_every_replica() -> None:
    a_local, a = make("a")
    b_local, b = make("b")
    a.upsert("web", "db", "deny")
    sync(a_local, b_local)
    found = b.get_by_id("a-id-1")
    assert found is not None and (found.source, found.destination) == ("web", "db")
    b.update_by_id("a-id-1", Intention("api", "db", "allow", "renamed"))
    sync(a_local, b_local)
    for state in (a, b):
        moved = state.get_by_id("a-id-1")
        assert moved is not None and (moved.source, moved.intention.action) == ("api", "allow")
        assert state.get("web", "db") is None
    a.delete_by_id("a-id-1")
    sync(a_local, b_local)
    assert a.get_by_id("a-id-1") is None and b.get_by_id("a-id-1") is None
    with pytest.raises(UnknownIntention, match="no intention with ID 'a-id-1'"):
        b.delete_by_id("a-id-1")
    a.upsert("web", "db", "deny")
    with pytest.raises(IntentionError, match="the limit is 512"):
        a.update_by_id("a-id-2", Intention("web", "db", "deny", "d" * 513))
    with pytest.raises(UnknownIntention):
        b.update_by_id("a-id-1", Intention("web", "db", "allow"))


def test_an_id_reused_by_a_remote_writer_answers_the_same_pair_everywhere() -> None:
    """Two values with one ID (only a buggy or hostile writer makes them): no flip-flop."""
    entries = []
    for source in ("web", "api"):
        record = IntentionRecord(Intention(source, "db", "deny"), "dup", 1.0, 1.0)
        entries.append(
            Entry(KIND, intention_key(source, "db"), encode_value(record), Version(1, "x"))
        )
    for order in (entries, entries[::-1]):
        local, state = make()
        local.merge(order)
        found = state.get_by_id("dup")
        assert found is not None and found.source == "api"
        state.delete("api", "db")
        again = state.get_by_id("dup")
        assert again is not None and again.source == "web"


def test_descriptions_stored_by_older_agents_up_to_1024_characters_still_read() -> None:
    """The write limit became Consul's 512; replicated values up to 1 KiB stay readable."""
    record = IntentionRecord(Intention("web", "db", "deny", "d" * 1024), "old", 1.0, 1.0)
    assert decode_value("web", "db", encode_value(record)).intention.description == "d" * 1024
    with pytest.raises(MalformedIntention):
        long = IntentionRecord(Intention("web", "db", "deny", "d" * 1025), "old", 1.0, 1.0)
        decode_value("web", "db", encode_value(long))
