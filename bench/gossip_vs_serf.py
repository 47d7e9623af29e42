#!/usr/bin/env python3
"""serf vs meshnode: membership gossip on loopback, N agents per cluster.

For each N in --sizes and each of --runs runs, the benchmark starts a serf
cluster, measures it and tears it down, then does the same for meshnode (so
both see the same machine state). Agent i binds 127.0.0.i, same ports on
every address. Per run:

1. start the N agents in batches and wait until each answers its RPC/HTTP
   port (the clock is not running yet);
2. fire "join 127.0.0.1:7946" at agents 2..N at the same moment (all
   requests written within a millisecond, replies collected later) and poll
   every agent until it lists N alive members: join convergence, for the
   median and for the worst agent;
3. wait --settle seconds, then measure every agent over --idle seconds: RSS,
   CPU % of one core, gossip bytes sent per second (serf: memberlist
   udp+tcp "sent" counters from the SIGUSR1 metrics dump; meshnode:
   /v1/agent/metrics);
4. a user event from agent N to all (serf: an event handler on every agent
   appends a timestamp to a file); meshnode has no user events yet: n/a;
5. SIGKILL agent N//2+1 and poll the survivors until each lists it failed.

Run: .venv/bin/python bench/gossip_vs_serf.py [--sizes 10,30] [--runs 3]
     [--only serf|meshnode] [--out bench/results]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import _harness as h

REPO = Path(__file__).resolve().parent.parent
GOSSIP_PORT = 7946
SERF_RPC_PORT = 7373
MESHNODE_HTTP_PORT = 8500
EVENT_NAME = "bench"
MIB = 1024 * 1024

V = TypeVar("V")


class Unavailable(Exception):
    """The system under test cannot run here (binary missing or broken)."""


class RunFailed(Exception):
    pass


@dataclass
class Agent:
    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    rpc: h.SerfRPC | None = None

    @property
    def ip(self) -> str:
        return f"127.0.0.{self.index}"

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclass
class Metric:
    value: float | None
    status: str = "ok"  # ok | timeout | n/a | error
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "status": self.status, "note": self.note}


@dataclass(frozen=True)
class Options:
    timeout_s: float
    idle_s: float
    settle_s: float
    poll_interval_s: float
    batch: int
    startup_timeout_s: float


# --------------------------------------------------------------------------
# Systems under test
# --------------------------------------------------------------------------


class System(ABC):
    name: str
    # None when the system has user events; otherwise the line to print.
    events_unsupported: str | None = None
    # Printed when no agent's gossip byte rate could be measured.
    sent_rate_unavailable = "n/a (no gossip byte counters)"

    def __init__(self, registry: h.ProcessRegistry) -> None:
        self.registry = registry

    @abstractmethod
    def check(self) -> str:
        """Raises Unavailable, or returns a version string."""

    @abstractmethod
    def prepare(self, tmp: Path) -> None:
        """Per-cluster setup (keys, scripts) in the run's temp dir."""

    @abstractmethod
    def spawn(self, index: int, tmp: Path) -> Agent: ...

    @abstractmethod
    def ready(self, agent: Agent) -> bool:
        """One attempt: does the agent answer its API yet?"""

    @abstractmethod
    def ports(self) -> tuple[int, ...]: ...

    @abstractmethod
    def fire_joins(self, joiners: Sequence[Agent], seed: Agent) -> h.Batch[int, Any]:
        """Sends every join request at once and returns without waiting."""

    @abstractmethod
    def poll_alive(self, agents: Sequence[Agent], timeout_s: float) -> dict[int, h.Reply[int]]:
        """How many alive members each agent lists."""

    @abstractmethod
    def poll_status(
        self, agents: Sequence[Agent], target: str, timeout_s: float
    ) -> dict[int, h.Reply[str]]:
        """The status ("alive", "failed", "left", ... or "absent") each agent
        lists for member `target`."""

    @abstractmethod
    def counter_snapshot(self, agents: Sequence[Agent], phase: str) -> dict[int, object]:
        """Gossip-bytes counters of each agent, in a form `sent_rate`
        understands. `phase` is "start", "mid" (every 30 s) or "end" of the
        idle window."""

    @abstractmethod
    def sent_rate(self, snaps: Sequence[object], wall0: float, wall1: float) -> float | None:
        """Bytes/s one agent sent during [wall0, wall1] (time.time()), from
        its snapshots in order; None when the counters can't tell."""

    def fire_event(self, source: Agent, tmp: Path) -> float:
        """Sends one user event from `source`; returns time.time() at send."""
        raise NotImplementedError

    def events_seen(self, agents: Sequence[Agent], tmp: Path) -> dict[int, float]:
        """time.time() at which each agent's handler saw the event."""
        raise NotImplementedError

    def close(self, agent: Agent) -> None:
        if agent.rpc is not None:
            agent.rpc.close()


