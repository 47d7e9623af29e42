"""The agent's gossip keyring: loaded from the data dir, changed by cluster-wide queries.

`load_keyring` decides at start which keys the agent holds (the data dir
wins over `--encrypt`: a rotated cluster must not fall back to the first
key). `ClusterKeyring` runs serf's model of `keyring_ops`: it gossips a query,
applies the queries it receives to its own keyring and persists them, and
gathers the answers for the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..api.facade import KeyringError, KeyringReport
from ..gossip.driver import GossipDriver
from ..gossip.keyring import Keyring
from ..gossip.membership import Membership
from ..gossip.messages import Addr, State
from ..logs import log
from ..store.persist import Persistence
from . import keyring_ops
from .keys import KeyFormatError, decode_key

__all__ = ["KEYRING_QUERY_TIMEOUT_S", "ClusterKeyring", "load_keyring"]

_log = logging.getLogger("meshnode.agent")

# A keyring operation waits this long for every alive member to answer.
KEYRING_QUERY_TIMEOUT_S = 5.0


def load_keyring(persist: Persistence, flag_key: str | None) -> Keyring | None:
    """The stored keyring, else one made of `flag_key` (and stored), else None (no encryption)."""
    stored = persist.load_keyring()
    if stored is not None:
        keys, primary = stored
        if flag_key is not None and decode_key(flag_key) not in keys:
            log(
                _log,
                "warning",
                "ignoring --encrypt: the data dir has a keyring, "
                "rotate keys with `meshnode keyring`",
            )
        return Keyring(keys, primary=primary)
    if flag_key is None:
        return None
    key = decode_key(flag_key)
    persist.save_keyring([key], key)
    return Keyring([key])


class ClusterKeyring:
    """Keyring operations across the cluster, as this agent asks and answers them."""

    def __init__(
        self,
        keyring: Keyring | None,
        persist: Persistence,
        core: Membership,
        driver: GossipDriver,
        *,
        node_name: str,
        datacenter: str,
        local_addr: Callable[[], Addr],
    ) -> None:
        self.keyring = keyring
        self._persist = persist
        self._core = core
        self._driver = driver
        self._node_name = node_name
        self._datacenter = datacenter
        self._local_addr = local_addr
        self._seen_queries = keyring_ops.SeenQueries()
        self._tallies: dict[bytes, keyring_ops.Tally] = {}
        self._tally_events: dict[bytes, trio.Event] = {}

    async def query(self, op: str, key_text: str | None) -> KeyringReport:
        """Run `op` on every member's keyring and report what each now holds."""
        if self.keyring is None:
            raise KeyringError("gossip encryption is off on this agent (started with --dev)")
        key = b""
        if key_text is not None:
            try:
                key = decode_key(key_text)
            except KeyFormatError as exc:
                raise KeyringError(str(exc)) from None
        qid = keyring_ops.new_query_id()
        me = self._local_addr()
        query = keyring_ops.KeyringQuery(qid, op, key, self._node_name, me.host, me.port)
        self._tallies[qid] = tally = keyring_ops.Tally()
        expected = {m.name for m in self._core.members() if m.state in (State.ALIVE, State.SUSPECT)}
        try:
            # Our own answer first, then everyone else's by gossip.
            self._tally_events[qid] = trio.Event()
            self._answer(query)
            self._driver.apply(lambda now: self._core.broadcast_user(query.encode()))
            with trio.move_on_after(KEYRING_QUERY_TIMEOUT_S):
                while not expected <= set(tally.replies):
                    self._tally_events[qid] = trio.Event()
                    await self._tally_events[qid].wait()
        finally:
            self._tallies.pop(qid, None)
            self._tally_events.pop(qid, None)
        messages = tally.errors()
        for name in sorted(expected - set(tally.replies)):
            messages[name] = "no answer before the timeout"
        return KeyringReport(
            keys=tally.keys_count(),
            primary_keys=tally.primary_count(),
            num_nodes=len(expected),
            messages=messages,
            datacenter=self._datacenter,
        )

    def on_user(self, payload: bytes) -> bool:
        """Take a gossip user message if it is a keyring query or reply; False otherwise.

        `KeyringQueryError` when it is one but malformed (the caller counts and drops it).
        """
        if payload[0] == keyring_ops.CHANNEL_KEYRING_QUERY:
            self._answer(keyring_ops.decode_query(payload))
            return True
        if payload[0] == keyring_ops.CHANNEL_KEYRING_REPLY:
            reply = keyring_ops.decode_reply(payload)
            tally = self._tallies.get(reply.query_id)
            if tally is not None:
                tally.add(reply)
                self._tally_events[reply.query_id].set()
            return True
        return False

    def _answer(self, q: keyring_ops.KeyringQuery) -> None:
        if not self._seen_queries.first_time(q.query_id) or self.keyring is None:
            return
        error = keyring_ops.apply_operation(self.keyring, q.op, q.key)
        if not error and q.op != "list":
            self._persist.save_keyring(list(self.keyring.keys), self.keyring.primary_key)
            log(_log, "info", "keyring changed", op=q.op, by=q.origin)
        reply = keyring_ops.KeyringReply(
            q.query_id,
            self._node_name,
            error,
            tuple(self.keyring.keys),
            self.keyring.primary_key,
        )
        origin = Addr(q.origin_host, q.origin_port)
        if q.origin == self._node_name:
            self._tallies[q.query_id].add(reply)
            self._tally_events[q.query_id].set()
        else:
            self._core.send_user(origin, reply.encode())
