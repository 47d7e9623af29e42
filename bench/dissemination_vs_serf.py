#!/usr/bin/env python3
"""Dissemination: how fast a change made on one agent is visible on all N, meshnode vs serf.

For each N in --sizes, a serf cluster and then a meshnode cluster of N agents
on loopback (agent i on 127.0.0.i, as gossip_vs_serf.py) are started, joined
and left to settle. Then, for --rounds rounds each, from agent 1:

- (a) meshnode intention: ``PUT /v1/connect/intentions/exact?source=web&
  destination=db`` with ``{"Action": deny|allow}`` (alternating, so every
  round is a change), seen on each agent by a blocking query on
  ``GET /v1/connect/intentions?index=<i>`` that was parked before the write;
- (b) meshnode user event: ``PUT /v1/event/fire/<name>``, seen by a blocking
  query on ``GET /v1/event/list?name=<name>&index=<i>`` on every agent;
- (c) serf user event: the RPC ``event`` (as ``serf event``), seen by an
  ``-event-handler`` script on every agent appending ``date +%s.%N`` to a
  file; this includes the handler's fork and exec, a few milliseconds.

Per round, the figure is the time until the last agent saw the change
(and the median agent). The table shows medians over rounds, side by side,
with the ratio meshnode/serf. Every wait is bounded by --round-timeout, and
every process is killed by pid at the end (or on Ctrl-C / SIGTERM).

Run: .venv/bin/python bench/dissemination_vs_serf.py [--sizes 10,30] [--rounds 7]
     [--only serf|meshnode] [--round-timeout 10] [--gap 1] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h
import gossip_vs_serf as g

REPO = Path(__file__).resolve().parent.parent
HTTP_PORT = g.MESHNODE_HTTP_PORT
# Blocking queries are parked this long before the write, so that every agent
# is already waiting when the change starts to spread.
PARK_S = 0.3
# The wait= of each blocking query: longer than any round may take.
POLL_WAIT_S = 60


# --------------------------------------------------------------------------
# HTTP with the X-Consul-Index header
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Indexed:
    status: int
    index: int
    body: Any


def parse_indexed(buf: bytes, eof: bool) -> Indexed:
    resp = h.parse_http_response(buf, eof)
    head = buf[: buf.find(b"\r\n\r\n")].decode("latin-1")
    index = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-consul-index" and value.strip().isdigit():
            index = int(value.strip())
    try:
        body = json.loads(resp.body) if resp.body else None
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e}") from e
    return Indexed(resp.status, index, body)


def request_bytes(method: str, ip: str, path: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {ip}:{HTTP_PORT}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\nAccept: application/json\r\n\r\n"
    )
    return head.encode() + body


def exchanges(
    agents: Sequence[g.Agent], method: str, paths: dict[int, str]
) -> list[h.Exchange[int, Indexed]]:
    out = []
    for a in agents:
        sock = h.connect(a.ip, HTTP_PORT)
        req = request_bytes(method, a.ip, paths[a.index])
        out.append(h.Exchange(a.index, sock, req, parse_indexed, close_after=True))
    return out


# --------------------------------------------------------------------------
# What is changed and how a change is recognised
# --------------------------------------------------------------------------


class Probe(ABC):
    """One kind of change on meshnode: how to write it and how to see it."""

    key = ""
    label = ""

    @abstractmethod
    def list_path(self, run_id: str, round_no: int) -> str:
        """The list a blocking query watches for the change."""

    @abstractmethod
    def write(self, run_id: str, round_no: int) -> tuple[str, bytes]:
        """(path, body) of the PUT that makes the change."""

    @abstractmethod
    def seen(self, body: Any, run_id: str, round_no: int) -> bool:
        """Does this list answer show the change?"""


class IntentionProbe(Probe):
    key = "intention"
    label = "(a) meshnode intention change"

    @staticmethod
    def action(round_no: int) -> str:
        return "deny" if round_no % 2 == 0 else "allow"

    def list_path(self, run_id: str, round_no: int) -> str:
        return "/v1/connect/intentions"

    def write(self, run_id: str, round_no: int) -> tuple[str, bytes]:
        body = json.dumps({"Action": self.action(round_no)}).encode()
        return "/v1/connect/intentions/exact?source=web&destination=db", body

    def seen(self, body: Any, run_id: str, round_no: int) -> bool:
        return isinstance(body, list) and any(
            isinstance(i, dict)
            and i.get("SourceName") == "web"
            and i.get("DestinationName") == "db"
            and str(i.get("Action")).lower() == self.action(round_no)
            for i in body
        )


class EventProbe(Probe):
    key = "event"
    label = "(b) meshnode user event"

    @staticmethod
    def name(run_id: str, round_no: int) -> str:
        return f"dissem-{run_id}-{round_no}"

    def list_path(self, run_id: str, round_no: int) -> str:
        return f"/v1/event/list?name={self.name(run_id, round_no)}"

    def write(self, run_id: str, round_no: int) -> tuple[str, bytes]:
        return f"/v1/event/fire/{self.name(run_id, round_no)}", b"x"

    def seen(self, body: Any, run_id: str, round_no: int) -> bool:
        return isinstance(body, list) and len(body) > 0


def meshnode_round(
    probe: Probe, agents: Sequence[g.Agent], run_id: str, round_no: int, timeout_s: float
) -> dict[int, float]:
    """Seconds from the write on agent 1 until each agent's blocking query saw it."""
    base = probe.list_path(run_id, round_no)
    sep = "&" if "?" in base else "?"
    first = h.run_exchanges(exchanges(agents, "GET", {a.index: base for a in agents}), 10.0)
    pending: dict[int, int] = {}
    for a in agents:
        r = first.get(a.index)
        if r is None or r.value is None or r.value.status != 200:
            raise g.RunFailed(f"{a.name} {base}: {r.error if r else 'no reply'} {r!r:.200}")
        pending[a.index] = r.value.index
    by_index = {a.index: a for a in agents}

    def park() -> h.Batch[int, Indexed]:
        paths = {i: f"{base}{sep}index={ix}&wait={POLL_WAIT_S}s" for i, ix in pending.items()}
        return h.Batch(exchanges([by_index[i] for i in pending], "GET", paths))

    batch = park()
    time.sleep(PARK_S)
    path, body = probe.write(run_id, round_no)
    writer = h.connect(agents[0].ip, HTTP_PORT)
    t0 = time.monotonic()
    writer.sendall(request_bytes("PUT", agents[0].ip, path, body))
    times: dict[int, float] = {}
    deadline = t0 + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            for idx, r in batch.collect(deadline - time.monotonic()).items():
                if r.value is not None and probe.seen(r.value.body, run_id, round_no):
                    times[idx] = r.t - t0
                    del pending[idx]
                elif r.value is not None:
                    pending[idx] = r.value.index  # woken by something else: wait again
            if pending and time.monotonic() < deadline:
                batch = park()
        reply = h.run_exchanges([h.Exchange(0, writer, b"", parse_indexed)], 10.0)[0]
    finally:
        writer.close()
    if reply.value is None or reply.value.status != 200:
        raise g.RunFailed(f"PUT {path}: {reply.error or reply.value}")
    return times


