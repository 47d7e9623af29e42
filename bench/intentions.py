"""Authorize decisions per second with 10,000 intentions, in-process.

Target (issue 3): under 10 microseconds per decision. The decision is four
dictionary look-ups at most, so the figure should not depend on the count.
Three paths are timed side by side on the same rules and the same pairs:

- ``index.decide``: the pure `IntentionIndex`, the floor;
- ``state.check``: `IntentionState.check` over a replicated store
  (`LocalState`), names validated, the path the proxy will call;
- ``state.authorize``: the same plus parsing the client's SPIFFE URI, what
  ``/v1/agent/connect/authorize`` does before answering.

Run: .venv/bin/python bench/intentions.py [--intentions 10000] [--decisions 1000000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from meshnode.intentions.replica import IntentionState
from meshnode.intentions.rules import Intention, IntentionIndex, make_intention
from meshnode.store.state import LocalState

_PAIRS = 10_000  # distinct (source, destination) questions, cycled through


def _time_us(decide: Callable[[str, str], object], pairs: list[tuple[str, str]], n: int) -> float:
    """Mean microseconds per call over `n` calls."""
    start = time.perf_counter()
    for i in range(n):
        s, d = pairs[i % _PAIRS]
        decide(s, d)
    return (time.perf_counter() - start) / n * 1e6


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

    build_start = time.perf_counter()
    state = IntentionState(LocalState("bench"))
    for ixn in rules.values():
        state.upsert(ixn.source, ixn.destination, ixn.action)
    build_s = time.perf_counter() - build_start

    pairs = [(rng.choice(services), rng.choice(services)) for _ in range(_PAIRS)]
    assert all(index.decide(s, d) == state.check(s, d) for s, d in pairs)
    uri = "spiffe://bench.mesh/ns/default/dc/dc1/svc/{}".format
    uri_pairs = [(uri(s), d) for s, d in pairs]

    def authorize(client_uri: str, target: str) -> object:
        return state.authorize(target, client_uri)

    paths: list[tuple[str, Callable[[str, str], object], list[tuple[str, str]]]] = [
        ("index.decide", index.decide, pairs),
        ("state.check", state.check, pairs),
        ("state.authorize", authorize, uri_pairs),
    ]
    print(
        f"intentions={len(state)} decisions/run={args.decisions} runs={args.runs} "
        f"(10,000 upserts into the store took {build_s:.2f} s)"
    )
    for name, decide, questions in paths:
        median_us = statistics.median(
            _time_us(decide, questions, args.decisions) for _ in range(args.runs)
        )
        print(
            f"{name:16} median {median_us:5.2f} us/decision = "
            f"{1e6 / median_us:>10,.0f} decisions/s (target < 10 us)"
        )


if __name__ == "__main__":
    main()
