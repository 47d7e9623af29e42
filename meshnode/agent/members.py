"""The member list as the catalog and the API see it, read from the gossip core.

`MemberNodes` is the catalog's `NodeSource`; `member_view` is one member as
/v1/agent/members shows it (serf's status integers).

Gossip metadata is CBOR written by each agent about itself (id, dc, version,
ports, tags); a peer's malformed metadata shows as empty rather than failing
a read.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..api.facade import STATUS_ALIVE, STATUS_FAILED, STATUS_LEAVING, STATUS_LEFT, MemberView
from ..gossip.events import Member
from ..gossip.membership import Membership
from ..gossip.messages import State
from ..store.state import NodeInfo

__all__ = [
    "STATE_NAMES",
    "MemberNodes",
    "decode_meta",
    "encode_meta",
    "member_view",
    "node_info",
]

STATE_NAMES = {
    State.ALIVE: "alive",
    State.SUSPECT: "suspect",
    State.LEAVING: "leaving",
    State.LEFT: "left",
    State.DEAD: "failed",
}
# serf's coarser status: a suspect member still counts as alive.
_STATUS = {
    State.ALIVE: STATUS_ALIVE,
    State.SUSPECT: STATUS_ALIVE,
    State.LEAVING: STATUS_LEAVING,
    State.LEFT: STATUS_LEFT,
    State.DEAD: STATUS_FAILED,
}


def encode_meta(meta: dict[str, Any]) -> bytes:
    return cbor2.dumps(meta)


def decode_meta(raw: bytes) -> dict[str, Any]:
    try:
        value = cbor2.loads(raw) if raw else {}
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


def node_info(member: Member) -> NodeInfo:
    meta = decode_meta(member.meta)
    dc = meta.get("dc")
    node_id = meta.get("id")
    return NodeInfo(
        name=member.name,
        address=member.addr.host,
        state=STATE_NAMES[member.state],
        datacenter=dc if isinstance(dc, str) else "dc1",
        node_id=node_id if isinstance(node_id, str) else "",
        meta=meta,
    )


def member_view(member: Member) -> MemberView:
    """One member as the API shows it; tags that are not a map show as none."""
    tags = decode_meta(member.meta).get("tags", {})
    if not isinstance(tags, dict):
        tags = {}
    return MemberView(
        name=member.name,
        addr=member.addr.host,
        port=member.addr.port,
        tags={str(k): str(v) for k, v in tags.items()},
        status=_STATUS[member.state],
        state=STATE_NAMES[member.state],
    )


class MemberNodes:
    """`NodeSource` reading the core's member list at each call (it is in memory)."""

    def __init__(self, core: Membership) -> None:
        self._core = core

    def nodes(self) -> list[NodeInfo]:
        return sorted((node_info(m) for m in self._core.members()), key=lambda n: n.name)

    def node(self, name: str) -> NodeInfo | None:
        member = self._core.member(name)
        return None if member is None else node_info(member)
