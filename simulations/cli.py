"""The command line: parse, run one scenario for one or several N, report, exit.

Exit codes: 0 the outcome was reached, 1 it was not (with the line to
reproduce it), 2 a usage error.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from meshnode.gossip.config import GossipConfig
from simulations.analysis import serf_model_time_s
from simulations.report import Curve, Reference, write_csv, write_png
from simulations.scenarios import SCENARIOS, Params, Result


def _node_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a node count list: {text!r}") from None
    if not counts or any(n < 2 for n in counts):
        raise argparse.ArgumentTypeError("node counts must be at least 2")
    return counts


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line and exit 2, as everywhere in meshnode's CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"Error: {message} (see `{self.prog} --help`)\n")


def build_parser(prog: str = "python -m simulations") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Deterministic simulation of the real meshnode gossip core.",
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--nodes", type=_node_counts, required=True, help="N, or N1,N2,... (one plot)"
    )
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--loss", type=_probability, default=0.0, help="packet loss probability")
    parser.add_argument("--dup", type=_probability, default=0.0, help="duplication probability")
    parser.add_argument(
        "--duration-s", type=float, default=None, help="virtual seconds for the scenario's phase"
    )
    parser.add_argument("--out", type=Path, default=Path("sim-out"), help="CSV and PNG directory")
    parser.add_argument("--no-files", action="store_true", help="write no CSV or PNG")
    parser.add_argument("--encrypt", action="store_true", help="seal packets with AES-256-GCM")
    parser.add_argument("--delay-ms-median", type=float, default=0.5)
    parser.add_argument("--delay-ms-max", type=float, default=50.0)
    parser.add_argument("--faulty", type=int, default=None, help="crashed or paused nodes")
    parser.add_argument("--pause-s", type=float, default=3.0)
    parser.add_argument(
        "--pause-drops", action="store_true", help="a paused node drops inbound packets"
    )
    parser.add_argument(
        "--warm", action="store_true", help="start converged, without a join storm (large N)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats here")
    return parser


def _reproduce(scenario: str, n_nodes: int, args: argparse.Namespace) -> str:
    words = ["python", "-m", "simulations", scenario, "--nodes", str(n_nodes)]
    words += ["--seed", str(args.seed)]
    if args.loss:
        words += ["--loss", str(args.loss)]
    if args.dup:
        words += ["--dup", str(args.dup)]
    if args.duration_s is not None:
        words += ["--duration-s", str(args.duration_s)]
    if args.encrypt:
        words.append("--encrypt")
    if args.delay_ms_median != 0.5:
        words += ["--delay-ms-median", str(args.delay_ms_median)]
    if args.delay_ms_max != 50.0:
        words += ["--delay-ms-max", str(args.delay_ms_max)]
    if args.faulty is not None:
        words += ["--faulty", str(args.faulty)]
    if args.pause_s != 3.0:
        words += ["--pause-s", str(args.pause_s)]
    if args.pause_drops:
        words.append("--pause-drops")
    if args.warm:
        words.append("--warm")
    return shlex.join(words)


def _serf_references(node_counts: list[int], loss: float) -> list[Reference]:
    """serf's convergence model for the same N, fanout and interval, dashed on the plot."""
    cfg = GossipConfig()
    fractions = [i / 1000 for i in range(5, 1000, 5)]
    refs: list[Reference] = []
    for n in node_counts:
        points = [
            (t, f)
            for f in fractions
            if (
                t := serf_model_time_s(
                    n, f, fanout=cfg.gossip_nodes, interval_s=cfg.gossip_interval_s, loss=loss
                )
            )
            >= 0.0  # the logistic starts above zero at round 0
        ]
        refs.append((f"serf model N={n}", [t for t, _ in points], [f for _, f in points]))
    return refs


def run_one(scenario: str, params: Params) -> tuple[Result, float]:
    started = time.perf_counter()
    result = SCENARIOS[scenario](params)
    return result, time.perf_counter() - started


def main(argv: Sequence[str] | None = None, prog: str = "python -m simulations") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    exit_code = 0
    plotted: list[tuple[int, Curve]] = []
    for n_nodes in args.nodes:
        params = Params(
            nodes=n_nodes,
            seed=args.seed,
            loss=args.loss,
            duplicate=args.dup,
            duration_s=args.duration_s,
            encrypt=args.encrypt,
            delay_ms_median=args.delay_ms_median,
            delay_ms_max=args.delay_ms_max,
            faulty=args.faulty,
            pause_s=args.pause_s,
            pause_drops=args.pause_drops,
            warm=args.warm,
        )
        print(f"== {args.scenario} nodes={n_nodes} seed={args.seed} loss={args.loss}", flush=True)
        if args.profile is not None:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            result, wall_s = run_one(args.scenario, params)
            profiler.disable()
            profiler.dump_stats(args.profile)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        else:
            result, wall_s = run_one(args.scenario, params)
        for line in result.lines:
            print(line)
        c = result.counters
        # A datagram, a push/pull half or an anti-entropy step: one message each.
        messages = c.packets_sent + 2 * c.push_pulls_started + c.anti_entropy_steps
        per_message_us = wall_s / max(messages, 1) * 1e6
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"wall: {wall_s:.2f}s for {result.virtual_s:.1f} virtual s; {messages} messages "
            f"simulated, {per_message_us:.1f} us wall per message; peak RSS {peak_rss_mib:.0f} MiB"
        )
        if result.curves:
            plotted.append((n_nodes, result.curves[result.headline]))
        if not args.no_files:
            stem = f"{args.scenario}-n{n_nodes}-s{args.seed}"
            csv_path = args.out / f"{stem}.csv"
            write_csv(csv_path, [(n_nodes, curve) for curve in result.curves])
            print(f"CSV: {csv_path}")
        if result.ok:
            print("outcome: reached")
        else:
            exit_code = 1
            for failure in result.failures:
                print(f"outcome NOT reached: {failure}")
            print(f"reproduce with: {_reproduce(args.scenario, n_nodes, args)}")
        if not args.no_files and n_nodes == args.nodes[-1]:
            # One plot for every N, written before the last trace line ends the run.
            counts = "-".join(str(n) for n in args.nodes)
            png = args.out / f"{args.scenario}-n{counts}-s{args.seed}.png"
            title = f"{args.scenario}, seed {args.seed}, loss {args.loss}"
            refs = _serf_references(args.nodes, args.loss) if args.scenario == "convergence" else []
            print(write_png(png, plotted, title, refs))
        print(f"trace sha256={result.trace_sha256}", flush=True)
    sys.stdout.flush()
    return exit_code
