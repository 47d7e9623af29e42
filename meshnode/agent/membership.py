"""Joining and leaving the cluster, and the member list the API shows.

Join addresses may be names, so they are resolved by trio without blocking
the event loop. A joiner reconciles its store itself (the replication core picks the
peers) instead of each member starting an exchange with it; a
restarted agent finds the cluster again through the peers it saved.
"""

from __future__ import annotations

import functools
import logging
import socket

import trio

from ..addr import AddressError, parse_host_port
from ..api.facade import JoinError, MemberView, UnknownMember
from ..config import DEFAULT_GOSSIP_PORT
from ..gossip.driver import GossipDriver
from ..gossip.errors import LocalProtocolError
from ..gossip.membership import Membership
from ..gossip.messages import Addr
from ..logs import log
from ..store.replication import Replicator
from .errors import AgentStartError
from .known_peers import KnownPeers
from .members import member_view

__all__ = ["LEAVE_TIMEOUT_S", "ClusterMembership"]

_log = logging.getLogger("meshnode.agent")

# How long a graceful leave waits for the notice to spread before exiting.
LEAVE_TIMEOUT_S = 5.0
# A restarted agent retries its saved peers from this delay, doubling up to the max.
_REJOIN_DELAY_S = 1.0
_REJOIN_DELAY_S_MAX = 30.0


class ClusterMembership:
    """This agent's membership operations: join, leave, force-leave, list."""

    def __init__(
        self,
        core: Membership,
        driver: GossipDriver,
        replicator: Replicator,
        known_peers: KnownPeers,
        *,
        node_name: str,
    ) -> None:
        self._core = core
        self._driver = driver
        self._replicator = replicator
        self._known_peers = known_peers
        self._node_name = node_name

    def members(self) -> list[MemberView]:
        return sorted((member_view(m) for m in self._core.members()), key=lambda v: v.name)

    def self_view(self) -> MemberView:
        me = self._core.member(self._node_name)
        assert me is not None  # the core always holds itself
        return member_view(me)

    async def join(self, texts: list[str]) -> int:
        """Join through the addresses in `texts`; `JoinError` when none answered."""
        parsed = await self.parse_addrs(texts)
        ok = await self.join_addrs(parsed)
        if ok == 0:
            raise JoinError(
                "no peer answered at "
                + ", ".join(texts)
                + " (is an agent there, with the same encryption key and cluster label?)"
            )
        return ok

    async def join_addrs(self, addrs: list[Addr]) -> int:
        """Join through `addrs`; once in, reconcile our store with one member.

        The joiner pulls what it missed itself, so members need not each
        start a round with every newcomer (N^2 exchanges in a join storm).
        """
        ok = await self._driver.join(addrs)
        if ok > 0:
            self._replicator.reconcile_after_join()
        return ok

    async def join_at_start(
        self,
        nursery: trio.Nursery,
        *,
        join: list[str],
        retry_join: list[str],
        retry_interval_s: float,
        local_addr: Addr,
    ) -> None:
        """`--join` now (`AgentStartError` if none answers), `--retry-join` and saved peers in
        the background."""
        if join:
            addrs = await self.parse_addrs(join)
            if await self.join_addrs(addrs) == 0:
                raise AgentStartError("could not join any of " + ", ".join(join))
        if retry_join:
            retry = await self.parse_addrs(retry_join)
            nursery.start_soon(
                self.keep_joining, retry, "retry-join", retry_interval_s, retry_interval_s
            )
        known = self._known_peers.addresses(exclude=local_addr)
        if known and not join:
            # After a restart, find the cluster again through the peers we knew.
            nursery.start_soon(
                self.keep_joining,
                known,
                "rejoin known peers",
                _REJOIN_DELAY_S,
                _REJOIN_DELAY_S_MAX,
            )

    async def parse_addrs(self, texts: list[str]) -> list[Addr]:
        """Resolve join addresses without blocking the event loop (names may need DNS)."""
        out = []
        for text in texts:
            try:
                host, port = parse_host_port(
                    text, default_port=DEFAULT_GOSSIP_PORT, require_ip=False
                )
            except AddressError as exc:
                raise JoinError(str(exc)) from None
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise JoinError(f"cannot resolve {host!r}: {exc}") from None
            sockaddr = infos[0][4]
            out.append(Addr(str(sockaddr[0]), int(sockaddr[1])))
        return out

    async def keep_joining(
        self, addrs: list[Addr], what: str, delay_s: float, max_delay_s: float
    ) -> None:
        """Try `addrs` until one answers, backing off from `delay_s` to `max_delay_s`."""
        while await self.join_addrs(addrs) == 0:
            await trio.sleep(delay_s)
            delay_s = min(delay_s * 2, max_delay_s)
        log(_log, "info", f"{what} succeeded", peers=len(addrs))

    async def leave(self) -> None:
        """Tell the cluster we leave (waits up to `LEAVE_TIMEOUT_S`), then save known peers."""
        log(_log, "info", "leaving the cluster")
        done = await self._driver.leave(LEAVE_TIMEOUT_S)
        if not done:
            log(_log, "warning", "leave notice not fully spread before the timeout")
        self._known_peers.save()

    def force_leave(self, node: str) -> None:
        try:
            self._driver.apply(functools.partial(self._core.force_leave, node))
        except LocalProtocolError:
            raise UnknownMember(f"no member named {node!r}") from None
