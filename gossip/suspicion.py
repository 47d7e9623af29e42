"""The Lifeguard suspicion timer for one suspect member.

It starts at the maximum timeout and shrinks as *independent* members confirm
the suspicion, because k peers agreeing is stronger evidence than one peer's
lossy path. Pure data: the core asks it for its deadline.
"""

from __future__ import annotations

from .formulas import suspicion_remaining_s


class Suspicion:
    __slots__ = ("_confirmers", "incarnation", "k", "max_s", "min_s", "start_s")

    def __init__(
        self,
        *,
        first_accuser: str,
        k: int,
        min_s: float,
        max_s: float,
        now: float,
        incarnation: int,
    ) -> None:
        self.k = k
        self.min_s = min_s
        self.max_s = max_s
        self.start_s = now
        self.incarnation = incarnation
        self._confirmers = {first_accuser}

    def confirm(self, accuser: str) -> bool:
        """Record an accuser; True only for a new, independent one that counts."""
        if len(self._confirmers) - 1 >= self.k or accuser in self._confirmers:
            return False
        self._confirmers.add(accuser)
        return True

    @property
    def confirmations(self) -> int:
        return len(self._confirmers) - 1

    def deadline(self) -> float:
        remaining_s = suspicion_remaining_s(self.confirmations, self.k, 0.0, self.min_s, self.max_s)
        return self.start_s + remaining_s
