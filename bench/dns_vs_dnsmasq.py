"""meshnode's DNS server against dnsmasq, driven by dnsperf on loopback, in the same run.

Both servers answer the same name, web.service.mesh, with three A records.
meshnode runs in its own process, serving a `StaticCatalog` with five
instances: three passing, one warning (filtered out by only_passing) and one
critical, so health filtering and the per-query shuffle are both in play.
dnsmasq gets three `--host-record`s for the same name and no upstream.

Each run measures the two servers one after the other (alternating which goes
first) with `dnsperf -l SECONDS -q OUTSTANDING`: QPS, average latency, lost
queries. A shorter second pass with `dnsperf -v` records every query's latency
for the p99 (per-query printing slows dnsperf, so its QPS is not used). The
table prints each run and the medians; the ratio is meshnode QPS / dnsmasq
QPS from the same run.

Run:  .venv/bin/python bench/dns_vs_dnsmasq.py [--runs 3] [--seconds 10]
          [--outstanding 100] [--latency-seconds 5] [--out bench/results]
Needs: dnsperf and dnsmasq (`scripts/install-debs.sh bench`).
Internal: `--serve PORT` is the meshnode side, started by the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _harness import ProcessRegistry, log_tail, median, percentile

NAME = "web.service.mesh"
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
_READY_TIMEOUT_S = 15.0


def serve(port: int) -> None:
    """The meshnode side: the real server on a StaticCatalog, until killed."""
    import trio

    from meshnode.dns import (
        DnsConfig,
        DnsInstance,
        DnsNode,
        DnsServer,
        InstanceStatus,
        StaticCatalog,
    )

    catalog = StaticCatalog()
    instances = []
    statuses: tuple[InstanceStatus, ...] = ("passing", "passing", "passing", "warning", "critical")
    for i, status in enumerate(statuses, start=1):
        catalog.add_node(DnsNode(f"n{i}", f"10.0.0.{i}", "dc1", {}))
        instances.append(DnsInstance(f"n{i}", f"10.0.0.{i}", 80, 1, (), status, None, f"web{i}"))
    catalog.set_service("web", instances)
    config = DnsConfig(host="127.0.0.1", port=port, only_passing=True)

    async def main() -> None:
        server = DnsServer(catalog, config)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)

    trio.run(main)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _query(port: int) -> bytes:
    qname = b"".join(bytes((len(p),)) + p.encode() for p in NAME.split(".")) + b"\x00"
    packet = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(packet, ("127.0.0.1", port))
        return sock.recv(4096)


def wait_answering(port: int, what: str, log: Path) -> None:
    """Poll with a real query until the server answers (bounded)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            answer = _query(port)
        except OSError:
            continue
        if answer[:2] == b"\x12\x34" and answer[7] == len(ADDRESSES):
            return
        raise SystemExit(f"{what} answered with {answer[7]} records, not {len(ADDRESSES)}")
    raise SystemExit(f"{what} did not answer within {_READY_TIMEOUT_S:g} s:\n{log_tail(log)}")


@dataclass
class Measure:
    qps: float
    avg_latency_ms: float
    lost: int
    p99_latency_ms: float | None = None


_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
_AVG = re.compile(r"Average Latency \(s\):\s+([\d.]+)")
_LOST = re.compile(r"Queries lost:\s+(\d+)")
_VERBOSE_LINE = re.compile(rb"^> \S+ \S+ \S+ ([\d.]+)$", re.MULTILINE)


