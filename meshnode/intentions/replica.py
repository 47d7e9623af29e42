"""Intentions on the replicated store: writes, reads, the live index and authorization.

Rules that live here:
- one store entry per (source, destination) under kind ``"intention"``, keyed
  ``source + "\\x00" + destination`` (NUL is never part of a name, so the key
  splits back unambiguously); any agent may write one, last writer wins;
- the value is strict CBOR: a map of ``id``, ``action``, ``description``,
  ``created_at``, ``updated_at`` (wall seconds) and, when not empty, ``meta``.
  Unknown map keys are ignored, so a newer agent can add fields without its
  rules vanishing from older ones; anything else malformed is skipped and
  counted (`malformed_total`), never raised out of a merge;
- the ID is a UUID made by the first writer and kept by every later update on
  any agent that already holds the intention, as Consul keeps it;
- the `IntentionIndex` follows the store through a tracker subscription, one
  changed entry at a time, so a decision never waits for a rebuild;
- `authorize` takes the client certificate's SPIFFE service ID; its parser is
  a constructor argument so the CA work can swap in one that also checks the
  trust domain.
"""

from __future__ import annotations

import builtins
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import cbor2

from ..gossip.errors import DecodeError, LocalProtocolError
from ..gossip.store import Entry
from ..gossip.strict_cbor import load_strict
from ..logs import get_logger, log
from ..store.state import ReplicatedState
from .rules import (
    WILDCARD,
    Decision,
    Intention,
    IntentionError,
    IntentionIndex,
    make_intention,
    validate_name,
)

__all__ = [
    "DESCRIPTION_MAX_CHARS",
    "KIND",
    "META_KEY_MAX_CHARS",
    "META_MAX_PAIRS",
    "META_VALUE_MAX_CHARS",
    "IntentionExists",
    "IntentionRecord",
    "IntentionState",
    "InvalidCertURI",
    "MalformedIntention",
    "UnknownIntention",
    "decode_value",
    "encode_value",
    "intention_key",
    "service_from_spiffe_uri",
    "split_key",
]

KIND = "intention"
_SEP = "\x00"
# Consul's limit on a description (structs.Intention.Validate: metaValueMaxLength).
DESCRIPTION_MAX_CHARS = 512
# What a replicated value may hold: agents before the 512 limit wrote up to 1 KiB,
# and their intentions must still be read, not skipped as malformed.
_STORED_DESCRIPTION_MAX_CHARS = 1024
# Consul's limits on service and node meta (structs.metaMaxKeyPairs and friends).
META_MAX_PAIRS = 64
META_KEY_MAX_CHARS = 128
META_VALUE_MAX_CHARS = 512
# Room for the fields above at their limits; a remote value beyond this is not ours.
_VALUE_MAX_BYTES = 64 * 1024
_ID_MAX_CHARS = 64  # a UUID is 36; leave room for other ID schemes, never unbounded
# SPIFFE's own bound on an ID (spiffe-id spec, "Maximum SPIFFE ID Length").
_URI_MAX_CHARS = 2048
# One pattern for the whole ID (a single match is most of authorize's cost):
# trust domains are lower case (SPIFFE spec), path segments use the unreserved
# set, and the service is a service name as `validate_name` accepts it.
_SERVICE_ID = re.compile(
    r"spiffe://[a-z0-9._-]{1,255}/ns/[A-Za-z0-9._-]{1,255}/dc/[A-Za-z0-9._-]{1,255}"
    r"/svc/([A-Za-z0-9][A-Za-z0-9._-]{0,62})"
)

_log = get_logger("intentions")


class IntentionExists(IntentionError):
    """`create` without replace found an intention for the same pair."""


class UnknownIntention(IntentionError):
    """No intention exists for the pair asked about."""


class InvalidCertURI(IntentionError):
    """A client certificate URI is not a SPIFFE service ID."""


class MalformedIntention(DecodeError):
    """A replicated intention value from the network cannot be read (a remote error)."""


@dataclass(frozen=True, slots=True)
class IntentionRecord:
    """One stored intention: the rule plus what Consul shows about it."""

    intention: Intention
    id: str
    created_at_s: float  # wall clock of the first write
    updated_at_s: float  # wall clock of the last write
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.intention.source

    @property
    def destination(self) -> str:
        return self.intention.destination


# --- keys and values ------------------------------------------------------------------------


def intention_key(source: str, destination: str) -> str:
    return f"{source}{_SEP}{destination}"


