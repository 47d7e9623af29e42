"""`FakeAgent`: an in-memory `AgentFacade` for tests of the API, the client and the CLI.

It ships with the package (as memberlist ships its mock transport) so that
anyone can drive the HTTP API without a gossip layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from .facade import (
    STATUS_LEFT,
    JoinError,
    KeyringError,
    KeyringReport,
    KvEntry,
    KvError,
    MemberView,
    UnknownMember,
)

__all__ = ["FakeAgent"]


@dataclass
class FakeAgent:
    """Members, joins and a keyring in memory; `explode` makes members() raise."""

    name: str = "node1"
    member_list: list[MemberView] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)  # join addresses that fail
    joined: list[str] = field(default_factory=list)
    left: bool = False
    keys: list[str] = field(default_factory=list)
    primary: str | None = None
    keyring_failures: dict[str, str] = field(default_factory=dict)  # node -> message
    explode: bool = False
    kv: dict[str, KvEntry] = field(default_factory=dict)
    kv_last_index: int = 0
    kv_refuse: str | None = None  # kv_put raises KvError with this message
    reloads: int = 0
    _kv_changed: trio.Event | None = None

    @property
    def node_name(self) -> str:
        return self.name

    def members(self) -> list[MemberView]:
        if self.explode:
            raise RuntimeError("boom")
        return list(self.member_list)

    async def join(self, addrs: list[str]) -> int:
        good = [a for a in addrs if a not in self.unreachable]
        if not good:
            raise JoinError(f"failed to join {', '.join(addrs)}: connection refused")
        self.joined.extend(good)
        return len(good)

    async def leave(self) -> None:
        self.left = True

    def force_leave(self, node: str) -> None:
        for i, member in enumerate(self.member_list):
            if member.name == node:
                self.member_list[i] = replace(member, status=STATUS_LEFT, state="left")
                return
        raise UnknownMember(f"no member named {node!r}")

    def self_info(self) -> dict[str, Any]:
        return {
            "Config": {
                "NodeName": self.name,
                "NodeID": "8d4ff6f1-0d1e-4b29-9a4a-6a8f3e6cf0a1",
                "Datacenter": "dc1",
                "Version": "0.1.0",
            },
            "Member": {"Name": self.name, "Addr": "127.0.0.1", "Port": 7946, "Status": 1},
            "Meta": {},
            "Stats": {"agent": {"members": str(len(self.member_list))}},
        }

    def metrics(self) -> dict[str, Any]:
        return {
            "Timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime()),
            "Gauges": [{"Name": "meshnode.members", "Value": len(self.member_list), "Labels": {}}],
            "Counters": [
                {
                    "Name": "meshnode.gossip.bytes_sent",
                    "Count": 3,
                    "Rate": 0.3,
                    "Sum": 600,
                    "Min": 100,
                    "Max": 300,
                    "Mean": 200,
                    "Stddev": 100,
                    "Labels": {},
                }
            ],
            "Samples": [],
        }

    def _report(self) -> KeyringReport:
        nodes = max(1, len(self.member_list))
        return KeyringReport(
            keys={k: nodes for k in self.keys},
            primary_keys={self.primary: nodes} if self.primary else {},
            num_nodes=nodes,
            messages=dict(self.keyring_failures),
        )

    async def reload(self) -> None:
        self.reloads += 1

    async def keyring_list(self) -> KeyringReport:
        return self._report()

    async def keyring_install(self, key: str) -> KeyringReport:
        if key not in self.keys:
            self.keys.append(key)
        return self._report()

    async def keyring_use(self, key: str) -> KeyringReport:
        if key not in self.keys:
            raise KeyringError("the key is not installed; install it first")
        self.primary = key
        return self._report()

    async def keyring_remove(self, key: str) -> KeyringReport:
        if key == self.primary:
            raise KeyringError("the primary key cannot be removed; use another key first")
        if key not in self.keys:
            raise KeyringError("the key is not installed")
        self.keys.remove(key)
        return self._report()

    def _kv_bump(self) -> int:
        self.kv_last_index += 1
        if self._kv_changed is not None:
            self._kv_changed.set()
            self._kv_changed = None
        return self.kv_last_index

    def kv_get(self, key: str) -> KvEntry | None:
        return self.kv.get(key)

    def kv_list(self, prefix: str) -> list[KvEntry]:
        return [self.kv[k] for k in sorted(self.kv) if k.startswith(prefix)]

    def kv_put(self, key: str, value: bytes) -> None:
        if self.kv_refuse is not None:
            raise KvError(self.kv_refuse)
        index = self._kv_bump()
        old = self.kv.get(key)
        self.kv[key] = KvEntry(key, value, old.create_index if old else index, index)

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        doomed = [k for k in self.kv if (k.startswith(key) if recurse else k == key)]
        for k in doomed:
            del self.kv[k]
        self._kv_bump()

    def kv_index(self) -> int:
        return max(1, self.kv_last_index)

    async def kv_wait(self, index: int, timeout_s: float) -> int:
        with trio.move_on_after(timeout_s):
            while self.kv_last_index <= index:
                if self._kv_changed is None:
                    self._kv_changed = trio.Event()
                await self._kv_changed.wait()
        return self.kv_index()
