"""Upstream instance choice: power of two choices on active connections, with ejection.

Rules that live here (sans-IO: time comes in as `now`, randomness from the
`random.Random` passed in):

- Choice: two distinct random candidates among the instances not yet tried
  for this connection and not ejected; the one with fewer active connections
  wins (a tie goes to the first drawn). Two random choices keep the load
  within a small factor of the least-loaded one with no global scan or herd
  (Mitzenmacher), and a freshly added instance fills up at once.
- Ejection: `ejection_failures` consecutive connect or handshake failures
  eject an instance for `ejection_s`, doubled at each further ejection up to
  `ejection_s_max`; a success resets both. Consul's built-in proxy picks at
  random with no retry (its issue #7505); this is Envoy's outlier detection
  in its simplest form.
- Panic: when every untried instance is ejected, the ejected ones are used
  anyway (Envoy's panic threshold at 100 %): a whole destination that had a
  blip must not stay unreachable for the ejection time.
- State is kept only for instances seen recently; `forget_missing` drops the
  rest so a long-lived proxy does not grow with churn.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from .sources import Instance

__all__ = ["Balancer", "BalancerConfig", "ejection_time_s"]


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    # Three in a row tells a dead instance from one unlucky SYN on a busy host.
    ejection_failures: int = 3
    # Longer than a failure-detection round (about 6 s) is pointless: by then
    # the catalog has dropped a dead instance; 10 s covers a restarting one.
    ejection_s: float = 10.0
    ejection_s_max: float = 300.0  # Envoy's max_ejection_time default


def ejection_time_s(config: BalancerConfig, ejections: int) -> float:
    """How long the `ejections`-th consecutive ejection (1-based) lasts."""
    return min(config.ejection_s_max, config.ejection_s * 2.0 ** max(0, ejections - 1))


@dataclass(slots=True)
class _Stats:
    active: int = 0
    failures: int = 0  # consecutive
    ejections: int = 0  # consecutive
    ejected_until: float = 0.0
    total: int = 0
    failed_total: int = 0


@dataclass(slots=True)
class Balancer:
    """Per-instance load and health of one upstream's instances."""

    rng: random.Random
    config: BalancerConfig = field(default_factory=BalancerConfig)
    _stats: dict[tuple[str, int], _Stats] = field(default_factory=dict)

    def _get(self, instance: Instance) -> _Stats:
        stats = self._stats.get(instance.key)
        if stats is None:
            stats = self._stats[instance.key] = _Stats()
        return stats

    def ejected(self, instance: Instance, now: float) -> bool:
        stats = self._stats.get(instance.key)
        return stats is not None and stats.ejected_until > now

    def active(self, instance: Instance) -> int:
        stats = self._stats.get(instance.key)
        return 0 if stats is None else stats.active

    def pick(
        self, instances: Sequence[Instance], now: float, tried: Collection[tuple[str, int]] = ()
    ) -> Instance | None:
        """The instance for the next attempt; None when every instance was tried."""
        untried = [i for i in instances if i.key not in tried]
        if not untried:
            return None
        healthy = [i for i in untried if not self.ejected(i, now)]
        candidates = healthy or untried
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(candidates, 2)
        return second if self.active(second) < self.active(first) else first

    def started(self, instance: Instance) -> None:
        """A connection to `instance` is being attempted or is open."""
        stats = self._get(instance)
        stats.active += 1
        stats.total += 1

    def finished(self, instance: Instance) -> None:
        """A connection counted by `started` is over (after success or failure)."""
        stats = self._get(instance)
        stats.active = max(0, stats.active - 1)

    def succeeded(self, instance: Instance) -> None:
        stats = self._get(instance)
        stats.failures = 0
        stats.ejections = 0
        stats.ejected_until = 0.0

    def failed(self, instance: Instance, now: float) -> bool:
        """Count a connect or handshake failure; True when it ejects the instance."""
        stats = self._get(instance)
        stats.failures += 1
        stats.failed_total += 1
        if stats.failures < self.config.ejection_failures:
            return False
        stats.failures = 0
        stats.ejections += 1
        stats.ejected_until = now + ejection_time_s(self.config, stats.ejections)
        return True

    def forget_missing(self, present: Iterable[Instance]) -> None:
        """Drop idle state of instances no longer in the catalog."""
        keep = {i.key for i in present}
        for key in [k for k, s in self._stats.items() if k not in keep and s.active == 0]:
            del self._stats[key]

    def snapshot(self, now: float) -> list[dict[str, object]]:
        """Per-instance counters for `connect ls` and the proxies endpoint."""
        return [
            {
                "Address": address,
                "Port": port,
                "Active": s.active,
                "Total": s.total,
                "Failed": s.failed_total,
                "Ejected": s.ejected_until > now,
            }
            for (address, port), s in sorted(self._stats.items())
        ]
