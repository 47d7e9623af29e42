"""Gossip configuration: memberlist's LAN defaults, each with its reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GossipConfig:
    # One probe a second keeps per-node load constant as N grows (SWIM's
    # central point) and detects a failure in a few seconds on a LAN.
    probe_interval_s: float = 1.0
    # A LAN round trip is well under a millisecond; 0.5 s tolerates a busy
    # peer without delaying the indirect probe past the next interval.
    probe_timeout_s: float = 0.5
    # Three ping-req helpers make a false positive from one lossy path rare
    # while keeping the cost of a probe round constant.
    indirect_checks: int = 3
    # memberlist #37: when the UDP ping goes unanswered, also ping the target
    # over TCP; a member that answers is not suspected. A firewall dropping
    # UDP between two hosts then costs a warning, not a false failure.
    tcp_fallback_probe: bool = True
    # Lifeguard: suspicion lasts suspicion_mult * log10(N) probe intervals,
    # enough for the suspect to hear of it and refute.
    suspicion_mult: int = 4
    # Without confirmations the timeout starts at this multiple of the
    # minimum, and shrinks towards the minimum as independent suspicions arrive.
    suspicion_max_timeout_mult: int = 6
    # Lifeguard local health: a node that misses acks slows its own probing
    # up to this factor instead of accusing healthy peers.
    awareness_max_multiplier: int = 8
    # Gossip to a few random peers five times a second spreads an update to
    # a 100-node cluster in about a second without waiting for probes.
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    # Each update is sent retransmit_mult * ceil(log10(N+1)) times: enough
    # for infection-style spread to reach everyone with high probability.
    retransmit_mult: int = 4
    # Full-state anti-entropy repairs anything gossip lost; 30 s at 32
    # nodes, scaled up logarithmically beyond (memberlist's pushPullScale).
    push_pull_interval_s: float = 30.0
    # After a join, a few quick push/pulls with random members close the
    # window in which a lost announcement would hide the joiner (serf's
    # long join tail) without waiting for the periodic exchange.
    join_push_pull_delays_s: tuple[float, ...] = (0.5, 1.5, 3.0)
    # Every so often a failed member is offered a push/pull: when a
    # partition heals, this is what lets both sides find each other again
    # (serf's reconnect). Faster than serf's 30 s so that a healed partition
    # converges well within 30 s.
    reconnect_interval_s: float = 10.0
    # Dead members are remembered long enough to refute stale alive rumours,
    # and to answer `members` with the failure, then reaped.
    dead_reap_s: float = 24 * 3600.0
    # A Dead member is gossiped for this long; after that only push/pull
    # conveys it (memberlist's GossipToTheDeadTime).
    gossip_to_dead_s: float = 30.0
    # Ethernet MTU minus IP/UDP headers and the encryption envelope.
    udp_mtu_bytes: int = 1400
    # Room left in each packet for the AES-GCM envelope (version, nonce,
    # tag); reserved even in plain-text dev mode so both pack alike.
    envelope_overhead_bytes: int = 29
    # Metadata bigger than this would crowd out piggybacked updates.
    meta_max_bytes: int = 512
    # A push/pull stream bigger than this is refused (about 30k members).
    push_pull_max_bytes: int = 8 * 1024 * 1024
    # Exact replays of an authenticated packet are dropped for this long;
    # older replays are harmless because incarnation numbers order them.
    replay_window_s: float = 120.0