def dnsperf(port: int, queries: Path, seconds: float, outstanding: int, verbose: bool) -> str:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries)]
    argv += ["-l", f"{seconds:g}", "-q", str(outstanding)]
    if verbose:
        argv.append("-v")
    done = subprocess.run(argv, capture_output=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise SystemExit(f"dnsperf failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace")


def measure(port: int, queries: Path, args: argparse.Namespace) -> Measure:
    text = dnsperf(port, queries, args.seconds, args.outstanding, verbose=False)
    qps, avg, lost = (_QPS.search(text), _AVG.search(text), _LOST.search(text))
    if not (qps and avg and lost):
        raise SystemExit(f"cannot read dnsperf's output:\n{text}")
    result = Measure(float(qps.group(1)), float(avg.group(1)) * 1e3, int(lost.group(1)))
    if args.latency_seconds > 0:
        verbose = dnsperf(port, queries, args.latency_seconds, args.outstanding, verbose=True)
        latencies = [float(m) for m in _VERBOSE_LINE.findall(verbose.encode())]
        p99 = percentile(latencies, 99)
        result.p99_latency_ms = None if p99 is None else p99 * 1e3
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--outstanding", type=int, default=100)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    missing = [tool for tool in ("dnsperf", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: run scripts/install-debs.sh bench", file=sys.stderr)
        return 1
    registry = ProcessRegistry()
    registry.install_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="dns-bench-"))
    queries = workdir / "queries.txt"
    queries.write_text(f"{NAME} A\n" * 10)
    mesh_port, dnsmasq_port = free_port(), free_port()
    mesh_log, dnsmasq_log = workdir / "meshnode.log", workdir / "dnsmasq.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    registry.spawn([sys.executable, __file__, "--serve", str(mesh_port)], mesh_log, env=env)
    dnsmasq = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv"]
    dnsmasq += ["--no-hosts", "--pid-file=", f"--port={dnsmasq_port}", "--bind-interfaces"]
    dnsmasq += ["--listen-address=127.0.0.1"]
    if os.geteuid() == 0:
        dnsmasq += ["--user=root", "--group=root"]
    dnsmasq += [f"--host-record={NAME},{address}" for address in ADDRESSES]
    registry.spawn(dnsmasq, dnsmasq_log)
    runs: list[dict[str, Measure]] = []
    try:
        wait_answering(mesh_port, "meshnode", mesh_log)
        wait_answering(dnsmasq_port, "dnsmasq", dnsmasq_log)
        print(f"{args.runs} runs, dnsperf -l {args.seconds:g} -q {args.outstanding}, {NAME} A")
        print(f"{'run':>3}  {'server':<8} {'QPS':>9} {'avg ms':>7} {'p99 ms':>7} {'lost':>5}")
        for run in range(args.runs):
            order = [("dnsmasq", dnsmasq_port), ("meshnode", mesh_port)]
            if run % 2:
                order.reverse()  # slow drift on the machine hits both alike
            results = {name: measure(port, queries, args) for name, port in order}
            for name, m in results.items():
                print(
                    f"{run + 1:>3}  {name:<8} {m.qps:>9,.0f} {m.avg_latency_ms:>7.3f} "
                    f"{_fmt(m.p99_latency_ms, '>7.3f')} {m.lost:>5}"
                )
            ratio = results["meshnode"].qps / results["dnsmasq"].qps
            print(f"{run + 1:>3}  ratio meshnode/dnsmasq {ratio:.2f}x")
            runs.append(results)
    finally:
        registry.kill_all()
    medians: dict[str, dict[str, float | None]] = {}
    print("median:")
    for name in ("dnsmasq", "meshnode"):
        ms = [r[name] for r in runs]
        mid = medians[name] = {
            "qps": median(x.qps for x in ms),
            "avg_latency_ms": median(x.avg_latency_ms for x in ms),
            "p99_latency_ms": median(x.p99_latency_ms for x in ms if x.p99_latency_ms is not None),
            "lost": median(x.lost for x in ms),
        }
        print(
            f"     {name:<8} {_fmt(mid['qps'], '>9,.0f')} {_fmt(mid['avg_latency_ms'], '>7.3f')} "
            f"{_fmt(mid['p99_latency_ms'], '>7.3f')} {_fmt(mid['lost'], '>5.0f')}"
        )
    ratio_median = median(r["meshnode"].qps / r["dnsmasq"].qps for r in runs)
    print(f"     ratio meshnode/dnsmasq {_fmt(ratio_median, '.2f')}x (median of per-run ratios)")
    rows = [{"run": i + 1} | {k: asdict(v) for k, v in r.items()} for i, r in enumerate(runs)]
    summary = {"medians": medians, "ratio": ratio_median}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"dns_vs_dnsmasq-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"runs": rows, "median": summary}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
