"""The KV store behind /v1/kv: a last-writer-wins register per key in the replicated store.

No CAS and no locks (docs/http-api.md says so): a key is one store entry of
kind `kv`, written through the replicator (durable in SQLite before the call
returns) and spread by gossip like any other entry.
"""

from __future__ import annotations

from ..api.facade import KvEntry, KvError, KvFull
from ..gossip.errors import LocalProtocolError
from ..gossip.store import StoreFull
from ..store.replication import Replicator

__all__ = ["KIND_KV", "AgentKv"]

# The store kind that holds KV entries.
KIND_KV = "kv"


class AgentKv:
    """The agent's KV operations (the `kv_*` half of `AgentFacade`)."""

    def __init__(self, replicator: Replicator) -> None:
        self._replicator = replicator

    def _entry(self, key: str, value: bytes) -> KvEntry:
        create, modify = self._replicator.entry_indexes(KIND_KV, key)
        return KvEntry(key, value, create, modify)

    def get(self, key: str) -> KvEntry | None:
        entry = self._replicator.store.get(KIND_KV, key)
        return None if entry is None else self._entry(key, entry.value)

    def entries(self, prefix: str) -> list[KvEntry]:
        return [
            self._entry(e.key, e.value)
            for e in self._replicator.store.items(KIND_KV)
            if e.key.startswith(prefix)
        ]

    def put(self, key: str, value: bytes) -> None:
        try:
            self._replicator.put(KIND_KV, key, value)
        except StoreFull as exc:
            raise KvFull(str(exc)) from None
        except LocalProtocolError as exc:
            raise KvError(str(exc)) from None

    def delete(self, key: str, *, recurse: bool = False) -> None:
        if recurse:
            keys = [e.key for e in self._replicator.store.items(KIND_KV) if e.key.startswith(key)]
        else:
            keys = [key]
        try:
            self._replicator.delete_many(KIND_KV, keys)
        except LocalProtocolError as exc:
            raise KvError(str(exc)) from None

    def index(self) -> int:
        return max(1, self._replicator.tracker.topic_index(KIND_KV))

    async def wait(self, index: int, timeout_s: float) -> int:
        return max(1, await self._replicator.wait_for_change(KIND_KV, index, timeout_s))
