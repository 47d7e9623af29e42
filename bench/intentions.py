"""Authorize decisions per second with 10,000 intentions, in-process.

Target (issue 3): under 10 microseconds per decision. The decision is four
dictionary look-ups at most, so the figure should not depend on the count.
Run: .venv/bin/python bench/intentions.py [--intentions 10000] [--decisions 1000000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from meshnode.intentions import Intention, IntentionIndex, make_intention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intentions", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    services = [f"svc{i}" for i in range(args.intentions // 10 + 2)]
    rules: dict[tuple[str, str], Intention] = {}
    while len(rules) < args.intentions:
        s, d = rng.choice(services), rng.choice(services)
        rules[(s, d)] = make_intention(s, d, rng.choice(["allow", "deny"]))
    rules[("*", "*")] = make_intention("*", "*", "deny")
    index = IntentionIndex(rules.values())
    pairs = [(rng.choice(services), rng.choice(services)) for _ in range(10_000)]
    per_decision_us = []
    for _ in range(args.runs):
        n = args.decisions
        decide = index.decide
        start = time.perf_counter()
        for i in range(n):
            s, d = pairs[i % 10_000]
            decide(s, d)
        per_decision_us.append((time.perf_counter() - start) / n * 1e6)
    median_us = statistics.median(per_decision_us)
    print(f"intentions={len(index)} decisions/run={args.decisions} runs={args.runs}")
    print(
        f"median {median_us:.2f} us/decision = {1e6 / median_us:,.0f} decisions/s (target < 10 us)"
    )


if __name__ == "__main__":
    main()