# -- serf -------------------------------------------------------------------

_METRIC_LINE = re.compile(
    r"^\[(?P<ts>[^\]]+)\]\[(?P<kind>[A-Z])\] '(?P<name>[^']+)': (?P<rest>.*)$"
)
_SUM = re.compile(r"\bSum: ([-+0-9.eE]+)")
SERF_SENT_SUFFIXES = ("memberlist.udp.sent", "memberlist.tcp.sent")


# serf 0.9's agent keeps go-metrics' in-memory sink with 10 s intervals and
# one minute of retention; SIGUSR1 dumps the *completed* intervals only (the
# one still aggregating is skipped), each counter summed within its interval.
SERF_METRICS_INTERVAL_S = 10.0


@dataclass
class SerfDump:
    intervals: set[float]  # start (epoch s) of every completed interval dumped
    sent: dict[float, float]  # interval start -> udp+tcp bytes sent in it


def parse_serf_dump(text: str) -> SerfDump | None:
    intervals: set[float] = set()
    sent: dict[float, float] = {}
    for line in text.splitlines():
        m = _METRIC_LINE.match(line.strip())
        if not m:
            continue
        try:
            start = dt.datetime.strptime(m["ts"][:25], "%Y-%m-%d %H:%M:%S %z").timestamp()
        except ValueError:
            continue
        intervals.add(start)
        if m["kind"] == "C" and m["name"].endswith(SERF_SENT_SUFFIXES):
            s = _SUM.search(m["rest"])
            if s:
                sent[start] = sent.get(start, 0.0) + float(s[1])
    if not intervals:
        return None
    return SerfDump(intervals, sent)


def serf_sent_rate(dumps: Sequence[SerfDump], wall0: float, wall1: float) -> float | None:
    """Mean bytes/s over the whole metrics intervals inside [wall0, wall1]."""
    intervals: set[float] = set()
    sent: dict[float, float] = {}
    for d in dumps:
        intervals |= d.intervals
        sent |= d.sent  # a completed interval never changes
    inside = [i for i in intervals if i >= wall0 and i + SERF_METRICS_INTERVAL_S <= wall1]
    if not inside:
        return None
    return sum(sent.get(i, 0.0) for i in inside) / (len(inside) * SERF_METRICS_INTERVAL_S)


