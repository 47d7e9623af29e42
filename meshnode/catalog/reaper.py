"""DeregisterCriticalServiceAfter: which local services have been critical too long (sans-IO).

Rules that live here (Consul's, unless said):

- A service check with ``DeregisterCriticalServiceAfter`` that stays critical
  for longer than that deregisters its service (with its other checks and
  its sidecar) on the agent that owns it.
- The duration is raised to `min_after_s` (Consul's one minute): a check
  starts critical until its first run, and a restart reads every check again,
  so a shorter limit would reap healthy services that are merely starting.
- The time critical is counted from when this agent first saw the check
  critical (a registration, a result, or its own start: a restart begins the
  count again, as Consul's does).
- Consul sweeps every 30 s, so it reaps up to 30 s late; here the deadline is
  exact. `next_deadline()` says when to call `due(now)`; the driver sleeps
  until then, or until `observe` changes the answer. Time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEREGISTER_AFTER_MIN_S", "CriticalReaper"]

# Consul's check_deregister_interval_min.
DEREGISTER_AFTER_MIN_S = 60.0


@dataclass(frozen=True, slots=True)
class _Critical:
    service_id: str
    since: float  # the clock when this agent first saw the check critical
    after_s: float  # the limit, already raised to the floor

    @property
    def deadline(self) -> float:
        return self.since + self.after_s


class CriticalReaper:
    """The critical checks that carry a deregistration limit, and their deadlines."""

    def __init__(self, *, min_after_s: float = DEREGISTER_AFTER_MIN_S) -> None:
        self.min_after_s = min_after_s
        self._critical: dict[str, _Critical] = {}  # by check ID

    def observe(
        self, check_id: str, service_id: str, status: str, after_s: float, now: float
    ) -> bool:
        """A check's current state; True when the next deadline may have moved."""
        if status != "critical" or not service_id or after_s <= 0:
            return self._critical.pop(check_id, None) is not None
        old = self._critical.get(check_id)
        since = now if old is None or old.service_id != service_id else old.since
        new = _Critical(service_id, since, max(after_s, self.min_after_s))
        self._critical[check_id] = new
        return new != old

    def forget(self, check_id: str) -> bool:
        """The check is gone; True when it was counted."""
        return self._critical.pop(check_id, None) is not None

    def next_deadline(self) -> float | None:
        """When the first tracked check passes its limit; None when none is tracked."""
        return min((c.deadline for c in self._critical.values()), default=None)

    def due(self, now: float) -> list[str]:
        """The services to deregister at `now` (sorted, once each); their checks are dropped."""
        late = [i for i, c in self._critical.items() if c.deadline <= now]
        services = {self._critical.pop(i).service_id for i in late}
        return sorted(services)

    def critical_for_s(self, check_id: str, now: float) -> float | None:
        """How long the check has been critical, if it is tracked."""
        found = self._critical.get(check_id)
        return None if found is None else now - found.since
