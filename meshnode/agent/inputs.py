"""Time and randomness, injected: the agent reads neither itself.

`run_agent` makes one `random.Random` and one `Clock` at the top and the
agent hands them down, so that a test can run an agent on a fixed seed and a
trio `MockClock`, and no decision deep inside reads the system. Each
subsystem gets its own generator drawn from the one, so a change in how often
one of them draws does not shift the others' choices.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = ["Clock", "child_rng", "system_clock"]


@dataclass(frozen=True, slots=True)
class Clock:
    """The two time sources: monotonic for timers, wall for certificates and records."""

    # Seconds on trio's clock (a MockClock in tests): timers, check deadlines.
    monotonic_s: Callable[[], float]
    # Seconds since the epoch: certificate validity, tombstone ages, timestamps.
    wall_s: Callable[[], float]


def system_clock() -> Clock:
    """The real clocks: trio's current time and the system's wall clock."""
    return Clock(monotonic_s=trio.current_time, wall_s=time.time)


def child_rng(rng: random.Random) -> random.Random:
    """An independent generator for one subsystem, seeded from the agent's one."""
    return random.Random(rng.getrandbits(64))