def split_key(key: str) -> tuple[str, str]:
    """(source, destination) of a store key; `MalformedIntention` if it is not one."""
    source, sep, destination = key.partition(_SEP)
    if not sep:
        _malformed(f"key {key[:80]!r} has no separator")
    try:
        return validate_name(source, "source"), validate_name(destination, "destination")
    except IntentionError as exc:
        _malformed(str(exc))


def encode_value(record: IntentionRecord) -> bytes:
    value: dict[str, Any] = {
        "id": record.id,
        "action": record.intention.action,
        "description": record.intention.description,
        "created_at": float(record.created_at_s),
        "updated_at": float(record.updated_at_s),
    }
    if record.meta:
        value["meta"] = dict(record.meta)
    return cbor2.dumps(value, canonical=True)


def _malformed(why: str) -> NoReturn:
    raise MalformedIntention(f"malformed intention: {why}")


def _refusal(why: str) -> MalformedIntention:
    return MalformedIntention(f"malformed intention: {why}")


def _load_strict(data: bytes) -> Any:
    """One untagged, definite-length CBOR item with no trailing bytes."""
    if len(data) > _VALUE_MAX_BYTES:
        _malformed(f"{len(data)} bytes is more than {_VALUE_MAX_BYTES}")
    return load_strict(data, max_depth=3, refuse=_refusal)


