"""UserEvents: wire round trip, fuzzing, Lamport clock, de-duplication, filters, ring, waits."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence

import cbor2
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshnode.events.user_events import (
    CHANNEL_USER_EVENT,
    DEDUP_WINDOW_LTIMES,
    PAYLOAD_MAX_BYTES,
    RECENT_MAX_EVENTS,
    EventError,
    MalformedEvent,
    UserEvent,
    UserEvents,
    decode_event,
    encode_event,
)


class Recorder:
    """An `EventHandler` that remembers what it was given."""

    def __init__(self) -> None:
        self.events: list[UserEvent] = []

    def submit(self, event: UserEvent) -> None:
        self.events.append(event)


def sample(**kw: object) -> UserEvent:
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "name": "deploy",
        "payload": b"v1.2",
        "ltime": 7,
        "origin": "web1",
        "node_filter": "^web",
        "service_filter": "api",
        "tag_filter": "v1",
    }
    fields.update(kw)
    return UserEvent(**fields)  # type: ignore[arg-type]


def lone(name: str = "n1", **kw: object) -> tuple[UserEvents, list[bytes], Recorder]:
    sent: list[bytes] = []
    handler = Recorder()
    events = UserEvents(name, sent.append, handler=handler, **kw)  # type: ignore[arg-type]
    return events, sent, handler


# ---------------------------------------------------------------- wire


def test_encode_decode_round_trip() -> None:
    event = sample()
    encoded = encode_event(event)
    assert encoded[0] == CHANNEL_USER_EVENT
    assert decode_event(encoded) == event


def test_empty_payload_and_filters_round_trip() -> None:
    event = sample(payload=b"", node_filter="", service_filter="", tag_filter="")
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([2, b"x" * 16, "n", b"", 0, "o", "", "", ""], "version"),
        ([1, b"x" * 15, "n", b"", 0, "o", "", "", ""], "16 bytes"),
        ([1, b"x" * 16, "", b"", 0, "o", "", "", ""], "empty"),
        ([1, b"x" * 16, "n", "text", 0, "o", "", "", ""], "payload"),
        ([1, b"x" * 16, "n", b"", True, "o", "", "", ""], "ltime"),
        ([1, b"x" * 16, "n", b"", -1, "o", "", "", ""], "ltime"),
        ([1, b"x" * 16, "n\x00", b"", 0, "o", "", "", ""], "non-printable"),
        ([1, b"x" * 16, "n", b"", 0, "o", "", ""], "9 fields"),
    ],
)
def test_decode_rejects_bad_fields(body: list[object], reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode_event(bytes([CHANNEL_USER_EVENT]) + cbor2.dumps(body))


def test_decode_rejects_tags_and_trailing_bytes() -> None:
    good = encode_event(sample())
    with pytest.raises(MalformedEvent, match="trailing"):
        decode_event(good + b"\x00")
    tagged = bytes([CHANNEL_USER_EVENT]) + cbor2.dumps(cbor2.CBORTag(1, 5))
    with pytest.raises(MalformedEvent, match="CBOR tag 1 is not allowed"):
        decode_event(tagged)


@given(st.binary(max_size=1200))
def test_on_user_never_raises_on_garbage(data: bytes) -> None:
    events, _, _ = lone()
    mine = events.on_user(bytes([CHANNEL_USER_EVENT]) + data)
    assert mine
    assert events.on_user(data) == (bool(data) and data[0] == CHANNEL_USER_EVENT)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.data())
def test_on_user_never_raises_on_mutations(position: int, byte: int, data: st.DataObject) -> None:
    encoded = bytearray(encode_event(sample()))
    encoded[1 + position % (len(encoded) - 1)] = byte  # not the channel byte
    cut = data.draw(st.integers(min_value=1, max_value=len(encoded)))
    events, _, _ = lone()
    assert events.on_user(bytes(encoded[:cut])) is True
    assert events.rejected + events.delivered + events.filtered_out == 1


def test_other_channels_are_not_ours() -> None:
    events, sent, _ = lone()
    assert events.on_user(b"") is False
    assert events.on_user(b"\x03abc") is False
    assert events.rejected == 0 and sent == []


# ---------------------------------------------------------------- fire


def test_fire_delivers_locally_and_broadcasts_once() -> None:
    events, sent, handler = lone()
    fired = events.fire("deploy", b"v2")
    assert (fired.ltime, fired.origin, fired.payload) == (0, "n1", b"v2")
    assert sent == [encode_event(fired)]
    assert handler.events == [fired]
    assert events.events() == [fired]
    assert events.index == 2
    assert events.clock == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "must not be empty"),
        ({"name": "x" * 129}, "limit is 128"),
        ({"name": "bad\nname"}, "non-printable"),
        ({"payload": b"x" * (PAYLOAD_MAX_BYTES + 1)}, "limit is 512"),
        ({"node_filter": "("}, "not a regular expression"),
        ({"tag_filter": "v1"}, "needs a service filter"),
    ],
)
def test_fire_validates(kwargs: dict[str, object], message: str) -> None:
    events, sent, _ = lone()
    args: dict[str, object] = {"name": "deploy", "payload": b""}
    args.update(kwargs)
    with pytest.raises(EventError, match=message):
        events.fire(**args)  # type: ignore[arg-type]
    assert sent == [] and events.clock == 0


def test_an_event_too_big_for_a_packet_is_refused() -> None:
    events, _, _ = lone()
    with pytest.raises(EventError, match="encoded"):
        events.fire("é" * 128, b"x" * 512, node_filter="ü" * 128, service_filter="a" * 128)


# ---------------------------------------------------------------- two agents


class Link:
    """Delivers each broadcast to every other agent `copies` times: a duplicating network."""

    def __init__(self, copies: int = 2) -> None:
        self.copies = copies
        self.agents: dict[str, UserEvents] = {}
        self.in_flight: list[tuple[str, bytes]] = []

    def add(self, events: UserEvents) -> None:
        self.agents[events.node_name] = events

    def sender(self, name: str) -> Callable[[bytes], None]:
        def send(payload: bytes) -> None:
            for other in self.agents:
                if other != name:
                    self.in_flight += [(other, payload)] * self.copies

        return send

    def pump(self) -> int:
        rounds = 0
        while self.in_flight:
            rounds += 1
            assert rounds < 100, "Too many rounds!"
            batch, self.in_flight = self.in_flight, []
            for target, payload in batch:
                assert self.agents[target].on_user(payload)
        return rounds


def pair(
    services: Sequence[tuple[str, list[str]]] = (),
) -> tuple[Link, UserEvents, UserEvents, Recorder, Recorder]:
    link = Link()
    ra, rb = Recorder(), Recorder()
    a = UserEvents("web1", link.sender("web1"), handler=ra)

    def b_services() -> Iterable[tuple[str, Sequence[str]]]:
        return services

    b = UserEvents(
        "db1",
        link.sender("db1"),
        handler=rb,
        local_services=b_services,
    )
    link.add(a)
    link.add(b)
    return link, a, b, ra, rb


def test_duplicated_delivery_runs_the_handler_once() -> None:
    link, a, b, ra, rb = pair()
    fired = a.fire("deploy", b"go")
    link.pump()
    assert rb.events == [fired]
    assert ra.events == [fired]
    # b saw two copies; its relay came back to a twice: three duplicates in all.
    assert b.duplicates == 1
    assert a.duplicates == 2
    assert b.events() == [fired]


def test_lamport_clock_orders_cause_before_effect() -> None:
    link, a, b, _, _ = pair()
    first = a.fire("one", b"")
    link.pump()
    reply = b.fire("two", b"")
    link.pump()
    assert reply.ltime > first.ltime
    assert a.clock == b.clock == reply.ltime + 1
    assert [e.name for e in a.events()] == ["one", "two"]


def test_events_older_than_the_window_are_dropped() -> None:
    events, _, handler = lone()
    late = sample(ltime=DEDUP_WINDOW_LTIMES * 3)
    events.on_user(encode_event(late))
    assert events.clock == late.ltime + 1
    events.on_user(encode_event(sample(ltime=1, node_filter="")))
    assert events.too_old == 1
    assert [e.id for e in handler.events] == []  # the first had a node filter for ^web
    inside = sample(ltime=late.ltime - 10, node_filter="", service_filter="", tag_filter="")
    events.on_user(encode_event(inside))
    assert handler.events == [inside]


def test_same_ltime_different_ids_are_both_delivered() -> None:
    events, _, handler = lone()
    one = sample(ltime=3, node_filter="", service_filter="", tag_filter="")
    two = sample(ltime=3, node_filter="", service_filter="", tag_filter="")
    for e in (one, two, one):
        events.on_user(encode_event(e))
    assert handler.events == [one, two]
    assert events.duplicates == 1


def test_recent_ring_is_bounded_and_filtered_by_name() -> None:
    events, _, _ = lone()
    for i in range(RECENT_MAX_EVENTS + 10):
        events.fire("even" if i % 2 == 0 else "odd", str(i).encode())
    recent = events.events()
    assert len(recent) == RECENT_MAX_EVENTS
    assert recent[0].payload == b"10"
    assert all(e.name == "odd" for e in events.events("odd"))
    assert len(events.events("odd")) == RECENT_MAX_EVENTS // 2


# ---------------------------------------------------------------- filters


def test_filters_decide_delivery_but_events_are_still_relayed() -> None:
    link, a, b, _, rb = pair(services=[("api", ["v1", "canary"]), ("db", [])])
    cases = [
        ({"node_filter": "^db"}, True),
        ({"node_filter": "^web"}, False),
        ({"service_filter": "^ap"}, True),
        ({"service_filter": "^cache$"}, False),
        ({"service_filter": "api", "tag_filter": "canary"}, True),
        ({"service_filter": "api", "tag_filter": "^v2$"}, False),
        ({"service_filter": "db", "tag_filter": "v1"}, False),
    ]
    for kwargs, delivered in cases:
        rb.events.clear()
        fired = a.fire("f", b"", **kwargs)
        sent_before = len(link.in_flight)
        link.pump()
        assert sent_before > 0
        assert (rb.events == [fired]) is delivered, kwargs
    # b relayed every event, delivered or not: a saw each one come back.
    assert a.duplicates == 2 * len(cases)
    assert b.filtered_out == 4


def test_a_node_without_services_ignores_service_filtered_events() -> None:
    events, sent, handler = lone()
    events.fire("x", b"", service_filter=".*")
    assert handler.events == [] and len(sent) == 1
    assert events.filtered_out == 1


# ---------------------------------------------------------------- waiting


async def test_wait_returns_when_an_event_arrives() -> None:
    events, _, _ = lone()
    start = events.index
    got: list[int] = []

    async def waiter() -> None:
        got.append(await events.wait(start, 10.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.05)
        assert got == []
        events.fire("x", b"")
    assert got == [start + 1]


async def test_wait_times_out_and_answers_an_index_from_before_a_restart() -> None:
    events, _, _ = lone()
    with trio.fail_after(5):
        assert await events.wait(events.index, 0.05) == events.index
        assert await events.wait(events.index + 100, 60.0) == events.index
