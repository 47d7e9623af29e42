"""User events: serf's best-effort broadcasts with a Lamport time, in Consul's shapes.

Rules that live here:
- An event is gossiped as one User payload: the channel byte 0x05, then strict
  CBOR ``[version, id (16 bytes), name, payload, ltime, origin, node filter,
  service filter, tag filter]``. It must fit one gossip packet, hence the
  limits below (serf's 512-byte user event payload).
- The event clock is a Lamport clock (serf's ``eventClock``): a fired event
  takes the current time and advances it; a received one is witnessed.
- De-duplication is serf's: a ring of ``DEDUP_WINDOW_LTIMES`` slots indexed by
  ltime, each remembering the ids seen at that ltime. An event older than the
  window is dropped as too old (its slot has been reused).
- The gossip core does not relay User payloads, so, as serf does, each agent
  re-broadcasts an event the first time it sees it, whether or not its
  filters select this node; only delivery (the recent list and the handler)
  depends on the filters.
- Remote bytes never raise: a malformed payload is dropped and counted.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import cbor2
import trio

from ..gossip.strict_cbor import load_strict
from ..logs import log

__all__ = [
    "CHANNEL_USER_EVENT",
    "DEDUP_WINDOW_LTIMES",
    "ENCODED_MAX_BYTES",
    "FILTER_MAX_CHARS",
    "NAME_MAX_CHARS",
    "PAYLOAD_MAX_BYTES",
    "RECENT_MAX_EVENTS",
    "EventError",
    "EventHandler",
    "MalformedEvent",
    "UserEvent",
    "UserEvents",
    "decode_event",
    "encode_event",
]

_log = logging.getLogger("meshnode.events")

# First byte of a gossip User payload (keyring 0x01/0x02, store 0x03/0x04).
CHANNEL_USER_EVENT = 0x05
# The wire layout's version; a receiver drops versions it does not know.
WIRE_VERSION = 1
# Consul's event names are short identifiers; 128 leaves room for namespacing.
NAME_MAX_CHARS = 128
# serf's UserEventSizeLimit: an event has to fit one gossip packet.
PAYLOAD_MAX_BYTES = 512
# Filters are regular expressions (Consul's); long ones are a mistake or an attack.
FILTER_MAX_CHARS = 128
# The replicator's broadcast_max_bytes: a 1,400-byte packet must also carry the
# User and compound headers, the encryption envelope and membership updates.
ENCODED_MAX_BYTES = 1000
# serf's default EventBuffer: how many ltimes back duplicates are recognised.
DEDUP_WINDOW_LTIMES = 512
# Consul's agent keeps the last 256 user events for /v1/event/list.
RECENT_MAX_EVENTS = 256
# The event JSON's Version (Consul's UserEvent.Version).
EVENT_VERSION = 1
_NODE_NAME_MAX_CHARS = 256
_UUID_BYTES = 16


class EventError(ValueError):
    """A local caller's event is invalid (bad name, payload too big, bad filter)."""


