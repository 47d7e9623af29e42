"""What the agent tells about itself: Consul's /v1/agent/self and /v1/agent/metrics shapes.

Read-only views over the agent's parts; the metric names (`meshnode.gossip.*`)
are what dashboards and operators grep for, so they do not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..addr import format_host_port
from ..gossip.store import Store

if TYPE_CHECKING:
    from .core import Agent

__all__ = ["metrics", "self_info", "store_stats"]


def self_info(agent: Agent) -> dict[str, Any]:
    """Consul's /v1/agent/self: Config, Member, Meta, Stats."""
    config = agent.config
    core = agent.core
    view = agent.membership.self_view()
    dns_bound = agent.dns_bound
    return {
        "Config": {
            "NodeName": config.node_name,
            "NodeID": agent.node_id,
            "Datacenter": config.datacenter,
            "Version": __version__,
            "Server": False,
            "DataDir": str(agent.data_dir),
            "DNSAddr": (
                format_host_port(dns_bound.host, dns_bound.udp_port)
                if dns_bound is not None
                else None
            ),
            "DNSDomain": config.dns.domain if config.dns is not None else None,
        },
        "Member": {
            "Name": view.name,
            "Addr": view.addr,
            "Port": view.port,
            "Tags": view.tags,
            "Status": view.status,
        },
        "Meta": dict(config.tags),
        "Stats": {
            "serf_lan": {
                "members": str(core.num_alive()),
                "incarnation": str(core.incarnation),
                "health_score": str(core.awareness_score),
                "encrypted": str(agent.keyring is not None).lower(),
                "event_queue": str(core.pending_broadcasts()),
            },
            "store": store_stats(agent.replicator.store),
        },
    }


def store_stats(store: Store) -> dict[str, str]:
    """Entries and a digest of the replica: equal digests on two agents mean equal
    replicas (up to 64-bit collisions per bucket), without reading every key."""
    packed = b"".join(b.to_bytes(8, "big") for b in store.digest().buckets)
    return {
        "entries": str(len(store)),
        "index": str(store.index),
        "digest": hashlib.blake2b(packed, digest_size=16).hexdigest(),
    }


def metrics(agent: Agent) -> dict[str, Any]:
    """Consul's /v1/agent/metrics: Timestamp (the agent's wall clock), Gauges, Counters."""
    core = agent.core
    counters = dict(agent.driver.counters.values)
    counters.update({f"core.{k}": v for k, v in core.counters.items()})
    counters.update({f"events.{k}": v for k, v in agent.events.counters().items()})
    counters.update({f"member.{k}": v for k, v in agent.gossip_events.member_counts.values.items()})
    runner = agent.event_runner
    counters.update(
        {
            "events.handler.ran": runner.ran,
            "events.handler.failed": runner.failed,
            "events.handler.timed_out": runner.timed_out,
            "events.handler.dropped": runner.dropped,
            "catalog.malformed_records": agent.catalog.malformed_records,
            "intentions.malformed": agent.intentions.malformed_total,
            "revocations.malformed": agent.revocations.malformed_total,
            "audit.recorded": agent.audit.recorded_total,
            "audit.denied": agent.audit.denied_total,
        }
    )
    if agent.dns_server is not None:
        counters.update(
            {f"dns.{k}": v for k, v in dataclasses.asdict(agent.dns_server.stats).items()}
        )
    states: dict[str, int] = {}
    for m in core.members():
        states[m.state.name.lower()] = states.get(m.state.name.lower(), 0) + 1
    gauges = {
        "members.alive": states.get("alive", 0),
        "members.suspect": states.get("suspect", 0),
        "members.failed": states.get("dead", 0),
        "members.left": states.get("left", 0),
        "health_score": core.awareness_score,
        "broadcast_queue": core.pending_broadcasts(),
    }
    return {
        "Timestamp": time.strftime(
            "%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(agent.clock.wall_s())
        ),
        "Gauges": [
            {"Name": f"meshnode.gossip.{k}", "Value": v, "Labels": {}}
            for k, v in sorted(gauges.items())
        ],
        "Counters": [
            {
                "Name": f"meshnode.gossip.{k}",
                "Count": v,
                "Sum": v,
                "Rate": 0,
                "Min": 0,
                "Max": 0,
                "Mean": 0,
                "Stddev": 0,
                "Labels": {},
            }
            for k, v in sorted(counters.items())
        ],
        "Samples": [],
    }
