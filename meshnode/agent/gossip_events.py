"""What the agent does with each event the gossip core reports.

Member changes wake blocking health queries, mark the saved peer list for
saving, and start a store exchange with a member returning from failure.
User messages go to the first protocol that claims them: store replication,
user events, then keyring operations; a malformed one is counted and dropped.
"""

from __future__ import annotations

import logging

from ..events.user_events import UserEvents
from ..gossip.driver import GossipDriver
from ..gossip.events import (
    Event,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberUpdated,
    UserMessage,
)
from ..logs import log
from ..store.replication import Replicator
from ..store.state import TOPIC_MEMBERS
from .keyring_ops import KeyringQueryError
from .keyring_service import ClusterKeyring
from .known_peers import KnownPeers

__all__ = ["GossipEventRouter"]

_log = logging.getLogger("meshnode.agent")


class GossipEventRouter:
    """The driver's `on_event`: one place that routes every gossip event."""

    def __init__(
        self,
        *,
        replicator: Replicator,
        known_peers: KnownPeers,
        events: UserEvents,
        keyring: ClusterKeyring,
        driver: GossipDriver,
    ) -> None:
        self._replicator = replicator
        self._known_peers = known_peers
        self._events = events
        self._keyring = keyring
        self._driver = driver

    def __call__(self, event: Event) -> None:
        if not isinstance(event, UserMessage):
            # Health answers depend on member states: wake blocking queries.
            self._replicator.tracker.touch(TOPIC_MEMBERS)
            # A member returning from failure may hold writes we lack: a round.
            self._replicator.on_member_event(event)
        match event:
            case MemberJoined(member=m):
                self._known_peers.changed()
                log(_log, "info", "member joined", node=m.name, addr=str(m.addr))
            case MemberLeft(member=m):
                self._known_peers.changed()
                log(_log, "info", "member left", node=m.name)
            case MemberFailed(member=m):
                self._known_peers.changed()
                log(_log, "warning", "member failed", node=m.name, addr=str(m.addr))
            case MemberReaped(name=name):
                self._known_peers.changed()
                log(_log, "info", "member reaped", node=name)
            case MemberUpdated(member=m):
                log(_log, "debug", "member updated", node=m.name)
            case UserMessage():
                self._on_user(event)

    def _on_user(self, event: UserMessage) -> None:
        payload = event.payload
        if not payload or self._replicator.on_user(payload, event.source):
            return
        if self._events.on_user(payload):
            return
        try:
            self._keyring.on_user(payload)
        except KeyringQueryError as exc:
            self._driver.counters.add("user.rejected")
            log(
                _log,
                "warning",
                "dropped malformed keyring message",
                source=str(event.source),
                reason=str(exc),
            )