def serf_round(
    serf: g.Serf, agents: Sequence[g.Agent], tmp: Path, round_no: int, timeout_s: float
) -> dict[int, float]:
    """Seconds from `serf event` on agent 1 until each agent's handler appended its line."""
    t0_wall = serf.fire_event(agents[0], tmp)
    t0 = time.monotonic()
    times: dict[int, float] = {}
    while len(times) < len(agents) and time.monotonic() - t0 < timeout_s:
        for a in agents:
            if a.index in times:
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                lines = (tmp / "events" / a.name).read_text().split()
                if len(lines) > round_no:
                    times[a.index] = float(lines[round_no]) - t0_wall
        time.sleep(0.01)
    return times


# --------------------------------------------------------------------------
# One cluster
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rounds: int
    round_timeout_s: float
    gap_s: float
    settle_s: float
    probes: tuple[str, ...]


def per_round(times: dict[int, float], n: int) -> tuple[float, float, int]:
    """(last agent, median agent, agents that saw it); one that never did counts as +inf."""
    vals = list(times.values()) + [math.inf] * (n - len(times))
    return max(vals), h.median(vals) or math.inf, len(times)


def run_cluster(
    system: g.System, n: int, opts: Options, gopts: g.Options, keep: list[g.Agent]
) -> dict[str, list[tuple[float, float, int]]]:
    """Start, join and settle N agents, then time `opts.rounds` rounds of each probe."""
    tmp = Path(tempfile.mkdtemp(prefix=f"dissem-{system.name}-{n}-"))
    try:
        g.ports_free([f"127.0.0.{i}" for i in range(1, n + 1)], system.ports())
        system.prepare(tmp)
        agents = g.start_cluster(system, n, tmp, gopts, keep)
        t0 = time.monotonic()
        system.fire_joins(agents[1:], agents[0])
        joined = g.wait_for_all(system.poll_alive, lambda c: c >= n, agents, t0, gopts)
        if len(joined) < n:
            raise g.RunFailed(f"only {len(joined)}/{n} agents saw everyone alive")
        time.sleep(opts.settle_s)
        out: dict[str, list[tuple[float, float, int]]] = {}
        run_id = f"{os.getpid()}-{n}"
        probes: list[Probe] = [p for p in (IntentionProbe(), EventProbe()) if p.key in opts.probes]
        for r in range(opts.rounds):
            if isinstance(system, g.Serf):
                times = serf_round(system, agents, tmp, r, opts.round_timeout_s)
                out.setdefault("serf", []).append(per_round(times, n))
            else:
                for probe in probes:
                    try:
                        times = meshnode_round(probe, agents, run_id, r, opts.round_timeout_s)
                    except (g.RunFailed, OSError) as e:
                        print(f"\n   {probe.key} round {r}: {e}", file=sys.stderr)
                        times = {}
                    out.setdefault(probe.key, []).append(per_round(times, n))
            time.sleep(opts.gap_s)
        return out
    finally:
        for a in list(keep):
            system.close(a)
            system.registry.kill(a.proc)
            system.registry.reap(a.proc)
        keep.clear()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

