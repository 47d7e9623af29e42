"""What the agent does with each event the gossip core reports.

Member changes wake blocking health queries, mark the saved peer list for
saving, and start a store exchange with a member returning from failure.
User messages go to the first protocol that claims them: store replication,
user events, then keyring operations; a malformed one is counted and dropped.
Member changes are counted as serf counts them (`MemberEventCounts`), for
the metrics.
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

__all__ = ["FLAP_WINDOW_S", "GossipEventRouter", "MemberEventCounts"]

_log = logging.getLogger("meshnode.agent")

# serf's FlapTimeout: a member that comes back this soon after failing flapped.
FLAP_WINDOW_S = 60.0


class MemberEventCounts:
    """Member changes seen since start: serf's member.join/failed/left/update/flap.

    A flap is a join within `FLAP_WINDOW_S` of the same member's failure, by
    the gossip core's state-change times. Failure times are kept only for
    members that are failed now, so the table is bounded by the member list.
    """

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(
            ("joined", "failed", "left", "updated", "flapped"), 0
        )
        self._failed_at_s: dict[str, float] = {}

    def observe(self, event: Event) -> None:
        match event:
            case MemberJoined(member=m):
                self.values["joined"] += 1
                failed_at_s = self._failed_at_s.pop(m.name, None)
                if failed_at_s is not None and m.state_change_s - failed_at_s < FLAP_WINDOW_S:
                    self.values["flapped"] += 1
            case MemberFailed(member=m):
                self.values["failed"] += 1
                self._failed_at_s[m.name] = m.state_change_s
            case MemberLeft(member=m):
                self.values["left"] += 1
                self._failed_at_s.pop(m.name, None)
            case MemberReaped(name=name):
                self._failed_at_s.pop(name, None)
            case MemberUpdated():
                self.values["updated"] += 1
            case _:
                pass


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
        self.member_counts = MemberEventCounts()

    def __call__(self, event: Event) -> None:
        if not isinstance(event, UserMessage):
            self.member_counts.observe(event)
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
