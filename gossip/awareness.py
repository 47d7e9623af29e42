"""Lifeguard local health awareness.

A node that misses acks and nacks is more likely slow itself than surrounded
by failures, so it stretches its own probe interval and timeout instead of
accusing healthy peers.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self._max = max_multiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self._max - 1)

    def scale(self, duration_s: float) -> float:
        return duration_s * (self.score + 1)
