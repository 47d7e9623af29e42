"""Counters of a listener and the rate limit on refusal log lines (proxies and native services)."""

from __future__ import annotations

from dataclasses import dataclass

from ..logs import get_logger, log

__all__ = ["ListenerStats", "LogLimit"]

_log = get_logger("proxy")
# How often a refusal of the same kind is logged per listener; the rest are counted.
_LOG_WINDOW_S = 10.0
_LOG_PER_WINDOW = 20


@dataclass(slots=True)
class ListenerStats:
    """Counters of one listener (Prometheus-style totals plus the live count)."""

    accepted_total: int = 0  # TCP connections accepted
    denied_total: int = 0  # refused by identity or intention
    handshake_failed_total: int = 0  # TLS failed or timed out
    # Closed with no TLS bytes: the catalog's TCP check every 10 s, port scans.
    closed_early_total: int = 0
    # TLS sessions resumed (no certificate crypto), a subset of the handshakes.
    resumed_total: int = 0
    # Closed at once: over the listener's per-address bound of pending handshakes.
    limited_total: int = 0
    failed_total: int = 0  # could not reach the local app or any instance
    cut_total: int = 0  # cut by a deny or the idle timeout
    bytes_in_total: int = 0  # towards the service behind the listener
    bytes_out_total: int = 0  # back to the connecting client
    active: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "Accepted": self.accepted_total,
            "Denied": self.denied_total,
            "HandshakeFailed": self.handshake_failed_total,
            "ClosedEarly": self.closed_early_total,
            "Resumed": self.resumed_total,
            "Limited": self.limited_total,
            "Failed": self.failed_total,
            "Cut": self.cut_total,
            "BytesIn": self.bytes_in_total,
            "BytesOut": self.bytes_out_total,
            "Active": self.active,
        }


class LogLimit:
    """At most `_LOG_PER_WINDOW` refusal lines per window; the rest are counted.

    A flood of refused peers must not turn into a flood of log lines.
    """

    def __init__(self) -> None:
        self._window_start_s = -_LOG_WINDOW_S
        self._lines = 0
        self._suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start_s >= _LOG_WINDOW_S:
            if self._suppressed:
                log(_log, "info", "refusals not logged", count=self._suppressed)
            self._window_start_s, self._lines, self._suppressed = now, 0, 0
        self._lines += 1
        if self._lines > _LOG_PER_WINDOW:
            self._suppressed += 1
            return False
        return True
