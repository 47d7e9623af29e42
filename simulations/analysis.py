"""Analytic expectations to hold the measured curves against, as free functions.

- serf's convergence simulator (serf.io/docs/internals/simulator) models an
  infection as a logistic curve with contact rate
  `fanout / N * (1 - loss) * (1 - failed) * 0.5` per gossip round;
- SWIM's infection-style analysis (Das, Gupta, Motivala 2002, after Pittel
  1987): push gossip with fanout b reaches all N in about
  `log_{b+1}(N) + ln(N) / b` rounds, i.e. O(log N).

Neither counts piggybacking on probes, which our core also does, so both are
upper-end expectations for a broadcast at rest.
"""

from __future__ import annotations

import math


def serf_model_time_s(
    n_nodes: int,
    fraction: float,
    *,
    fanout: int = 3,
    interval_s: float = 0.2,
    loss: float = 0.0,
    failed: float = 0.0,
) -> float:
    """Seconds until serf's model reaches `fraction` (< 1: the logistic never reaches 1)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("the logistic model reaches any fraction in (0, 1), never 1")
    contact = fanout / n_nodes * (1.0 - loss) * (1.0 - failed) * 0.5
    rounds = math.log((n_nodes + 1) / (1.0 / fraction - 1.0)) / (contact * n_nodes)
    return rounds * interval_s


def swim_expected_rounds(n_nodes: int, fanout: int = 3) -> float:
    """Rounds for push gossip with fanout b to reach everyone (Pittel's estimate)."""
    return math.log(n_nodes, fanout + 1) + math.log(n_nodes) / fanout