class Serf(System):
    name = "serf"
    sent_rate_unavailable = (
        "n/a (serf counts bytes per whole 10 s interval and none fit in the idle window; "
        "use --idle >= 20)"
    )

    def __init__(self, registry: h.ProcessRegistry, binary: str) -> None:
        super().__init__(registry)
        self.binary = binary
        self.key = ""
        self.handler = Path()

    def check(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise Unavailable(
                f"serf: '{self.binary}' not found; install it with "
                "`apt-get install -y serf` (or `make bench`)"
            )
        self.binary = path
        out = subprocess.run(
            [path, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        version = out.stdout.splitlines()[0] if out.stdout else "unknown"
        with contextlib.suppress(FileNotFoundError, subprocess.SubprocessError):
            deb = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "serf"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if deb.returncode == 0:
                version += f" (Debian package {deb.stdout.strip()})"
        return version

    def ports(self) -> tuple[int, ...]:
        return (GOSSIP_PORT, SERF_RPC_PORT)

    def prepare(self, tmp: Path) -> None:
        # Same as `serf keygen`: 32 random bytes, base64.
        self.key = base64.b64encode(secrets.token_bytes(32)).decode()
        events = tmp / "events"
        events.mkdir()
        self.handler = tmp / "on-event.sh"
        # Timestamp first, then drain the payload from stdin.
        self.handler.write_text(
            f'#!/bin/sh\ndate +%s.%N >> "{events}/$SERF_SELF_NAME"\ncat >/dev/null\n'
        )
        self.handler.chmod(0o755)

    def spawn(self, index: int, tmp: Path) -> Agent:
        ip = f"127.0.0.{index}"
        log = tmp / f"n{index}.log"
        argv = [
            self.binary,
            "agent",
            f"-node=n{index}",
            f"-bind={ip}:{GOSSIP_PORT}",
            f"-rpc-addr={ip}:{SERF_RPC_PORT}",
            "-profile=lan",
            f"-encrypt={self.key}",
            "-log-level=warn",
            # Only our user event runs the script: member events would spawn
            # N*N shells during the join and skew it.
            f"-event-handler=user:{EVENT_NAME}={self.handler}",
        ]
        proc = self.registry.spawn(argv, log, cwd=tmp)
        return Agent(index, proc, log)

    def ready(self, agent: Agent) -> bool:
        try:
            agent.rpc = h.SerfRPC(agent.ip, SERF_RPC_PORT, timeout_s=2.0)
        except (OSError, h.SerfError):
            return False
        return True

    def _rpc(self, agent: Agent) -> h.SerfRPC | None:
        if agent.rpc is None:
            return None
        if agent.rpc.broken:
            try:
                agent.rpc.reconnect(timeout_s=2.0)
            except (OSError, h.SerfError):
                return None
        return agent.rpc

    def fire_joins(self, joiners: Sequence[Agent], seed: Agent) -> h.Batch[int, Any]:
        # Dedicated connections: join replies come only once each push/pull is
        # done, and the polling connections must stay free meanwhile.
        exchanges = []
        for a in joiners:
            rpc = h.SerfRPC(a.ip, SERF_RPC_PORT)
            body = {"Existing": [f"{seed.ip}:{GOSSIP_PORT}"], "Replay": False}
            ex = rpc.request("join", body, a.index)
            ex.close_after = True
            exchanges.append(ex)
        return h.Batch(exchanges)

    def _members(
        self, agents: Sequence[Agent], filt: dict[str, Any], timeout_s: float
    ) -> dict[int, h.Reply[list[dict[str, Any]]]]:
        exchanges = []
        for a in agents:
            rpc = self._rpc(a)
            if rpc is not None:
                exchanges.append(rpc.request("members-filtered", filt, a.index))
        replies = h.run_exchanges(exchanges, timeout_s)
        out: dict[int, h.Reply[list[dict[str, Any]]]] = {}
        for idx, r in replies.items():
            members = r.value.get("Members") if isinstance(r.value, dict) else None
            if r.error is None and not isinstance(members, list):
                r = h.Reply(None, r.t, "no Members in reply")
            out[idx] = h.Reply(members if r.error is None else None, r.t, r.error)
        return out

    def poll_alive(self, agents: Sequence[Agent], timeout_s: float) -> dict[int, h.Reply[int]]:
        filt = {"Tags": {}, "Status": "alive", "Name": ""}
        return {
            idx: h.Reply(
                None if r.value is None else sum(1 for m in r.value if m.get("Status") == "alive"),
                r.t,
                r.error,
            )
            for idx, r in self._members(agents, filt, timeout_s).items()
        }

    def poll_status(
        self, agents: Sequence[Agent], target: str, timeout_s: float
    ) -> dict[int, h.Reply[str]]:
        filt = {"Tags": {}, "Status": "", "Name": re.escape(target)}
        out: dict[int, h.Reply[str]] = {}
        for idx, r in self._members(agents, filt, timeout_s).items():
            status = None
            if r.value is not None:
                status = next(
                    (str(m.get("Status")) for m in r.value if m.get("Name") == target), "absent"
                )
            out[idx] = h.Reply(status, r.t, r.error)
        return out

    def counter_snapshot(self, agents: Sequence[Agent], phase: str) -> dict[int, object]:
        if phase == "start":
            return {}  # only completed intervals count; nothing to note yet
        offsets = {a.index: a.log.stat().st_size for a in agents}
        for a in agents:
            self.registry.kill(a.proc, signal.SIGUSR1)
        # Wait until every log has grown and stopped growing.
        pending = {a.index: a for a in agents}
        last_size = dict(offsets)
        out: dict[int, object] = {}
        deadline = time.monotonic() + 15.0
        while pending and time.monotonic() < deadline:
            time.sleep(0.1)
            for idx, a in list(pending.items()):
                size = a.log.stat().st_size
                if size > offsets[idx] and size == last_size[idx]:
                    with open(a.log, "rb") as f:
                        f.seek(offsets[idx])
                        text = f.read().decode(errors="replace")
                    dump = parse_serf_dump(text)
                    if dump is not None:
                        out[idx] = dump
                        del pending[idx]
                last_size[idx] = size
        return out

    def sent_rate(self, snaps: Sequence[object], wall0: float, wall1: float) -> float | None:
        dumps = [d for d in snaps if isinstance(d, SerfDump)]
        return serf_sent_rate(dumps, wall0, wall1)

    def fire_event(self, source: Agent, tmp: Path) -> float:
        rpc = self._rpc(source)
        if rpc is None:
            raise RunFailed(f"no RPC connection to {source.name}")
        body = {"Name": EVENT_NAME, "Payload": b"x", "Coalesce": False}
        ex = rpc.request("event", body, 0)
        t0 = time.time()
        reply = h.run_exchanges([ex], 10.0)[0]
        if reply.error is not None:
            raise RunFailed(f"serf event via {source.name}: {reply.error}")
        return t0

    def events_seen(self, agents: Sequence[Agent], tmp: Path) -> dict[int, float]:
        seen: dict[int, float] = {}
        for a in agents:
            with contextlib.suppress(OSError, ValueError, IndexError):
                seen[a.index] = float((tmp / "events" / a.name).read_text().split()[0])
        return seen


# -- meshnode ---------------------------------------------------------------

MESHNODE_SENT_COUNTERS = ("meshnode.gossip.udp.sent_bytes", "meshnode.gossip.tcp.sent_bytes")
MESHNODE_STATUS = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}


@dataclass
class MeshSnap:
    t: float
    sent: float | None  # udp+tcp sent_bytes Sum; None if the counters are missing


def _json_body(buf: bytes, eof: bool) -> Any:
    resp = h.parse_http_response(buf, eof)
    if resp.status != 200:
        raise ValueError(f"HTTP {resp.status}: {resp.body[:200]!r}")
    try:
        return json.loads(resp.body) if resp.body else None
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e}") from e


class Meshnode(System):
    name = "meshnode"
    events_unsupported = "n/a (not implemented yet)"
    sent_rate_unavailable = (
        "n/a (/v1/agent/metrics has no meshnode.gossip.{udp,tcp}.sent_bytes counters)"
    )

    def __init__(self, registry: h.ProcessRegistry, binary: Path) -> None:
        super().__init__(registry)
        self.binary = binary
        self.key = ""

    def _keygen(self) -> str:
        if not os.access(self.binary, os.X_OK):
            raise Unavailable(
                f"meshnode: {self.binary} not found; create the venv first (`make test`)"
            )
        try:
            out = subprocess.run(
                [str(self.binary), "keygen"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.SubprocessError as e:
            raise Unavailable(f"meshnode: `{self.binary} keygen` failed: {e}") from e
        key = out.stdout.strip()
        try:
            ok = out.returncode == 0 and len(base64.b64decode(key, validate=True)) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise Unavailable(
                f"meshnode: `{self.binary} keygen` did not print a key "
                f"(exit {out.returncode}): {last}"
            )
        return key

    def check(self) -> str:
        self._keygen()
        out = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, timeout=60
        )
        return out.stdout.strip() or "unknown"

    def ports(self) -> tuple[int, ...]:
        return (GOSSIP_PORT, MESHNODE_HTTP_PORT)

    def prepare(self, tmp: Path) -> None:
        self.key = self._keygen()

    def spawn(self, index: int, tmp: Path) -> Agent:
        ip = f"127.0.0.{index}"
        log = tmp / f"n{index}.log"
        argv = [
            str(self.binary),
            "agent",
            "-node",
            f"n{index}",
            "-bind",
            f"{ip}:{GOSSIP_PORT}",
            "-http-addr",
            f"{ip}:{MESHNODE_HTTP_PORT}",
            "-dns-addr",
            f"{ip}:8600",
            "-data-dir",
            str(tmp / f"n{index}"),
            "-encrypt",
            self.key,
            "-log-level",
            "warning",
        ]
        proc = self.registry.spawn(argv, log, cwd=tmp)
        return Agent(index, proc, log)

    def _get(
        self, agents: Sequence[Agent], method: str, path: str, timeout_s: float
    ) -> dict[int, h.Reply[Any]]:
        exchanges: list[h.Exchange[int, Any]] = []
        failed: dict[int, h.Reply[Any]] = {}
        for a in agents:
            try:
                sock = h.connect(a.ip, MESHNODE_HTTP_PORT, timeout_s=min(timeout_s, 5.0))
            except OSError as e:
                failed[a.index] = h.Reply(None, time.monotonic(), f"connect: {e}")
                continue
            req = h.http_request(method, a.ip, MESHNODE_HTTP_PORT, path)
            exchanges.append(h.Exchange(a.index, sock, req, _json_body, close_after=True))
        return h.run_exchanges(exchanges, timeout_s) | failed

    def ready(self, agent: Agent) -> bool:
        r = self._get([agent], "GET", "/v1/agent/self", 2.0)[agent.index]
        return r.error is None

    def fire_joins(self, joiners: Sequence[Agent], seed: Agent) -> h.Batch[int, Any]:
        exchanges = []
        path = f"/v1/agent/join/{seed.ip}:{GOSSIP_PORT}"
        for a in joiners:
            sock = h.connect(a.ip, MESHNODE_HTTP_PORT)
            req = h.http_request("PUT", a.ip, MESHNODE_HTTP_PORT, path)
            exchanges.append(h.Exchange(a.index, sock, req, _json_body, close_after=True))
        return h.Batch(exchanges)

    def _members(
        self, agents: Sequence[Agent], timeout_s: float
    ) -> dict[int, h.Reply[list[dict[str, Any]]]]:
        out: dict[int, h.Reply[list[dict[str, Any]]]] = {}
        for idx, r in self._get(agents, "GET", "/v1/agent/members", timeout_s).items():
            if r.error is None and not isinstance(r.value, list):
                r = h.Reply(None, r.t, f"members: expected a JSON list, got {r.value!r:.80}")
            out[idx] = r
        return out

    def poll_alive(self, agents: Sequence[Agent], timeout_s: float) -> dict[int, h.Reply[int]]:
        return {
            idx: h.Reply(
                None if r.value is None else sum(1 for m in r.value if m.get("Status") == 1),
                r.t,
                r.error,
            )
            for idx, r in self._members(agents, timeout_s).items()
        }

    def poll_status(
        self, agents: Sequence[Agent], target: str, timeout_s: float
    ) -> dict[int, h.Reply[str]]:
        out: dict[int, h.Reply[str]] = {}
        for idx, r in self._members(agents, timeout_s).items():
            status = None
            if r.value is not None:
                code = next((m.get("Status") for m in r.value if m.get("Name") == target), None)
                status = "absent" if code is None else MESHNODE_STATUS.get(code, str(code))
            out[idx] = h.Reply(status, r.t, r.error)
        return out

    def counter_snapshot(self, agents: Sequence[Agent], phase: str) -> dict[int, object]:
        t = time.monotonic()
        out: dict[int, object] = {}
        for idx, r in self._get(agents, "GET", "/v1/agent/metrics", 10.0).items():
            if r.error is not None or not isinstance(r.value, dict):
                continue
            sums = [
                float(c.get("Sum", 0.0))
                for c in r.value.get("Counters") or []
                if isinstance(c, dict) and c.get("Name") in MESHNODE_SENT_COUNTERS
            ]
            out[idx] = MeshSnap(t, sum(sums) if sums else None)
        return out

    def sent_rate(self, snaps: Sequence[object], wall0: float, wall1: float) -> float | None:
        mine = [x for x in snaps if isinstance(x, MeshSnap)]
        if len(mine) < 2 or mine[0].sent is None or mine[-1].sent is None:
            return None
        span = mine[-1].t - mine[0].t
        return (mine[-1].sent - mine[0].sent) / span if span > 0 else None


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


def wait_for_all(
    poll: Callable[[Sequence[Agent], float], dict[int, h.Reply[V]]],
    done: Callable[[V], bool],
    agents: Sequence[Agent],
    t0: float,
    opts: Options,
) -> dict[int, float]:
    """Polls the agents not yet done until all are; returns, per agent, the
    seconds from t0 to the first reply that satisfied `done`."""
    times: dict[int, float] = {}
    pending = list(agents)
    deadline = t0 + opts.timeout_s
    while pending:
        now = time.monotonic()
        if now >= deadline:
            break
        replies = poll(pending, max(0.5, min(5.0, deadline - now)))
        for a in pending:
            r = replies.get(a.index)
            if r is not None and r.value is not None and done(r.value):
                times[a.index] = r.t - t0
        pending = [a for a in pending if a.index not in times]
        time.sleep(max(0.0, opts.poll_interval_s - (time.monotonic() - now)))
    return times


def spread(
    times: dict[int, float], expected: int, what: str, timeout_s: float
) -> tuple[Metric, Metric]:
    """(all agents, median agent) from per-agent times; missing = timeout."""
    vals = list(times.values()) + [math.inf] * (expected - len(times))
    note = "" if len(times) == expected else f"{len(times)}/{expected} {what} within {timeout_s:g}s"
    out = []
    for q in (100.0, 50.0):
        v = h.percentile(vals, q)
        if v is None or math.isinf(v):
            out.append(Metric(None, "timeout", note))
        else:
            out.append(Metric(v, "ok", note))
    return out[0], out[1]


def ports_free(ips: Sequence[str], ports: Sequence[int]) -> None:
    for ip in ips:
        for port in ports:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((ip, port)) == 0:
                    raise RunFailed(f"{ip}:{port} is already in use; stop whatever listens there")


def start_cluster(
    system: System, n: int, tmp: Path, opts: Options, keep: list[Agent]
) -> list[Agent]:
    agents: list[Agent] = []
    for start in range(1, n + 1, opts.batch):
        batch = []
        for i in range(start, min(n, start + opts.batch - 1) + 1):
            batch.append(system.spawn(i, tmp))
            keep.append(batch[-1])
        agents += batch
        pending = list(batch)
        deadline = time.monotonic() + opts.startup_timeout_s
        while pending:
            for a in list(pending):
                if a.proc.poll() is not None:
                    raise RunFailed(
                        f"{system.name} agent {a.name} exited with {a.proc.returncode} "
                        f"during startup; log tail:\n{h.log_tail(a.log)}"
                    )
                if system.ready(a):
                    pending.remove(a)
            if pending and time.monotonic() > deadline:
                raise RunFailed(
                    f"{system.name}: {len(pending)} agents not answering after "
                    f"{opts.startup_timeout_s:g}s (first: {pending[0].name}); log tail:\n"
                    f"{h.log_tail(pending[0].log)}"
                )
            if pending:
                time.sleep(0.1)
    return agents


def run_once(system: System, n: int, opts: Options, keep: list[Agent]) -> dict[str, Any]:
    """One cluster of n agents, measured. Agents are appended to `keep` as
    soon as they exist, so the caller can kill them whatever happens."""
    metrics: dict[str, Metric] = {}
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{system.name}-{n}-"))
    try:
        ports_free([f"127.0.0.{i}" for i in range(1, n + 1)], system.ports())
        system.prepare(tmp)
        t_start = time.monotonic()
        agents = start_cluster(system, n, tmp, opts, keep)
        startup_s = time.monotonic() - t_start

        # -- join --------------------------------------------------------
        seed = agents[0]
        batch = system.fire_joins(agents[1:], seed)
        t0 = batch.t_sent
        join_times = wait_for_all(system.poll_alive, lambda c: c >= n, agents, t0, opts)
        metrics["join_all_s"], metrics["join_p50_s"] = spread(
            join_times, n, "agents saw all alive", opts.timeout_s
        )
        join_errors = {
            f"n{i}": r.error for i, r in batch.collect(5.0).items() if r.error is not None
        }
        if join_errors:
            notes.append(f"join errors: {join_errors}")

        # -- idle --------------------------------------------------------
        time.sleep(opts.settle_s)
        idle = measure_idle(system, agents, opts)
        metrics.update(idle)

        # -- dissemination -----------------------------------------------
        source = agents[-1]
        if system.events_unsupported is not None:
            for k in ("event_all_s", "event_p50_s"):
                metrics[k] = Metric(None, "n/a", system.events_unsupported)
        else:
            t_wall = system.fire_event(source, tmp)
            deadline = time.monotonic() + opts.timeout_s
            seen: dict[int, float] = {}
            while len(seen) < n and time.monotonic() < deadline:
                time.sleep(0.02)
                seen = system.events_seen(agents, tmp)
            metrics["event_all_s"], metrics["event_p50_s"] = spread(
                {i: ts - t_wall for i, ts in seen.items()},
                n,
                "handlers fired",
                opts.timeout_s,
            )

        # -- failure detection -------------------------------------------
        victim = agents[n // 2]
        survivors = [a for a in agents if a is not victim]
        system.close(victim)
        t0 = time.monotonic()
        system.registry.kill(victim.proc)
        times = wait_for_all(
            lambda ags, to: system.poll_status(ags, victim.name, to),
            lambda s: s == "failed",
            survivors,
            t0,
            opts,
        )
        metrics["detect_all_s"], metrics["detect_p50_s"] = spread(
            times, n - 1, "survivors saw it failed", opts.timeout_s
        )
        died = [a.name for a in survivors if a.proc.poll() is not None]
        if died:
            notes.append(f"agents exited on their own during the run: {died}")
        return {
            "error": None,
            "startup_s": startup_s,
            "victim": victim.name,
            "event_source": source.name,
            "metrics": {k: m.to_json() for k, m in metrics.items()},
            "join_times_s": {f"n{i}": round(v, 3) for i, v in sorted(join_times.items())},
            "detect_times_s": {f"n{i}": round(v, 3) for i, v in sorted(times.items())},
            "notes": notes,
        }
    except (RunFailed, OSError, h.SerfError) as e:
        return {
            "error": f"{type(e).__name__}: {e}" if not isinstance(e, RunFailed) else str(e),
            "metrics": {k: m.to_json() for k, m in metrics.items()},
            "notes": notes,
        }
    finally:
        for a in keep:
            system.close(a)
            system.registry.kill(a.proc)
        for a in keep:
            system.registry.reap(a.proc)
        keep.clear()
        shutil.rmtree(tmp, ignore_errors=True)


def measure_idle(system: System, agents: Sequence[Agent], opts: Options) -> dict[str, Metric]:
    """RSS (at the end), CPU and gossip bytes/s per agent over the idle
    window. Counters are also read every 30 s inside the window, because
    serf's dumps only keep the last minute."""
    wall0 = time.time()
    snaps = [system.counter_snapshot(agents, "start")]
    cpu0 = {a.index: h.proc_cpu_seconds(a.proc.pid) for a in agents}
    tc0 = time.monotonic()
    remaining = opts.idle_s
    while remaining > 30.0:
        time.sleep(30.0)
        remaining -= 30.0
        snaps.append(system.counter_snapshot(agents, "mid"))
    time.sleep(remaining)
    cpu1 = {a.index: h.proc_cpu_seconds(a.proc.pid) for a in agents}
    tc1 = time.monotonic()
    wall1 = time.time()
    rss = {a.index: h.proc_rss_bytes(a.proc.pid) for a in agents}
    snaps.append(system.counter_snapshot(agents, "end"))

    cpu_pct = []
    for a in agents:
        c0, c1 = cpu0.get(a.index), cpu1.get(a.index)
        if c0 is not None and c1 is not None and tc1 > tc0:
            cpu_pct.append(100.0 * (c1 - c0) / (tc1 - tc0))
    rss_mib = [v / MIB for v in rss.values() if v is not None]
    bps: list[float] = []
    for a in agents:
        rate = system.sent_rate([s[a.index] for s in snaps if a.index in s], wall0, wall1)
        if rate is not None:
            bps.append(rate)

    def agg(vals: list[float], unavailable: str) -> tuple[Metric, Metric]:
        if not vals:
            m = Metric(None, "n/a", unavailable)
            return m, m
        note = "" if len(vals) == len(agents) else f"{len(vals)}/{len(agents)} agents"
        return Metric(sum(vals) / len(vals), "ok", note), Metric(max(vals), "ok", note)

    out: dict[str, Metric] = {}
    out["rss_mib_mean"], out["rss_mib_max"] = agg(rss_mib, "n/a (no VmRSS)")
    out["cpu_pct_mean"], out["cpu_pct_max"] = agg(cpu_pct, "n/a (no /proc stat)")
    out["gossip_bps_mean"], out["gossip_bps_max"] = agg(bps, system.sent_rate_unavailable)
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    ("join_all_s", "join convergence, all agents (worst agent)", "s"),
    ("join_p50_s", "join convergence, median agent", "s"),
    ("detect_all_s", "failure detection, all survivors", "s"),
    ("detect_p50_s", "failure detection, median survivor", "s"),
    ("event_all_s", "event dissemination, all agents", "s"),
    ("event_p50_s", "event dissemination, median agent", "s"),
    ("rss_mib_mean", "RSS per agent, mean", "MiB"),
    ("rss_mib_max", "RSS per agent, max", "MiB"),
    ("cpu_pct_mean", "idle CPU per agent, mean", "% core"),
    ("cpu_pct_max", "idle CPU per agent, max", "% core"),
    ("gossip_bps_mean", "idle gossip sent per agent, mean", "B/s"),
    ("gossip_bps_max", "idle gossip sent per agent, max", "B/s"),
]


def summarize(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median over runs; a timed-out run counts as +inf, n/a runs are left out."""
    vals: list[float] = []
    timeouts = 0
    notes: list[str] = []
    for run in runs:
        m = run.get("metrics", {}).get(key)
        if m is None:
            continue
        if m["status"] == "ok" and m["value"] is not None:
            vals.append(m["value"])
        elif m["status"] == "timeout":
            vals.append(math.inf)
            timeouts += 1
        if m["note"] and m["note"] not in notes:
            notes.append(m["note"])
    med = h.median(vals)
    status = "n/a" if med is None else ("timeout" if math.isinf(med) else "ok")
    return {
        "median": None if med is None or math.isinf(med) else med,
        "status": status,
        "runs_measured": len(vals),
        "timeouts": timeouts,
        "values": [None if math.isinf(v) else v for v in vals],
        "notes": notes,
    }


def fmt_cell(s: dict[str, Any] | None, unit: str, n_runs: int, timeout_s: float) -> str:
    if s is None:
        return "-"
    if s["status"] == "n/a":
        return s["notes"][0] if s["notes"] and s["notes"][0].startswith("n/a") else "n/a"
    if s["status"] == "timeout":
        text = f"timeout (>{timeout_s:g} s)"
    else:
        digits = 3 if unit == "% core" else (1 if unit in ("MiB", "B/s") else 2)
        text = f"{s['median']:.{digits}f}"
    if s["timeouts"]:
        text += f" [{s['timeouts']}/{s['runs_measured']} runs timed out]"
    return text


def print_table(n: int, result: dict[str, Any], timeout_s: float) -> None:
    systems = result
    header = ["metric", "serf median", "meshnode median", "ratio (meshnode/serf)"]
    rows = [header]
    for key, label, unit in ROWS:
        cells = []
        for name in ("serf", "meshnode"):
            sysres = systems.get(name)
            if sysres is None:
                cells.append("-")
            elif sysres.get("unavailable"):
                cells.append("unavailable")
            else:
                cells.append(
                    fmt_cell(sysres["summary"].get(key), unit, len(sysres["runs"]), timeout_s)
                )
        ratio = "n/a"
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
            s = systems["serf"]["summary"][key]["median"]
            m = systems["meshnode"]["summary"][key]["median"]
            if s is not None and m is not None:
                ratio = f"{m / s:.2f}x"
        rows.append([f"{label} ({unit})", *cells, ratio])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"\n== N = {n} ==")
    for j, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            print("-+-".join("-" * w for w in widths))
    for name in ("serf", "meshnode"):
        sysres = systems.get(name)
        if sysres is None:
            continue
        if sysres.get("unavailable"):
            print(f"{name}: {sysres['unavailable']}")
            continue
        per_run = []
        for run in sysres["runs"]:
            if run.get("error"):
                per_run.append("error")
                continue
            m = run["metrics"].get("join_all_s", {})
            per_run.append(f"{m['value']:.2f}" if m.get("value") is not None else "timeout")
        print(f"{name} join (all agents) per run, s: {', '.join(per_run)}")
        for i, run in enumerate(sysres["runs"], 1):
            if run.get("error"):
                print(f"{name} run {i} failed: {run['error']}")
            for note in run.get("notes", []):
                print(f"{name} run {i}: {note}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", default="10,30,60,100", help="cluster sizes (default 10,30,60,100)")
    p.add_argument("--runs", type=int, default=3, help="runs per size and system (default 3)")
    p.add_argument("--only", choices=("serf", "meshnode"), help="run one system only")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="JSON dir")
    p.add_argument("--idle", type=float, default=30.0, help="idle window, s (default 30)")
    p.add_argument(
        "--settle", type=float, default=5.0, help="pause after join before idle, s (default 5)"
    )
    p.add_argument("--timeout", type=float, default=180.0, help="bound of every wait, s")
    p.add_argument("--poll-interval", type=float, default=0.1, help="poll period, s")
    p.add_argument("--batch", type=int, default=10, help="agents started at a time")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="per batch, s")
    h.add_binary_args(p)
    args = p.parse_args(argv)
    args.size_list = h.cluster_sizes(p, args.sizes)
    if args.runs < 1 or args.batch < 1 or args.idle <= 0:
        p.error("--runs, --batch and --idle must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    opts = Options(
        timeout_s=args.timeout,
        idle_s=args.idle,
        settle_s=args.settle,
        poll_interval_s=args.poll_interval,
        batch=args.batch,
        startup_timeout_s=args.startup_timeout,
    )
    registry = h.ProcessRegistry()
    registry.install_handlers()
    systems: list[System] = []
    if args.only in (None, "serf"):
        systems.append(Serf(registry, args.serf))
    if args.only in (None, "meshnode"):
        systems.append(Meshnode(registry, args.meshnode))

    versions: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for system in systems:
        try:
            versions[system.name] = system.check()
        except Unavailable as e:
            unavailable[system.name] = str(e)
            print(f"!! {e}", file=sys.stderr)
    if len(unavailable) == len(systems):
        return 1

    options = {
        "sizes": args.size_list,
        "runs": args.runs,
        **{k: getattr(opts, k) for k in opts.__dataclass_fields__},
    }
    out_path, doc = h.result_doc("gossip_vs_serf", args.out, options, versions)
    print(
        f"gossip_vs_serf: sizes {args.size_list}, {args.runs} runs, idle {opts.idle_s:g} s; "
        f"{', '.join(f'{k} {v}' for k, v in versions.items())}"
    )
    keep: list[Agent] = []
    try:
        for n in args.size_list:
            per_n: dict[str, Any] = {}
            doc["results"][str(n)] = per_n
            for system in systems:
                per_n[system.name] = (
                    {"unavailable": unavailable[system.name]}
                    if system.name in unavailable
                    else {"runs": [], "summary": {}}
                )
            for r in range(1, args.runs + 1):
                for system in systems:
                    if system.name in unavailable:
                        continue
                    t = time.monotonic()
                    print(f"[N={n} run {r}/{args.runs}] {system.name} ...", end="", flush=True)
                    run = run_once(system, n, opts, keep)
                    run["wall_s"] = time.monotonic() - t
                    res = per_n[system.name]
                    res["runs"].append(run)
                    res["summary"] = {key: summarize(res["runs"], key) for key, _, _ in ROWS}
                    j = run["metrics"].get("join_all_s", {})
                    status = (
                        f"error: {run['error'].splitlines()[0]}"
                        if run["error"]
                        else f"join {j['value']:.2f} s"
                        if j.get("value") is not None
                        else "join timeout"
                    )
                    print(f" {status} ({run['wall_s']:.0f} s)", flush=True)
                    h.save_results(out_path, doc)
            print_table(n, per_n, opts.timeout_s)
    except KeyboardInterrupt:
        print("\ninterrupted; killing agents", file=sys.stderr)
        return 130
    finally:
        h.stop_and_save(registry, [a.proc for a in keep], out_path, doc)
    return 1 if unavailable else 0


if __name__ == "__main__":
    sys.exit(main())
