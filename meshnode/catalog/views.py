"""The catalog's read side: decoded records kept in memory, and what reads return.

Every agent answers catalog, health and DNS reads from its replica. Decoding
CBOR on every read would cost more than the read, so `RecordCache` decodes
each record once, when the store applies it (a `ChangeTracker` listener),
and keeps the `RecordIndex` tables in step with that one record.
A malformed record (from a buggy or newer peer) is logged, counted and
left out; it never fails a read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..gossip.store import Entry
from ..logs import get_logger, log
from ..store.state import NodeInfo, ReplicatedState
from .definitions import CheckDefinition
from .index import RecordIndex
from .records import (
    KIND_CHECK,
    KIND_SERVICE,
    CheckRecord,
    MalformedRecord,
    ServiceRecord,
    decode_check,
    decode_service,
)

__all__ = [
    "SERF_CHECK_ID",
    "SERF_CHECK_NAME",
    "CheckView",
    "HealthEntry",
    "InstanceState",
    "RecordCache",
    "ServiceView",
    "serf_check",
]

_log = get_logger("catalog")
_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class _Decode(Protocol[_T_co]):
    def __call__(self, key: str, raw: bytes, *, canonical: bool = False) -> _T_co: ...


# Consul's node-level check, derived here from the member state.
SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
_SERF_OUTPUT = {True: "Agent alive and reachable", False: "Agent not live or unreachable"}


@dataclass(frozen=True, slots=True)
class ServiceView:
    """A service instance with its node and Consul's indexes."""

    node: NodeInfo
    record: ServiceRecord
    create_index: int
    modify_index: int


@dataclass(frozen=True, slots=True)
class CheckView:
    """A check with its indexes; `synthetic` for serfHealth (no type, not stored)."""

    record: CheckRecord
    create_index: int
    modify_index: int
    synthetic: bool = False
    service_tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthEntry:
    """One instance of /v1/health/service: node, service and every check that applies."""

    service: ServiceView
    checks: tuple[CheckView, ...]

    @property
    def passing(self) -> bool:
        return all(c.record.status == "passing" for c in self.checks)


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One instance with its node and its worst status (node health included): DNS's input."""

    record: ServiceRecord
    node: NodeInfo
    status: str  # "passing" | "warning" | "critical"


def serf_check(node: NodeInfo, index: int) -> CheckView:
    """Critical unless the node is alive: a suspect, leaving, left or failed node serves nothing."""
    record = CheckRecord(
        node=node.name,
        check_id=SERF_CHECK_ID,
        status="passing" if node.healthy else "critical",
        definition=CheckDefinition(kind="ttl", check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME),
        output=_SERF_OUTPUT[node.healthy],
    )
    return CheckView(record, index, index, synthetic=True)


class RecordCache:
    """Decoded services and checks by store key, and their indexes, kept in step with the store."""

    def __init__(self, state: ReplicatedState) -> None:
        self.services: dict[str, ServiceRecord] = {}
        self.checks: dict[str, CheckRecord] = {}
        self.index = RecordIndex()
        self.malformed = 0  # records skipped since start (a metric)
        # Values this agent just encoded for a write: when the store hands them
        # back, decoding skips the canonical-form check (a second encoding).
        self._ours: set[bytes] = set()
        for kind in (KIND_SERVICE, KIND_CHECK):
            self._apply(state.store.items(kind))
            state.tracker.subscribe(kind, self._apply)

    def ours(self, value: bytes) -> bytes:
        """`value`, noted as made by `encode_service`/`encode_check` for a write about to run.

        Call `forget_ours` after the write, applied or refused.
        """
        self._ours.add(value)
        return value

    def forget_ours(self) -> None:
        self._ours.clear()

    def _apply(self, entries: list[Entry]) -> None:
        index = self.index
        for entry in entries:
            if entry.kind == KIND_SERVICE:
                self._put(self.services, entry, decode_service)
                service = self.services.get(entry.key)
                if service is not None:
                    index.add_service(entry.key, service)
            elif entry.kind == KIND_CHECK:
                self._put(self.checks, entry, decode_check)
                check = self.checks.get(entry.key)
                if check is not None:
                    index.add_check(entry.key, check)

    def _put(self, table: dict[str, _T], entry: Entry, decode: _Decode[_T]) -> None:
        """Replace the key's record, out of the index first; the caller indexes the new one."""
        old = table.pop(entry.key, None)
        if isinstance(old, ServiceRecord):
            self.index.remove_service(entry.key, old)
        elif isinstance(old, CheckRecord):
            self.index.remove_check(entry.key, old)
        if entry.tombstone:
            return
        try:
            table[entry.key] = decode(entry.key, entry.value, canonical=entry.value in self._ours)
        except MalformedRecord as exc:
            self.malformed += 1
            log(_log, "warning", "skipped a catalog record", exc_info=exc, key=entry.key)
