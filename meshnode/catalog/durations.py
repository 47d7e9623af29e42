"""Consul's duration strings ("10s", "500ms", "1m30s") as seconds, and back."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration_s"]

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# A day is far beyond any check interval or TTL; a bound keeps floats sane.
DURATION_MAX_S = 86400.0


def parse_duration_s(text: str) -> float:
    """Go's `time.ParseDuration` syntax (what Consul accepts); ValueError with a short reason."""
    raw = text.strip()
    if raw == "0":
        return 0.0
    pos, total = 0, 0.0
    for found in _PART.finditer(raw):
        if found.start() != pos:
            break
        total += float(found.group(1)) * _UNIT_S[found.group(2)]
        pos = found.end()
    if pos == 0 or pos != len(raw):
        raise ValueError(f"invalid duration {text[:40]!r}: use a duration such as 10s or 500ms")
    if not math.isfinite(total) or total > DURATION_MAX_S:
        raise ValueError(f"duration {text[:40]!r} is more than {DURATION_MAX_S:g} s")
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