class MalformedEvent(ValueError):
    """A remote event payload is malformed; it is dropped and counted."""


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One user event; `id` is a UUID string, `ltime` the event clock at its firing."""

    id: str
    name: str
    payload: bytes
    ltime: int
    origin: str
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""


class EventHandler(Protocol):
    """Runs something for each delivered event; must return at once (it may queue)."""

    def submit(self, event: UserEvent) -> None: ...


# ---------------------------------------------------------------- validation


def _check_text(value: str, what: str, max_chars: int, *, empty: bool) -> None:
    if not value and not empty:
        raise EventError(f"{what} must not be empty")
    if len(value) > max_chars:
        raise EventError(f"{what} is {len(value)} characters, the limit is {max_chars}")
    if not value.isprintable():
        raise EventError(f"{what} {value[:40]!r} has non-printable characters")


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    """Filters are matched on every delivery: compile each pattern once."""
    return re.compile(pattern)


def validate(
    name: str, payload: bytes, node_filter: str, service_filter: str, tag_filter: str
) -> None:
    """Raise `EventError` with a one-line reason unless the event may be fired."""
    _check_text(name, "event name", NAME_MAX_CHARS, empty=False)
    if len(payload) > PAYLOAD_MAX_BYTES:
        raise EventError(f"payload is {len(payload)} bytes, the limit is {PAYLOAD_MAX_BYTES}")
    for what, pattern in (
        ("node filter", node_filter),
        ("service filter", service_filter),
        ("tag filter", tag_filter),
    ):
        _check_text(pattern, what, FILTER_MAX_CHARS, empty=True)
        try:
            _compile(pattern)
        except re.error as exc:
            raise EventError(f"{what} {pattern!r} is not a regular expression: {exc}") from None
    if tag_filter and not service_filter:
        raise EventError("a tag filter needs a service filter (as in Consul)")


# ---------------------------------------------------------------- wire


def encode_event(event: UserEvent) -> bytes:
    """The User payload for `event`: channel byte, then strict CBOR."""
    body = [
        WIRE_VERSION,
        uuid.UUID(event.id).bytes,
        event.name,
        event.payload,
        event.ltime,
        event.origin,
        event.node_filter,
        event.service_filter,
        event.tag_filter,
    ]
    return bytes([CHANNEL_USER_EVENT]) + cbor2.dumps(body)


def _malformed(why: str) -> NoReturn:
    raise MalformedEvent(why)


def _load_strict(data: bytes) -> Any:
    """One untagged, definite-length, flat CBOR item with no trailing bytes."""
    return load_strict(data, max_depth=2, refuse=MalformedEvent)


def _wire_text(value: object, what: str, max_chars: int, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        _malformed(f"{what} is not text")
    try:
        _check_text(value, what, max_chars, empty=empty)
    except EventError as exc:
        _malformed(str(exc))
    return value


def decode_event(payload: bytes) -> UserEvent:
    """The event in a User payload (channel byte included); `MalformedEvent` for any defect."""
    if len(payload) > ENCODED_MAX_BYTES:
        _malformed(f"{len(payload)} bytes is more than {ENCODED_MAX_BYTES}")
    if not payload or payload[0] != CHANNEL_USER_EVENT:
        _malformed("not on the user event channel")
    body = _load_strict(payload[1:])
    if not isinstance(body, list) or len(body) != 9:
        _malformed("not an array of 9 fields")
    version, raw_id, name, data, ltime, origin, node_f, service_f, tag_f = body
    if type(version) is not int or version != WIRE_VERSION:
        _malformed(f"unsupported version {version!r}")
    if not isinstance(raw_id, bytes) or len(raw_id) != _UUID_BYTES:
        _malformed("id is not 16 bytes")
    if not isinstance(data, bytes) or len(data) > PAYLOAD_MAX_BYTES:
        _malformed(f"payload is not bytes of at most {PAYLOAD_MAX_BYTES}")
    # `type(...) is int`: a bool is an int but never a Lamport time.
    if type(ltime) is not int or not 0 <= ltime < 2**63:
        _malformed("ltime is not a non-negative 64-bit integer")
    return UserEvent(
        id=str(uuid.UUID(bytes=raw_id)),
        name=_wire_text(name, "event name", NAME_MAX_CHARS, empty=False),
        payload=data,
        ltime=ltime,
        origin=_wire_text(origin, "origin", _NODE_NAME_MAX_CHARS, empty=False),
        node_filter=_wire_text(node_f, "node filter", FILTER_MAX_CHARS),
        service_filter=_wire_text(service_f, "service filter", FILTER_MAX_CHARS),
        tag_filter=_wire_text(tag_f, "tag filter", FILTER_MAX_CHARS),
    )


# ---------------------------------------------------------------- the engine


def _matches(pattern: str, text: str) -> bool:
    """Go's regexp.MatchString, as Consul uses it: an unanchored search."""
    return _compile(pattern).search(text) is not None


