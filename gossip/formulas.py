"""SWIM and Lifeguard formulas as free functions, tested by tables.

They follow memberlist's `util.go` so that our timing matches a serf user's
expectations; every argument is explicit so that the simulator can use them.
"""

from __future__ import annotations

import math


def node_scale(n_members: int) -> float:
    """log10 of the cluster size, at least 1, so small clusters keep the base timeout."""
    return max(1.0, math.log10(max(1.0, float(n_members))))


def suspicion_timeout_s(suspicion_mult: int, n_members: int, probe_interval_s: float) -> float:
    """Minimum suspicion timeout: long enough for the suspect to hear and refute."""
    return round(suspicion_mult * node_scale(n_members) * probe_interval_s, 3)


def suspicion_expected_confirmations(suspicion_mult: int, n_members: int) -> int:
    """Lifeguard's k: how many independent suspicions shrink the timer to its minimum.

    With fewer than k+2 members there cannot be k independent confirmers, so
    the timer starts at its minimum instead of waiting for them.
    """
    k = suspicion_mult - 2
    if n_members - 2 < k:
        return 0
    return k


def suspicion_remaining_s(
    n_confirmations: int, k: int, elapsed_s: float, min_s: float, max_s: float
) -> float:
    """Lifeguard's dynamic timeout: from max towards min, logarithmic in confirmations."""
    if k < 1:
        return min_s - elapsed_s
    frac = math.log(n_confirmations + 1.0) / math.log(k + 1.0)
    timeout_s = max(min_s, max_s - frac * (max_s - min_s))
    return timeout_s - elapsed_s


def retransmit_limit(retransmit_mult: int, n_members: int) -> int:
    """How many times one update is sent: grows with log(N) so it reaches everyone."""
    return retransmit_mult * math.ceil(math.log10(n_members + 1))


def push_pull_interval_s(base_interval_s: float, n_members: int) -> float:
    """Anti-entropy interval, constant up to 32 members, then log2-scaled.

    A full-state exchange costs O(N) bytes, so larger clusters space them out
    to keep the per-node bandwidth flat.
    """
    threshold = 32
    if n_members <= threshold:
        return base_interval_s
    multiplier = math.ceil(math.log2(n_members) - math.log2(threshold)) + 1.0
    return base_interval_s * multiplier
