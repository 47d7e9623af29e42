"""Another node's catalog records as the store replicates them, for tests and benchmarks.

A test or a benchmark fills a `ReplicatedState` with remote services and
checks by merging these entries, as gossip would deliver them, without
running the remote agent.
"""

from __future__ import annotations

from ..gossip.store import Entry, Version
from . import records

__all__ = ["check_entry", "service_entry", "tombstone"]


def service_entry(record: records.ServiceRecord, lamport: int) -> Entry:
    """`record` written by its node at `lamport` (the entry key is "node/service ID")."""
    key = records.record_key(record.node, record.service_id)
    value = records.encode_service(record)
    return Entry(records.KIND_SERVICE, key, value, Version(lamport, record.node))


def check_entry(record: records.CheckRecord, lamport: int) -> Entry:
    """`record` written by its node at `lamport` (the entry key is "node/check ID")."""
    key = records.record_key(record.node, record.check_id)
    value = records.encode_check(record)
    return Entry(records.KIND_CHECK, key, value, Version(lamport, record.node))


def tombstone(kind: str, node: str, record_id: str, lamport: int) -> Entry:
    """The record `record_id` of `node` deleted by that node at `lamport` (at wall time 0)."""
    return Entry(kind, records.record_key(node, record_id), b"", Version(lamport, node), True, 0.0)
