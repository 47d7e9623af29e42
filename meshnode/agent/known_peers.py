"""The peers this agent knew, kept in SQLite so a restarted agent finds the cluster again."""

from __future__ import annotations

import trio

from ..gossip.membership import Membership
from ..gossip.messages import Addr, State
from ..store.persist import Persistence

__all__ = ["MEMBERS_SAVE_INTERVAL_S", "KnownPeers"]

# Known peers are saved at most this often: a join storm changes the member
# list hundreds of times a second and each save is an fsync.
MEMBERS_SAVE_INTERVAL_S = 2.0


class KnownPeers:
    """Saves the member list when it changed (at most every `MEMBERS_SAVE_INTERVAL_S`)."""

    def __init__(self, persist: Persistence, core: Membership, *, node_name: str) -> None:
        self._persist = persist
        self._core = core
        self._node_name = node_name
        self._dirty = False

    def changed(self) -> None:
        """The member list changed: save it at the next tick."""
        self._dirty = True

    def addresses(self, *, exclude: Addr) -> list[Addr]:
        """The saved peers' gossip addresses, without `exclude` (our own)."""
        saved = [Addr(host, port) for _, host, port in self._persist.load_members()]
        return [addr for addr in saved if addr != exclude]

    def save(self) -> None:
        self._persist.save_members(
            [
                (m.name, m.addr.host, m.addr.port)
                for m in self._core.members()
                if m.name != self._node_name and m.state not in (State.LEFT,)
            ]
        )

    async def run(self) -> None:
        """Save every `MEMBERS_SAVE_INTERVAL_S` when something changed; forever."""
        while True:
            await trio.sleep(MEMBERS_SAVE_INTERVAL_S)
            if self._dirty:
                self._dirty = False
                self.save()
