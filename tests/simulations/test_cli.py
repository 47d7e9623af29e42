"""`python -m simulations`: files written, exit codes, and the line that reproduces a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from simulations.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_run_writes_csv_and_ends_with_the_trace(tmp_path: Path, capsys: object) -> None:
    code = main(["convergence", "--nodes", "30,40", "--seed", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("trace sha256=")
    assert sum(1 for line in lines if line.startswith("trace sha256=")) == 2
    rows = (tmp_path / "convergence-n30-s3.csv").read_text().splitlines()
    assert rows[0] == "nodes,curve,time_s,covered,fraction"
    assert rows[-1].endswith(",1.000000")
    # Either a plot of both N, or a note saying why not (matplotlib is optional).
    png = tmp_path / "convergence-n30-40-s3.png"
    assert png.exists() or "PNG skipped: matplotlib is not installed" in out


def test_outcome_not_reached_exits_one_with_the_seed() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations",
            "join",
            "--nodes",
            "20",
            "--seed",
            "9",
            "--loss",
            "1.0",
            "--duration-s",
            "5",
            "--no-files",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "outcome NOT reached" in proc.stdout
    assert (
        "reproduce with: python -m simulations join --nodes 20 --seed 9 --loss 1.0 "
        "--duration-s 5.0\n" in proc.stdout
    )
    assert proc.stdout.strip().splitlines()[-1].startswith("trace sha256=")


def test_usage_error_exits_two() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simulations", "nosuch", "--nodes", "5", "--seed", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2


def test_meshnode_simulate_runs_the_same_cli(capsys: object) -> None:
    from meshnode.cli import main as meshnode_main

    code = meshnode_main(["simulate", "join", "--nodes", "20", "--seed", "4", "--no-files"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("trace sha256=")
    assert meshnode_main(["simulate", "nosuch", "--nodes", "5", "--seed", "1"]) == 2