class UserEvents:
    """Fires, receives, de-duplicates and delivers user events for one agent.

    `broadcast(payload)` queues a User payload for gossip to every member;
    `local_services()` lists this node's (service name, tags) for the filters.
    """

    def __init__(
        self,
        node_name: str,
        broadcast: Callable[[bytes], None],
        *,
        handler: EventHandler | None = None,
        local_services: Callable[[], Iterable[tuple[str, Sequence[str]]]] = lambda: (),
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.node_name = node_name
        self._broadcast = broadcast
        self.handler = handler
        self._local_services = local_services
        self._new_id = new_id
        # serf's event clock: the ltime the next fired event takes.
        self.clock = 0
        # slot -> (ltime, ids seen at that ltime); slot = ltime % window.
        self._seen: list[tuple[int, set[str]] | None] = [None] * DEDUP_WINDOW_LTIMES
        self._recent: deque[UserEvent] = deque(maxlen=RECENT_MAX_EVENTS)
        # Consul's X-Consul-Index for the list: 1 while empty (indexes start at
        # 1), then one more per delivered event.
        self.index = 1
        self._changed = trio.Event()
        self.rejected = 0
        self.duplicates = 0
        self.too_old = 0
        self.filtered_out = 0
        self.delivered = 0

    # -- inputs

    def fire(
        self,
        name: str,
        payload: bytes,
        *,
        node_filter: str = "",
        service_filter: str = "",
        tag_filter: str = "",
    ) -> UserEvent:
        """Validate, deliver here if the filters say so, and gossip; `EventError` if invalid."""
        validate(name, payload, node_filter, service_filter, tag_filter)
        event = UserEvent(
            id=self._new_id(),
            name=name,
            payload=payload,
            ltime=self.clock,
            origin=self.node_name,
            node_filter=node_filter,
            service_filter=service_filter,
            tag_filter=tag_filter,
        )
        encoded = encode_event(event)
        if len(encoded) > ENCODED_MAX_BYTES:
            raise EventError(
                f"the event is {len(encoded)} bytes encoded, the limit is {ENCODED_MAX_BYTES}:"
                " shorten the name, payload or filters"
            )
        self.clock += 1
        self._handle(event, encoded)
        return event

    def on_user(self, payload: bytes) -> bool:
        """Handle a gossip User payload if it is on our channel; True when it was."""
        if not payload or payload[0] != CHANNEL_USER_EVENT:
            return False
        try:
            event = decode_event(payload)
        except MalformedEvent as exc:
            self.rejected += 1
            log(_log, "debug", "dropped a malformed user event", reason=str(exc))
            return True
        self._handle(event, payload)
        return True

    def _handle(self, event: UserEvent, encoded: bytes) -> bool:
        """serf's handleUserEvent: witness, drop old or seen, relay, deliver; True if new."""
        if event.ltime >= self.clock:
            self.clock = event.ltime + 1
        window = len(self._seen)
        if self.clock > window and event.ltime < self.clock - window:
            self.too_old += 1
            return False
        slot = event.ltime % window
        seen = self._seen[slot]
        if seen is not None and seen[0] == event.ltime:
            if event.id in seen[1]:
                self.duplicates += 1
                return False
            seen[1].add(event.id)
        else:
            self._seen[slot] = (event.ltime, {event.id})
        self._broadcast(encoded)
        if self._selects_us(event):
            self._deliver(event)
        else:
            self.filtered_out += 1
        return True

    def _selects_us(self, event: UserEvent) -> bool:
        """Consul's shouldProcessUserEvent; a filter that no longer compiles selects nobody."""
        try:
            if event.node_filter and not _matches(event.node_filter, self.node_name):
                return False
            if not event.service_filter:
                return True
            for service, tags in self._local_services():
                if not _matches(event.service_filter, service):
                    continue
                if not event.tag_filter or any(_matches(event.tag_filter, t) for t in tags):
                    return True
        except re.error:
            return False
        return False

    def _deliver(self, event: UserEvent) -> None:
        self._recent.append(event)
        self.index += 1
        self.delivered += 1
        self._changed.set()
        self._changed = trio.Event()
        log(_log, "debug", "user event", name=event.name, id=event.id, ltime=event.ltime)
        if self.handler is not None:
            self.handler.submit(event)

    # -- reads

    def events(self, name: str = "") -> list[UserEvent]:
        """The recent events delivered here, oldest first; only `name` when given."""
        return [e for e in self._recent if not name or e.name == name]

    async def wait(self, index: int, timeout_s: float) -> int:
        """Block until the index passes `index` or `timeout_s` runs out; the index then.

        An `index` above ours comes from before a restart: answer at once, so
        the client starts again from our index instead of hanging.
        """
        if index > self.index:
            return self.index
        with trio.move_on_after(timeout_s):
            while self.index <= index:
                await self._changed.wait()
        return self.index

    def counters(self) -> dict[str, int]:
        """For /v1/agent/metrics: what was delivered, dropped and why."""
        return {
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "too_old": self.too_old,
            "filtered_out": self.filtered_out,
            "rejected": self.rejected,
        }
