"""What a run reports: coverage curves, percentiles, the summary text, CSV and PNG.

A curve is the sorted list of times (seconds since its phase began) at which
one more unit was covered: a node reaching a full view, a survivor detecting
a crash, a node receiving a broadcast. Everything else derives from it.
"""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MILESTONES = (0.5, 0.99, 0.999, 1.0)


@dataclass(slots=True)
class Curve:
    label: str
    total: int  # units to cover (nodes, or survivor x crashed pairs)
    times_s: list[float] = field(default_factory=list)

    def add(self, time_s: float) -> None:
        self.times_s.append(time_s)

    def time_to(self, fraction: float) -> float | None:
        """Seconds until `fraction` of the units were covered, None if never."""
        need = max(1, math.ceil(fraction * self.total - 1e-9))
        times = sorted(self.times_s)
        return times[need - 1] if len(times) >= need else None

    @property
    def covered(self) -> int:
        return len(self.times_s)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _fmt_s(value: float | None) -> str:
    return "never" if value is None else f"{value:.3f}s"


def coverage_line(curve: Curve) -> str:
    parts = [f"{m * 100:g}%={_fmt_s(curve.time_to(m))}" for m in MILESTONES]
    return f"{curve.label}: {curve.covered}/{curve.total} covered; " + " ".join(parts)


def distribution_line(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: none"
    qs = " ".join(f"p{q:g}={percentile(values, q):.3f}s" for q in (50, 90, 99))
    return f"{label}: n={len(values)} min={min(values):.3f}s {qs} max={max(values):.3f}s"


def write_csv(path: Path, curves: list[tuple[int, Curve]]) -> None:
    """One row per covered unit: the step curve, for any plotting tool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["nodes", "curve", "time_s", "covered", "fraction"])
        for n_nodes, curve in curves:
            for i, t in enumerate(sorted(curve.times_s), start=1):
                out.writerow([n_nodes, curve.label, f"{t:.6f}", i, f"{i / curve.total:.6f}"])


Reference = tuple[str, list[float], list[float]]  # label, times_s, fractions


def write_png(
    path: Path,
    curves: list[tuple[int, Curve]],
    title: str,
    references: Sequence[Reference] = (),
) -> str:
    """Plot every curve on one set of axes; matplotlib is optional (the `sim` extra)."""
    try:
        # Imported by name: matplotlib is optional and has no stubs in the test deps.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "PNG skipped: matplotlib is not installed (pip install 'meshnode[sim]')"
    fig, ax = plt.subplots(figsize=(8, 5))
    for n_nodes, curve in curves:
        times = sorted(curve.times_s)
        fractions = [i / curve.total for i in range(1, len(times) + 1)]
        ax.step([0.0, *times], [0.0, *fractions], where="post", label=f"{curve.label} N={n_nodes}")
    for label, times, fractions in references:
        ax.plot(times, fractions, linestyle="--", linewidth=1, label=label)
    ax.set_xlabel("seconds since phase start (virtual)")
    ax.set_ylabel("fraction covered")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"PNG: {path}"
