"""The simulated network: what happens to one packet between two nodes.

Rules that live here (TigerBeetle's packet simulator, reduced to what SWIM
cares about):
- each packet draws its own one-way delay, so reordering falls out of the
  delay distribution rather than being a separate knob;
- a packet is lost with probability `loss`, and duplicated with probability
  `duplicate` (the copy draws its own delay);
- partitions open and heal on a schedule; a total partition blocks both
  directions between two groups, an asymmetric one only `side_a -> side_b`;
- a push/pull is a TCP exchange: it needs both directions, is never
  duplicated, and one lost segment here stands for a failed exchange;
- a store push (one short stream) retransmits as TCP does: each lost
  segment costs its retransmission timeout (1 s for the handshake, 0.2 s for
  data, doubling), and the push fails past its timeout;
- every draw comes from the one `random.Random` the simulator hands in.

Nodes are small integers (their index in the simulator), so a partition is a
list lookup, not a set of names.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Linux's initial TCP retransmission timeout (RFC 6298), and its floor once
# the handshake measured a LAN round trip (TCP_RTO_MIN).
_INITIAL_RTO_S = 1.0
_MIN_RTO_S = 0.2


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    # A LAN one-way delay: lognormal above a floor, like a switch plus a
    # kernel; the tail makes reordering happen without a reordering knob.
    delay_ms_min: float = 0.1
    delay_ms_median: float = 0.5
    delay_sigma: float = 0.6
    # Cap the tail so a single draw cannot exceed a probe timeout on its own.
    delay_ms_max: float = 50.0
    # "lognormal" or "uniform" (between min and max).
    delay_distribution: str = "lognormal"
    loss: float = 0.0
    duplicate: float = 0.0
    # Push/pull streams are sized: 1 Gbit/s adds 8 ms to a 1 MB full state.
    bandwidth_bytes_per_s: float = 125_000_000.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0 or not 0.0 <= self.duplicate <= 1.0:
            raise ValueError("loss and duplicate are probabilities in [0, 1]")
        if not 0.0 <= self.delay_ms_min <= self.delay_ms_median <= self.delay_ms_max:
            raise ValueError("need 0 <= delay_ms_min <= delay_ms_median <= delay_ms_max")
        if self.delay_distribution not in ("lognormal", "uniform"):
            raise ValueError(f"unknown delay distribution {self.delay_distribution!r}")


@dataclass(frozen=True, slots=True)
class Partition:
    """Blocks traffic between two groups of node indices from `start_s` to `end_s`."""

    start_s: float
    end_s: float
    side_a: frozenset[int]
    side_b: frozenset[int]
    # False: both directions are cut. True: only side_a -> side_b is cut.
    asymmetric: bool = False


@dataclass(slots=True)
class _ActivePartition:
    spec: Partition
    # Group of every node: 1 side_a, 2 side_b, 0 neither.
    group: list[int] = field(default_factory=list)


class Network:
    """Decides the fate of each packet; owns no queue (the simulator's heap is the queue)."""

    def __init__(self, config: NetworkConfig, rng: random.Random, n_nodes: int) -> None:
        self.config = config
        self._rng = rng
        self._n_nodes = n_nodes
        self._active: list[_ActivePartition] = []
        excess_ms = config.delay_ms_median - config.delay_ms_min
        self._mu = math.log(excess_ms) if excess_ms > 0 else None

    # ------------------------------------------------------------------ partitions

    def open_partition(self, spec: Partition) -> None:
        group = [0] * self._n_nodes
        for i in spec.side_a:
            group[i] = 1
        for i in spec.side_b:
            group[i] = 2
        self._active.append(_ActivePartition(spec, group))

    def heal_partition(self, spec: Partition) -> None:
        self._active = [p for p in self._active if p.spec is not spec]

    def blocked(self, src: int, dst: int) -> bool:
        for p in self._active:
            a, b = p.group[src], p.group[dst]
            if a == 1 and b == 2:
                return True
            if a == 2 and b == 1 and not p.spec.asymmetric:
                return True
        return False

    # ------------------------------------------------------------------ fates

    def delay_s(self) -> float:
        cfg = self.config
        if cfg.delay_distribution == "uniform":
            ms = self._rng.uniform(cfg.delay_ms_min, cfg.delay_ms_max)
        elif self._mu is None:
            ms = cfg.delay_ms_min
        else:
            ms = cfg.delay_ms_min + self._rng.lognormvariate(self._mu, cfg.delay_sigma)
        return min(ms, cfg.delay_ms_max) / 1000.0

    def packet_delays_s(self, src: int, dst: int) -> list[float]:
        """One-way delays of the copies of a datagram that arrive; empty means lost."""
        if self._active and self.blocked(src, dst):
            return []
        cfg = self.config
        rng = self._rng
        if cfg.loss and rng.random() < cfg.loss:
            return []
        delays = [self.delay_s()]
        if cfg.duplicate and rng.random() < cfg.duplicate:
            delays.append(self.delay_s())
        return delays

    def stream_delay_s(self, src: int, dst: int, n_bytes: int) -> float | None:
        """Delay of one push/pull half (connect + data), or None when the exchange fails."""
        if self._active and (self.blocked(src, dst) or self.blocked(dst, src)):
            return None
        cfg = self.config
        if cfg.loss and self._rng.random() < cfg.loss:
            return None
        return self.delay_s() + n_bytes / cfg.bandwidth_bytes_per_s

    def retransmitted_stream_delay_s(
        self, src: int, dst: int, n_bytes: int, timeout_s: float
    ) -> float | None:
        """Delay of one short stream that TCP retransmits, or None past `timeout_s`.

        Each of the three segments that open it and carry its data (SYN,
        SYN-ACK, data) may be lost; Linux retransmits a handshake segment
        after 1 s, then 2 s..., and data after its minimum RTO, 0.2 s, doubling.
        """
        if self._active and (self.blocked(src, dst) or self.blocked(dst, src)):
            return None
        cfg = self.config
        waited_s = 0.0
        for first_rto_s in (_INITIAL_RTO_S, _INITIAL_RTO_S, _MIN_RTO_S):
            rto_s = first_rto_s
            while cfg.loss and self._rng.random() < cfg.loss:
                waited_s += rto_s
                rto_s *= 2
                if waited_s > timeout_s:
                    return None
        return waited_s + 3 * self.delay_s() + n_bytes / cfg.bandwidth_bytes_per_s
