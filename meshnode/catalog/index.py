"""Secondary indexes over the decoded catalog records, kept in step one record at a time.

Why: reads (health, DNS, sidecars) used to walk every record in the cluster,
so one query or one write cost time proportional to the catalog (issues 5
and 6: a PTR query froze an agent for minutes at 31,000 services). Here a
record change costs O(that record) and a read O(its answer).

Rules that live here:
- Every table maps a group key to ``{store key: record}``; an emptied group
  is dropped, so memory follows the live records.
- A service is in `connect` under each name it is a connect endpoint of:
  a connect-proxy under its destination, a connect-native service under its
  own name (Consul's rule).
- `by_address` holds only services with an address of their own that is an
  IP, under its canonical text (``fd00::6``, never ``fd00:0::6``): what a
  reverse (PTR) lookup asks for. Address-less services follow their node.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TypeVar

from .records import CheckRecord, ServiceRecord

__all__ = ["RecordIndex", "canonical_ip", "connect_names"]

_K = TypeVar("_K")
_R = TypeVar("_R")


@functools.lru_cache(maxsize=1 << 16)
def canonical_ip(address: str) -> str | None:
    """The canonical text of an IP address, or None for a host name or nothing.

    Memoised (bounded): parsing costs ~2.5 us, and the member table of the
    DNS view re-reads every node address after a member change.
    """
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def connect_names(record: ServiceRecord) -> tuple[str, ...]:
    """The service names whose connect endpoints include `record`."""
    found: list[str] = []
    proxy = record.proxy
    if record.kind == "connect-proxy" and proxy is not None:
        found.append(proxy.destination_service_name)
    if record.definition.connect_native and record.name not in found:
        found.append(record.name)
    return tuple(found)


def _add(table: dict[_K, dict[str, _R]], group: _K, key: str, record: _R) -> None:
    table.setdefault(group, {})[key] = record


def _count(table: dict[_K, dict[str, int]], group: _K, item: str, step: int) -> None:
    """Add `step` (+1 or -1) to a count; a count that reaches 0 and an emptied group go."""
    counts = table.setdefault(group, {})
    left = counts.get(item, 0) + step
    if left > 0:
        counts[item] = left
    else:
        counts.pop(item, None)
        if not counts:
            del table[group]


def _drop(table: dict[_K, dict[str, _R]], group: _K, key: str) -> None:
    members = table.get(group)
    if members is not None:
        members.pop(key, None)
        if not members:
            del table[group]


class RecordIndex:
    """Services and checks by the ways reads look them up (see the module doc)."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[str, ServiceRecord]] = {}
        # Lowercased name -> real spellings with their instance counts (DNS is case-blind).
        self.names_lower: dict[str, dict[str, int]] = {}
        # Name -> tag -> instances, and name -> node -> instances (/v1/catalog/services).
        self.tags_by_name: dict[str, dict[str, int]] = {}
        self.nodes_by_name: dict[str, dict[str, int]] = {}
        self.connect: dict[str, dict[str, ServiceRecord]] = {}
        self.by_node: dict[str, dict[str, ServiceRecord]] = {}
        # (node, parent service ID) -> its sidecars: deregistered with the parent.
        self.sidecars: dict[tuple[str, str], dict[str, ServiceRecord]] = {}
        self.by_address: dict[str, dict[str, ServiceRecord]] = {}
        self.checks_by_owner: dict[tuple[str, str], dict[str, CheckRecord]] = {}
        self.checks_by_node: dict[str, dict[str, CheckRecord]] = {}
        self.checks_by_status: dict[str, dict[str, CheckRecord]] = {}

    def add_service(self, key: str, record: ServiceRecord) -> None:
        self._counts(key, record, +1)
        for name in connect_names(record):
            _add(self.connect, name, key, record)
        _add(self.by_node, record.node, key, record)
        if record.sidecar_of:
            _add(self.sidecars, (record.node, record.sidecar_of), key, record)
        ip = canonical_ip(record.address)
        if ip is not None:
            _add(self.by_address, ip, key, record)

    def remove_service(self, key: str, record: ServiceRecord) -> None:
        self._counts(key, record, -1)
        for name in connect_names(record):
            _drop(self.connect, name, key)
        _drop(self.by_node, record.node, key)
        if record.sidecar_of:
            _drop(self.sidecars, (record.node, record.sidecar_of), key)
        ip = canonical_ip(record.address)
        if ip is not None:
            _drop(self.by_address, ip, key)

    def _counts(self, key: str, record: ServiceRecord, step: int) -> None:
        if step > 0:
            _add(self.by_name, record.name, key, record)
        else:
            _drop(self.by_name, record.name, key)
        _count(self.names_lower, record.name.lower(), record.name, step)
        _count(self.nodes_by_name, record.name, record.node, step)
        for tag in set(record.tags):
            _count(self.tags_by_name, record.name, tag, step)

    def add_check(self, key: str, record: CheckRecord) -> None:
        _add(self.checks_by_owner, (record.node, record.service_id), key, record)
        _add(self.checks_by_node, record.node, key, record)
        _add(self.checks_by_status, record.status, key, record)

    def remove_check(self, key: str, record: CheckRecord) -> None:
        _drop(self.checks_by_owner, (record.node, record.service_id), key)
        _drop(self.checks_by_node, record.node, key)
        _drop(self.checks_by_status, record.status, key)
