"""Durations as Consul writes them ("10s", "1m30s", "500ms"), the one grammar of meshnode.

Consul parses durations with Go's `time.ParseDuration`, so that is the
grammar: one or more `<number><unit>` parts, summed, with units `ns`, `us`
(micro sign or Greek mu), `ms`, `s`, `m`, `h`; a number may have a fraction (`1.5h`,
`.5s`). Like Go, a bare `"0"` is zero and any other number without a unit is
refused ("30" could mean seconds or nanoseconds: Go says neither). Unlike Go,
there is no sign (no duration here may be negative) and surrounding spaces are
ignored. Callers add their own policy on top: the config takes a JSON number
as seconds and wants a positive value, a health check caps its interval.

Pure functions, no I/O: config, catalog and API all call these.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "GO_DURATION_MAX_S",
    "DurationError",
    "DurationRangeError",
    "format_duration",
    "parse_duration_s",
]

# ASCII digits only: `\d` would take any Unicode digit, which Go refuses.
_PART = re.compile("([0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # MICRO SIGN
    "\u03bcs": 1e-6,  # GREEK SMALL LETTER MU; Go accepts both
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Go's time.Duration is int64 nanoseconds: about 292 years. Anything longer is
# an overflow in Consul, and here it would be a float no timer can use.
GO_DURATION_MAX_S = (2**63 - 1) / 1e9
# Quote at most this much of a bad value in an error, so a message stays one line.
_QUOTE_MAX_CHARS = 40


class DurationError(ValueError):
    """The text is not a duration in Go's syntax."""


class DurationRangeError(DurationError):
    """The text is a duration, but longer than the caller accepts."""


def parse_duration_s(text: str, *, max_s: float = GO_DURATION_MAX_S) -> float:
    """Seconds in `text` (Go's `time.ParseDuration` syntax); `DurationError` with one line.

    `max_s` is the caller's bound (a check interval has no use for a year);
    `DurationRangeError` when the value is above it.
    """
    raw = text.strip()
    quoted = repr(text[:_QUOTE_MAX_CHARS])
    if raw == "0":
        return 0.0
    pos, total = 0, 0.0
    for found in _PART.finditer(raw):
        if found.start() != pos:
            break
        total += float(found.group(1)) * _UNIT_S[found.group(2)]
        pos = found.end()
    if pos == 0 or pos != len(raw):
        raise DurationError(f"invalid duration {quoted}: use a duration such as 10s or 500ms")
    bound_s = min(max_s, GO_DURATION_MAX_S)
    if not math.isfinite(total) or total > bound_s:
        raise DurationRangeError(f"duration {quoted} is more than {bound_s:g} s")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as Consul prints them ("10s", "1m30s", "500ms"); "" for 0."""
    if seconds <= 0:
        return ""
    if seconds < 1:
        return f"{round(seconds * 1000):d}ms"
    minutes, rest_s = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes or hours else ""
    return text + f"{rest_s:g}s"