def _text(value: object, what: str, max_chars: int, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        _malformed(f"{what} is not text")
    if len(value) > max_chars or (not empty and not value):
        _malformed(f"{what} must be {0 if empty else 1}..{max_chars} characters")
    return value


def _wall_time(value: object, what: str) -> float:
    # `type(...) is`, not isinstance: a bool is an int but never a time.
    if not (type(value) is float or type(value) is int) or not math.isfinite(value) or value < 0:
        _malformed(f"{what} is not a wall-clock time")
    return float(value)


def decode_value(source: str, destination: str, data: bytes) -> IntentionRecord:
    """The record a replicated value holds; `MalformedIntention` for any defect."""
    value = _load_strict(data)
    if not isinstance(value, dict):
        _malformed("value is not a map")
    action = value.get("action")
    if action not in ("allow", "deny"):
        _malformed(f"action {action!r} is not 'allow' or 'deny'")
    description = _text(value.get("description", ""), "description", _STORED_DESCRIPTION_MAX_CHARS)
    meta = value.get("meta", {})
    if not isinstance(meta, dict) or len(meta) > META_MAX_PAIRS:
        _malformed(f"meta is not a map of at most {META_MAX_PAIRS} pairs")
    for k, v in meta.items():
        _text(k, "meta key", META_KEY_MAX_CHARS, empty=False)
        _text(v, "meta value", META_VALUE_MAX_CHARS)
    return IntentionRecord(
        intention=Intention(source, destination, action, description),
        id=_text(value.get("id"), "id", _ID_MAX_CHARS, empty=False),
        created_at_s=_wall_time(value.get("created_at"), "created_at"),
        updated_at_s=_wall_time(value.get("updated_at"), "updated_at"),
        meta=meta,
    )


def validate_meta(meta: Mapping[str, str] | None) -> dict[str, str]:
    """User meta within Consul's limits, or `IntentionError` with one line."""
    if not meta:
        return {}
    if len(meta) > META_MAX_PAIRS:
        raise IntentionError(f"meta has {len(meta)} pairs, the limit is {META_MAX_PAIRS}")
    for k, v in meta.items():
        if not isinstance(k, str) or not 0 < len(k) <= META_KEY_MAX_CHARS:
            raise IntentionError(f"meta key {k!r:.60} must be 1..{META_KEY_MAX_CHARS} characters")
        if not isinstance(v, str) or len(v) > META_VALUE_MAX_CHARS:
            raise IntentionError(
                f"meta value of {k!r} must be text of at most {META_VALUE_MAX_CHARS} characters"
            )
    return dict(meta)


def _validate_description(description: str) -> str:
    if len(description) > DESCRIPTION_MAX_CHARS:
        raise IntentionError(
            f"description is {len(description)} characters, the limit is {DESCRIPTION_MAX_CHARS}"
        )
    return description


# --- SPIFFE ---------------------------------------------------------------------------------


def service_from_spiffe_uri(uri: str) -> str:
    """The service of ``spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>``; `InvalidCertURI` else.

    Strict on shape (no port, user, query, fragment, percent-encoding or empty
    segment) and nothing more: the trust-domain check belongs to the CA.
    """
    if len(uri) > _URI_MAX_CHARS:
        raise InvalidCertURI(f"client certificate URI is over {_URI_MAX_CHARS} characters")
    found = _SERVICE_ID.fullmatch(uri)
    if found is None:
        if not uri.startswith("spiffe://"):
            raise InvalidCertURI(f"client certificate URI {uri[:100]!r} is not a spiffe:// ID")
        raise InvalidCertURI(
            f"client certificate URI {uri[:100]!r} is not a service ID "
            "spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>"
        )
    return found.group(1)


# --- the state ------------------------------------------------------------------------------


class IntentionState:
    """Every intention of the cluster, from the local replica, with its decision index.

    Build it after the store is loaded from disk (it reads the store once),
    or call `reload` after loading.
    """

    def __init__(
        self,
        state: ReplicatedState,
        *,
        wall_clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        service_from_uri: Callable[[str], str] = service_from_spiffe_uri,
    ) -> None:
        self._state = state
        self._wall_clock = wall_clock
        self._new_id = new_id
        self._service_from_uri = service_from_uri
        self._index = IntentionIndex()
        self._records: dict[tuple[str, str], IntentionRecord] = {}
        # ID -> the pairs holding it: one pair, unless a writer reused an ID (then
        # the smallest pair answers, the same on every agent whatever the order).
        self._by_id: dict[str, set[tuple[str, str]]] = {}
        # Replicated values this agent could not read: a metric, never an exception.
        self.malformed_total = 0
        state.tracker.subscribe(KIND, self._apply)
        self.reload()

    # --- following the store ---------------------------------------------------------------

    def reload(self) -> None:
        """Rebuild from the store (once, at start); changes then arrive one by one."""
        self._index = IntentionIndex()
        self._records.clear()
        self._by_id.clear()
        self._apply(self._state.store.items(KIND))

    def _apply(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            try:
                pair = split_key(entry.key)
            except MalformedIntention as exc:
                self._skip(entry, exc)
                continue
            # The store moved on: the old rule goes whether or not the new one reads.
            self._forget(pair)
            if entry.tombstone:
                continue
            try:
                record = decode_value(*pair, entry.value)
            except MalformedIntention as exc:
                self._skip(entry, exc)
                continue
            self._records[pair] = record
            self._by_id.setdefault(record.id, set()).add(pair)
            self._index.put(record.intention)

    def _forget(self, pair: tuple[str, str]) -> None:
        old = self._records.pop(pair, None)
        self._index.remove(*pair)
        if old is not None:
            pairs = self._by_id.get(old.id, set())
            pairs.discard(pair)
            if not pairs:
                self._by_id.pop(old.id, None)

    def _skip(self, entry: Entry, exc: MalformedIntention) -> None:
        self.malformed_total += 1
        log(_log, "warning", "skipped a replicated intention", node=entry.version.node, error=exc)

    # --- writes -----------------------------------------------------------------------------

    def upsert(
        self,
        source: str,
        destination: str,
        action: str,
        description: str = "",
        meta: Mapping[str, str] | None = None,
    ) -> IntentionRecord:
        """Create or replace the intention of (source, destination); durable on return."""
        intention = make_intention(source, destination, action, _validate_description(description))
        old = self._records.get((intention.source, intention.destination))
        return self._write(intention, validate_meta(meta), old)

    def _write(
        self, intention: Intention, meta: dict[str, str], old: IntentionRecord | None
    ) -> IntentionRecord:
        """Store `intention`, keeping the ID and creation time of `old` when there is one."""
        now_wall = self._wall_clock()
        record = IntentionRecord(
            intention=intention,
            id=old.id if old is not None else self._new_id(),
            created_at_s=old.created_at_s if old is not None else now_wall,
            updated_at_s=now_wall,
            meta=meta,
        )
        try:
            key = intention_key(intention.source, intention.destination)
            self._state.put(KIND, key, encode_value(record))
        except LocalProtocolError as exc:
            raise IntentionError(str(exc)) from None
        return record

    def update_by_id(
        self, intention_id: str, change: Intention, meta: Mapping[str, str] | None = None
    ) -> IntentionRecord:
        """Make the intention `intention_id` names `change`, keeping its ID and creation time.

        New names move it to the new pair (Consul's update by ID may rename);
        `UnknownIntention` if no intention has the ID, `IntentionExists` if
        another intention already holds the new pair. `change` is validated
        here like any other write.
        """
        old = self.get_by_id(intention_id)
        if old is None:
            raise UnknownIntention(f"no intention with ID {intention_id[:_ID_MAX_CHARS]!r}")
        intention = make_intention(
            change.source,
            change.destination,
            change.action,
            _validate_description(change.description),
        )
        checked_meta = validate_meta(meta)
        pair = (intention.source, intention.destination)
        other = self._records.get(pair)
        if other is not None and other.id != old.id:
            raise IntentionExists(f"intention {other.intention} already exists")
        record = self._write(intention, checked_meta, old)
        if pair != (old.source, old.destination):
            self._state.delete_many(KIND, [intention_key(old.source, old.destination)])
        return record

    def create(
        self,
        source: str,
        destination: str,
        action: str,
        description: str = "",
        *,
        replace: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> IntentionRecord:
        """As `upsert`, but `IntentionExists` when the pair has one and `replace` is False."""
        make_intention(source, destination, action)  # bad input is reported before a conflict
        old = self._records.get((source, destination))
        if old is not None and not replace:
            raise IntentionExists(f"intention {old.intention} already exists")
        return self.upsert(source, destination, action, description, meta)

    def delete(self, source: str, destination: str) -> IntentionRecord:
        """Remove the intention of (source, destination); `UnknownIntention` if none."""
        old = self.get(source, destination)
        if old is None:
            raise UnknownIntention(f"no intention from {source!r} to {destination!r}")
        self._state.delete_many(KIND, [intention_key(source, destination)])
        return old

    def delete_by_id(self, intention_id: str) -> IntentionRecord:
        """Remove the intention with this ID; `UnknownIntention` if none has it."""
        old = self.get_by_id(intention_id)
        if old is None:
            raise UnknownIntention(f"no intention with ID {intention_id[:_ID_MAX_CHARS]!r}")
        self._state.delete_many(KIND, [intention_key(old.source, old.destination)])
        return old

    # --- reads ------------------------------------------------------------------------------

    def get_by_id(self, intention_id: str) -> IntentionRecord | None:
        """The intention with this ID (Consul's ``/v1/connect/intentions/<id>``), if any."""
        pairs = self._by_id.get(intention_id)
        return self._records[min(pairs)] if pairs else None

    def get(self, source: str, destination: str) -> IntentionRecord | None:
        pair = (validate_name(source, "source"), validate_name(destination, "destination"))
        return self._records.get(pair)

    def list(self) -> list[IntentionRecord]:
        """Every intention in evaluation order (precedence, then names)."""
        return [self._records[(i.source, i.destination)] for i in self._index.all()]

    def match(self, by: str, name: str) -> builtins.list[IntentionRecord]:
        """The intentions that apply to `name` as `by`, in the order they are evaluated."""
        if by == "source":
            found = self._index.match("source", validate_name(name, "source"))
        elif by == "destination":
            found = self._index.match("destination", validate_name(name, "destination"))
        else:
            raise IntentionError(f"invalid match type {by[:60]!r}: use 'source' or 'destination'")
        return [self._records[(i.source, i.destination)] for i in found]

    def indexes(self, record: IntentionRecord) -> tuple[int, int]:
        """(CreateIndex, ModifyIndex) of a record, for Consul's JSON."""
        return self._state.tracker.entry_indexes(
            KIND, intention_key(record.source, record.destination)
        )

    def __len__(self) -> int:
        return len(self._records)

    # --- decisions --------------------------------------------------------------------------

    def check(self, source: str, destination: str) -> Decision:
        """May `source` connect to `destination`? From the local replica, in microseconds."""
        validate_name(source, "source")
        validate_name(destination, "destination")
        return self._index.decide(source, destination)

    def authorize(self, target: str, client_cert_uri: str) -> tuple[bool, str]:
        """May the client with this certificate URI connect to `target`? (authorized, reason)."""
        _, decision = self.authorize_source(target, client_cert_uri)
        return decision.allowed, decision.reason

    def authorize_source(self, target: str, client_cert_uri: str) -> tuple[str, Decision]:
        """The client's service as parsed for the decision, and the decision (for the audit)."""
        if target == WILDCARD:
            raise IntentionError("invalid target '*': authorize a single service")
        validate_name(target, "target")
        # The parser answers a valid service name: no second validation on this hot path.
        source = self._service_from_uri(client_cert_uri)
        return source, self._index.decide(source, target)

    # --- blocking queries -------------------------------------------------------------------

    def index(self) -> int:
        """The index of the last intention change (Consul's X-Consul-Index)."""
        return self._state.tracker.topic_index(KIND)

    async def wait(self, index: int, timeout_s: float) -> int:
        """Block until the intentions changed after `index`, or the timeout; the index then."""
        return await self._state.tracker.wait(KIND, index, timeout_s)