ROWS = (
    ("intention", "(a) meshnode intention change"),
    ("event", "(b) meshnode user event"),
    ("serf", "(c) serf user event"),
)


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return "timeout" if math.isinf(v) else f"{v * 1000:.0f} ms"


def summary(rounds: list[tuple[float, float, int]]) -> dict[str, Any]:
    return {
        "fewest_agents_reached": min(r[2] for r in rounds),
        "all_s": h.median(r[0] for r in rounds),
        "p50_s": h.median(r[1] for r in rounds),
        "rounds_all_s": [None if math.isinf(r[0]) else r[0] for r in rounds],
        "timeouts": sum(1 for r in rounds if math.isinf(r[0])),
    }


def print_table(n: int, res: dict[str, dict[str, Any]]) -> None:
    serf = res.get("serf", {})
    rows = [
        ["change, seen on", "all agents", "median agent", "ratio all/serf", "timeouts (fewest)"]
    ]
    for key, label in ROWS:
        s = res.get(key)
        if s is None:
            continue
        ratio = "-"
        if key != "serf" and serf.get("all_s") and s["all_s"] is not None:
            ratio = f"{s['all_s'] / serf['all_s']:.2f}x" if not math.isinf(s["all_s"]) else "-"
        rows.append(
            [
                label,
                fmt(s["all_s"]),
                fmt(s["p50_s"]),
                ratio,
                f"{s['timeouts']} ({s['fewest_agents_reached']}/{n})",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n== N = {n} (medians over rounds) ==")
    for j, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            print("-+-".join("-" * w for w in widths))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--sizes", default="10,30", help="cluster sizes (default 10,30)")
    p.add_argument("--rounds", type=int, default=7, help="rounds per probe (default 7)")
    p.add_argument("--only", choices=("serf", "meshnode"), help="run one system only")
    p.add_argument(
        "--probes", default="intention,event", help="meshnode probes (default intention,event)"
    )
    p.add_argument("--round-timeout", type=float, default=10.0, help="bound of a round, s")
    p.add_argument("--gap", type=float, default=1.0, help="pause between rounds, s")
    p.add_argument("--settle", type=float, default=3.0, help="pause after the join, s")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="JSON dir")
    h.add_binary_args(p)
    args = p.parse_args(argv)
    args.size_list = h.cluster_sizes(p, args.sizes)
    args.probe_list = tuple(x for x in args.probes.split(",") if x)
    if not set(args.probe_list) <= {"intention", "event"} or args.rounds < 1:
        p.error("--probes takes intention and/or event; --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    opts = Options(args.rounds, args.round_timeout, args.gap, args.settle, args.probe_list)
    gopts = g.Options(
        timeout_s=60.0,
        idle_s=0.0,
        settle_s=args.settle,
        poll_interval_s=0.1,
        batch=10,
        startup_timeout_s=120.0,
    )
    registry = h.ProcessRegistry()
    registry.install_handlers()
    systems: list[g.System] = []
    if args.only in (None, "serf"):
        systems.append(g.Serf(registry, args.serf))
    if args.only in (None, "meshnode"):
        systems.append(g.Meshnode(registry, args.meshnode))
    versions: dict[str, str] = {}
    for system in list(systems):
        try:
            versions[system.name] = system.check()
        except g.Unavailable as e:
            print(f"!! {e}", file=sys.stderr)
            systems.remove(system)
    if not systems:
        return 1
    options = {"sizes": args.size_list, "rounds": args.rounds, "probes": args.probe_list}
    out_path, doc = h.result_doc("dissemination_vs_serf", args.out, options, versions)
    print(
        f"dissemination_vs_serf: sizes {args.size_list}, {args.rounds} rounds; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    keep: list[g.Agent] = []
    failed = False
    try:
        for n in args.size_list:
            res: dict[str, dict[str, Any]] = {}
            for system in systems:
                print(f"[N={n}] {system.name} ...", end="", flush=True)
                t = time.monotonic()
                try:
                    rounds = run_cluster(system, n, opts, gopts, keep)
                except (g.RunFailed, OSError, h.SerfError) as e:
                    print(f" failed: {e}", flush=True)
                    failed = True
                    continue
                res.update({k: summary(v) for k, v in rounds.items()})
                print(f" {time.monotonic() - t:.0f} s", flush=True)
            doc["results"][str(n)] = res
            h.save_results(out_path, doc)
            print_table(n, res)
    except KeyboardInterrupt:
        print("\ninterrupted; killing agents", file=sys.stderr)
        return 130
    finally:
        h.stop_and_save(registry, [a.proc for a in keep], out_path, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
