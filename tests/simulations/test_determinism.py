"""One seed, one trace: in one process, and across processes with other hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simulations import Params
from simulations.scenarios import run_failure

SEED = 20261122
ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_same_trace_and_different_seed_different_trace() -> None:
    p = Params(nodes=60, seed=SEED, loss=0.03, duplicate=0.01, encrypt=True, faulty=2)
    first, second = run_failure(p), run_failure(p)
    assert first.trace_sha256 == second.trace_sha256
    assert first.counters == second.counters
    other = run_failure(Params(nodes=60, seed=SEED + 1, loss=0.03, duplicate=0.01, faulty=2))
    assert other.trace_sha256 != first.trace_sha256


def _cli_trace(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations",
            "partition",
            "--nodes",
            "30",
            "--seed",
            "7",
            "--loss",
            "0.02",
            "--no-files",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("trace sha256="), out
    return last


def test_trace_does_not_depend_on_string_hash_randomisation() -> None:
    assert _cli_trace("1") == _cli_trace("2")
