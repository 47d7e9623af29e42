"""The mTLS data plane: a meshnode outbound+inbound proxy pair vs a stunnel4 pair, same run.

Three paths to the same servers on loopback, measured alternately in each run:

- direct: the client talks to the server itself;
- stunnel: client -> stunnel (client=yes, our leaf) -> stunnel (server,
  verify 2, client certificate required) -> server; ECDSA P-256 certificates
  from meshnode's own CA (root, intermediate, leaves), TLS 1.3;
- meshnode: client -> outbound proxy (127.0.0.1:<bind port>) -> inbound proxy
  -> server, each proxy its own process (`--serve`), with static sources:
  the material and the instance come from a JSON file, no agent;
- native: a `meshnode.connect` client (in this process) dials a
  `meshnode.connect` server (its own process, `--native`): one mTLS hop, no
  proxy. iperf3 cannot speak mTLS, so this path's throughput is a native
  bulk sender and a native counting sink (both Python), and its CPU per
  connection counts both ends' TLS (the server process and this one), where
  the other paths count only their proxies.

Measured per path: iperf3 throughput with 1 and 4 streams, new connections
per second through the pair (each connect, 16-byte echo, close; 4 clients
in parallel, `--clients`) with the CPU seconds of both proxy processes per
connection, and the p50/p99 round trip of a 64-byte request/response on one
connection (added latency = path minus direct). Medians over `--runs`; the
ratios are meshnode / stunnel, and native / meshnode (the sidecar pair). The
machine is shared: figures move by 10-20 % between runs, which is why the paths are
alternated and medians are reported.

Run: .venv/bin/python bench/proxy_vs_stunnel.py [--runs 3] [--seconds 5] [--profile DIR]
     [--paths direct,stunnel,meshnode,native] [--clients 4]
Needs: stunnel4 and iperf3 (`scripts/install-debs.sh bench`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from _harness import ProcessRegistry, log_tail, proc_cpu_seconds

from meshnode.connect import MeshStream, ReplicaAuthorizer, Service
from meshnode.logs import setup_logging
from meshnode.proxy import Instance, Proxy, ProxyConfig, TlsMaterial, UpstreamConfig
from meshnode.proxy.testing import (
    StaticAuthorizer,
    StaticCertSource,
    StaticResolver,
    TestCA,
    echo,
)

_HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((_HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {_HOST}:{port} after {timeout_s} s")


# --------------------------------------------------------------------------
# --serve: one proxy of the pair, or the echo server
# --------------------------------------------------------------------------


def _material(data: dict[str, Any]) -> TlsMaterial:
    return TlsMaterial(**data)


def serve_proxy(spec_path: str) -> None:
    """Run one proxy from a JSON spec until killed (a child of the benchmark)."""
    setup_logging("info")
    spec = json.loads(Path(spec_path).read_text())
    material = _material(spec["material"])
    upstreams = tuple(
        UpstreamConfig(u["destination"], u["port"], _HOST) for u in spec.get("upstreams", [])
    )
    resolver = StaticResolver(
        {d: [Instance(_HOST, p)] for d, p in spec.get("instances", {}).items()}
    )
    config = ProxyConfig(
        proxy_id=f"{material.service}-sidecar-proxy",
        service=material.service,
        listen_address=_HOST,
        listen_port=spec.get("listen_port"),
        local_service_address=_HOST,
        local_service_port=spec.get("service_port", 0),
        upstreams=upstreams,
    )
    proxy = Proxy(
        config,
        certs=StaticCertSource(material),
        authorizer=StaticAuthorizer(),
        resolver=resolver,
        rng=random.Random(0),
    )
    trio.run(proxy.run)


async def _echo_server(port: int) -> None:
    await trio.serve_tcp(echo, port, host=_HOST)


# --------------------------------------------------------------------------
# --native: the native server (an echo and a counting sink)
# --------------------------------------------------------------------------

_BULK_BYTES = 256 * 1024


def native_service(material: TlsMaterial, instances: dict[str, int] | None = None) -> Service:
    """A native service with static sources (no agent), allowing everything."""
    return Service(
        material.service,
        certs=StaticCertSource(material),
        decider=ReplicaAuthorizer(StaticAuthorizer()),
        resolver=StaticResolver({d: [Instance(_HOST, p)] for d, p in (instances or {}).items()}),
        rng=random.Random(0),
    )


async def _native_echo(stream: MeshStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def _native_sink(stream: MeshStream) -> None:
    """Count what arrives until EOF, answer the count: the sender's throughput proof."""
    count = 0
    buffer = bytearray(_BULK_BYTES)
    while n := await stream.receive_into(buffer):
        count += n
    await stream.send_all(str(count).encode())


async def _serve_native(spec: list[dict[str, Any]]) -> None:
    handlers = {"echo": _native_echo, "sink": _native_sink}
    async with trio.open_nursery() as nursery:
        for item in spec:
            service = native_service(_material(item["material"]))
            await nursery.start(service.run)
            serve = functools.partial(service.serve, handlers[item["handler"]], host=_HOST)
            await nursery.start(functools.partial(serve, port=item["port"]))


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def iperf_gbps(port: int, streams: int, seconds: float, attempts: int = 3) -> float:
    """iperf3's received rate; a run that ends with no summary (the server still
    busy with the last test, seen now and then) is retried, `attempts` in all."""
    error = ""
    for _ in range(attempts):
        out = subprocess.run(
            ["iperf3", "-c", _HOST, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        result = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
        summary = result.get("end", {}).get("sum_received")
        if out.returncode == 0 and summary is not None:
            return float(summary["bits_per_second"]) / 1e9
        error = str(result.get("error", "")) or f"{out.stdout[-300:]} {out.stderr[-300:]}"
        time.sleep(1.0)
    raise RuntimeError(f"iperf3 failed {attempts} times, last: {error}")


# Opens one connection of a path: plain TCP to a port, or a native dial.
Opener = Callable[[], Awaitable[trio.abc.Stream]]


def _tcp(port: int) -> Opener:
    return functools.partial(trio.open_tcp_stream, _HOST, port)


async def _connection_rate(open_stream: Opener, seconds: float, clients: int) -> int:
    done = 0
    deadline = trio.current_time() + seconds

    async def client() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            stream = await open_stream()
            async with stream:
                await stream.send_all(b"x" * 16)
                got = b""
                while len(got) < 16:
                    chunk = await stream.receive_some(16 - len(got))
                    if not chunk:
                        raise RuntimeError("connection closed before the echo")
                    got += chunk
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return done


async def _round_trips_us(open_stream: Opener, count: int) -> list[float]:
    stream = await open_stream()
    times: list[float] = []
    async with stream:
        payload = b"r" * 64
        for _ in range(count):
            start = time.perf_counter()
            await stream.send_all(payload)
            got = 0
            while got < len(payload):
                got += len(await stream.receive_some(65536))
            times.append((time.perf_counter() - start) * 1e6)
    return times


async def _native_gbps(service: Service, streams: int, seconds: float) -> float:
    total = 0

    async def one() -> None:
        nonlocal total
        buf = bytes(_BULK_BYTES)
        stream = await service.dial("db")
        async with stream:
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                await stream.send_all(buf)
            await stream.send_eof()
            total += int(await stream.receive_some(64))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
    return total * 8 / (trio.current_time() - start) / 1e9


async def _native_connection_rate(service: Service, seconds: float, clients: int) -> int:
    return await _connection_rate(functools.partial(service.dial, "db-echo"), seconds, clients)


async def _native_round_trips_us(service: Service, count: int) -> list[float]:
    return await _round_trips_us(functools.partial(service.dial, "db-echo"), count)


async def _with_native_client(paths: Paths, measure: Any, *args: Any) -> Any:
    """Run one measurement with a native `web` client started (and stopped) around it."""
    service = native_service(paths.client_material, paths.native_instances)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        result = await measure(service, *args)
        nursery.cancel_scope.cancel()
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------
# The three paths
# --------------------------------------------------------------------------


class Paths:
    """Servers, a stunnel pair and a meshnode pair, all on free loopback ports."""

    def __init__(self, workdir: Path, registry: ProcessRegistry, profile_dir: Path | None):
        self.workdir = workdir
        self.registry = registry
        ca = TestCA("bench.mesh", ttl_s=86400)
        self.client_material = ca.material("web")
        self.server_material = ca.material("db")
        self.echo_material = ca.material("db-echo")
        self.iperf_port = _free_port()
        self.echo_port = _free_port()
        self.proxy_pids: dict[str, list[int]] = {}
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.inner_ports: list[int] = []  # the pairs' server sides, up before any client
        # path -> (iperf port, echo port)
        self.ports: dict[str, tuple[int, int]] = {"direct": (self.iperf_port, self.echo_port)}
        spawn = registry.spawn
        spawn(["iperf3", "-s", "-B", _HOST, "-p", str(self.iperf_port)], workdir / "iperf3.log")
        spawn(
            [sys.executable, __file__, "--echo", str(self.echo_port)],
            workdir / "echo.log",
        )
        self._stunnel()
        self._meshnode(profile_dir)
        self._native()
        for port in [self.iperf_port, self.echo_port, *self.inner_ports]:
            _wait_port(port)
        for iperf, echo_port in self.ports.values():
            _wait_port(iperf)
            _wait_port(echo_port)

    def _write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def _stunnel(self) -> None:
        c, s = self.client_material, self.server_material
        ca_file = self._write("roots.pem", c.roots_pem)
        files = {
            "c_cert": self._write("client-chain.pem", c.cert_chain_pem),
            "c_key": self._write("client-key.pem", c.key_pem),
            "s_cert": self._write("server-chain.pem", s.cert_chain_pem),
            "s_key": self._write("server-key.pem", s.key_pem),
        }
        pids = []
        ports = []
        for target_iperf, target_echo in [(self.iperf_port, self.echo_port)]:
            in_iperf, in_echo, out_iperf, out_echo = (_free_port() for _ in range(4))
            common = (
                "foreground = yes\ndebug = 3\nsslVersionMin = TLSv1.3\n"
                "CAfile = {ca}\nverifyChain = yes\n"
            )
            server = common.format(ca=ca_file) + (
                f"pid =\n[iperf]\naccept = {_HOST}:{in_iperf}\nconnect = {_HOST}:{target_iperf}\n"
                f"cert = {files['s_cert']}\nkey = {files['s_key']}\nrequireCert = yes\n"
                f"[echo]\naccept = {_HOST}:{in_echo}\nconnect = {_HOST}:{target_echo}\n"
                f"cert = {files['s_cert']}\nkey = {files['s_key']}\nrequireCert = yes\n"
            )
            client = common.format(ca=ca_file) + (
                f"pid =\nclient = yes\n[iperf]\naccept = {_HOST}:{out_iperf}\n"
                f"connect = {_HOST}:{in_iperf}\ncert = {files['c_cert']}\nkey = {files['c_key']}\n"
                f"[echo]\naccept = {_HOST}:{out_echo}\nconnect = {_HOST}:{in_echo}\n"
                f"cert = {files['c_cert']}\nkey = {files['c_key']}\n"
            )
            for name, conf in (("stunnel-server", server), ("stunnel-client", client)):
                path = self._write(f"{name}.conf", conf)
                proc = self.registry.spawn(["stunnel4", str(path)], self.workdir / f"{name}.log")
                pids.append(proc.pid)
            ports.append((out_iperf, out_echo))
            self.inner_ports += [in_iperf, in_echo]
        self.proxy_pids["stunnel"] = pids
        self.ports["stunnel"] = ports[0]

    def _meshnode(self, profile_dir: Path | None) -> None:
        pids = []
        in_iperf, in_echo, out_iperf, out_echo = (_free_port() for _ in range(4))
        self.inner_ports += [in_iperf, in_echo]
        # One inbound proxy per target service, one outbound proxy with two upstreams.
        specs = [
            (
                "inbound-iperf",
                {
                    "material": _as_dict(self.server_material),
                    "listen_port": in_iperf,
                    "service_port": self.iperf_port,
                },
            ),
            (
                "inbound-echo",
                {
                    "material": _as_dict(self.echo_material),
                    "listen_port": in_echo,
                    "service_port": self.echo_port,
                },
            ),
            (
                "outbound",
                {
                    "material": _as_dict(self.client_material),
                    "upstreams": [
                        {"destination": "db", "port": out_iperf},
                        {"destination": "db-echo", "port": out_echo},
                    ],
                    "instances": {"db": in_iperf, "db-echo": in_echo},
                },
            ),
        ]
        for name, spec in specs:
            path = self._write(f"{name}.json", json.dumps(spec))
            argv = [sys.executable, __file__, "--serve", str(path)]
            if profile_dir is not None and shutil.which("py-spy", path=_venv_bin()):
                out = profile_dir / f"{name}.folded"
                argv = [
                    str(Path(_venv_bin()) / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "-o",
                    str(out),
                    "--nonblocking",
                    "--",
                    *argv,
                ]
            proc = self.registry.spawn(argv, self.workdir / f"{name}.log")
            pids.append(proc.pid)
            if argv[0] != sys.executable:
                self.profilers.append(proc)
        self.proxy_pids["meshnode"] = pids
        self.ports["meshnode"] = (out_iperf, out_echo)

    def _native(self) -> None:
        """One native server process: db's leaf on a counting sink, db-echo's on an echo."""
        sink, echo = _free_port(), _free_port()
        self.native_instances = {"db": sink, "db-echo": echo}
        self.inner_ports += [sink, echo]
        spec = [
            {"material": _as_dict(self.server_material), "port": sink, "handler": "sink"},
            {"material": _as_dict(self.echo_material), "port": echo, "handler": "echo"},
        ]
        path = self._write("native.json", json.dumps(spec))
        argv = [sys.executable, __file__, "--native", str(path)]
        self.proxy_pids["native"] = [self.registry.spawn(argv, self.workdir / "native.log").pid]


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)


def _as_dict(material: TlsMaterial) -> dict[str, Any]:
    return {
        "service": material.service,
        "spiffe_id": material.spiffe_id,
        "trust_domain": material.trust_domain,
        "cert_chain_pem": material.cert_chain_pem,
        "key_pem": material.key_pem,
        "roots_pem": material.roots_pem,
        "generation": material.generation,
    }


def _cpu_s(pids: list[int]) -> float:
    return sum(proc_cpu_seconds(p) or 0.0 for p in pids)


def measure(
    paths: Paths, path: str, seconds: float, tests: set[str], clients: int
) -> dict[str, float]:
    """One run of the chosen measurements on one path."""
    if path == "native":
        return measure_native(paths, seconds, tests, clients)
    iperf, echo = paths.ports[path]
    pids = paths.proxy_pids.get(path, [])
    result = {}
    if "throughput" in tests:
        result["gbps_1"] = iperf_gbps(iperf, 1, seconds)
        result["gbps_4"] = iperf_gbps(iperf, 4, seconds)
    if "connections" in tests:
        cpu_before = _cpu_s(pids)
        connections = trio.run(_connection_rate, _tcp(echo), seconds, clients)
        cpu_after = _cpu_s(pids)
        result["conn_per_s"] = connections / seconds
        result["cpu_ms_per_conn"] = (cpu_after - cpu_before) * 1000 / max(1, connections)
    if "latency" in tests:
        rtts = trio.run(_round_trips_us, _tcp(echo), 2000)
        result["rtt_p50_us"] = _percentile(rtts, 0.5)
        result["rtt_p99_us"] = _percentile(rtts, 0.99)
    return result


def measure_native(paths: Paths, seconds: float, tests: set[str], clients: int) -> dict[str, float]:
    """The same measurements with native ends; CPU counts the server and this client."""
    pids = paths.proxy_pids["native"]
    result = {}
    if "throughput" in tests:
        result["gbps_1"] = trio.run(_with_native_client, paths, _native_gbps, 1, seconds)
        result["gbps_4"] = trio.run(_with_native_client, paths, _native_gbps, 4, seconds)
    if "connections" in tests:
        cpu_before = _cpu_s(pids) + time.process_time()
        connections = trio.run(
            _with_native_client, paths, _native_connection_rate, seconds, clients
        )
        cpu_after = _cpu_s(pids) + time.process_time()
        result["conn_per_s"] = connections / seconds
        result["cpu_ms_per_conn"] = (cpu_after - cpu_before) * 1000 / max(1, connections)
    if "latency" in tests:
        rtts = trio.run(_with_native_client, paths, _native_round_trips_us, 2000)
        result["rtt_p50_us"] = _percentile(rtts, 0.5)
        result["rtt_p99_us"] = _percentile(rtts, 0.99)
    return result


_ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("gbps_1", "throughput, 1 stream (Gb/s)", lambda v: f"{v:.2f}"),
    ("gbps_4", "throughput, 4 streams (Gb/s)", lambda v: f"{v:.2f}"),
    ("conn_per_s", "new connections/s", lambda v: f"{v:.0f}"),
    ("cpu_ms_per_conn", "proxy CPU ms per connection", lambda v: f"{v:.2f}"),
    ("rtt_p50_us", "64 B round trip p50 (us)", lambda v: f"{v:.0f}"),
    ("rtt_p99_us", "64 B round trip p99 (us)", lambda v: f"{v:.0f}"),
]


# (numerator, denominator) of the ratio columns: the proxy pair against stunnel,
# the native pair (no proxy hop) against the sidecar pair.
_RATIOS = [("meshnode", "stunnel"), ("native", "meshnode")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--paths", default="direct,stunnel,meshnode,native")
    parser.add_argument("--tests", default="throughput,connections,latency")
    # 1: each connection's latency through the pair; 16: the proxies' CPU per connection.
    parser.add_argument("--clients", type=int, default=4, help="parallel clients (connections)")
    parser.add_argument("--profile", type=Path, help="py-spy folded stacks of the proxies here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--native", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.native:
        setup_logging("info")
        trio.run(_serve_native, json.loads(Path(args.native).read_text()))
        return 0
    if args.serve:
        serve_proxy(args.serve)
        return 0
    if args.echo:
        trio.run(_echo_server, args.echo)
        return 0
    for tool in ("stunnel4", "iperf3"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: scripts/install-debs.sh bench", file=sys.stderr)
            return 1
    names = args.paths.split(",")
    registry = ProcessRegistry()
    registry.install_handlers()
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="meshnode-bench-proxy-") as tmp:
        workdir = Path(tmp)
        paths: Paths | None = None
        try:
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
            paths = Paths(workdir, registry, args.profile)
            for run in range(args.runs):
                order = names if run % 2 == 0 else list(reversed(names))
                for name in order:
                    found = measure(
                        paths, name, args.seconds, set(args.tests.split(",")), args.clients
                    )
                    results[name].append(found)
                    print(f"run {run + 1} {name}: {json.dumps(found)}", flush=True)
        except Exception:
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name}\n{log_tail(log)}", file=sys.stderr)
            raise
        finally:
            for proc in paths.profilers if paths is not None else []:
                registry.kill(proc, signal.SIGINT)  # py-spy writes its file on SIGINT
                registry.reap(proc, 10.0)
            registry.kill_all()
    medians = {
        n: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for n, runs in results.items()
        if runs
    }
    ratios = [(a, b) for a, b in _RATIOS if a in medians and b in medians]
    header = f"{'median of ' + str(args.runs):32}" + "".join(f"{n:>12}" for n in names)
    header += "".join(f"{a[:6] + '/' + b[:7]:>16}" for a, b in ratios)
    print(header)
    for key, label, fmt in _ROWS:
        if not all(key in m for m in medians.values()):
            continue
        line = f"{label:32}" + "".join(f"{fmt(medians[n][key]):>12}" for n in names)
        for a, b in ratios:
            line += f"{medians[a][key] / max(1e-9, medians[b][key]):>15.2f}x"
        print(line)
    if "direct" in medians and "rtt_p50_us" in medians["direct"]:
        added: dict[str, tuple[float, float]] = {}
        for n in names:
            if n != "direct":
                added[n] = (
                    medians[n]["rtt_p50_us"] - medians["direct"]["rtt_p50_us"],
                    medians[n]["rtt_p99_us"] - medians["direct"]["rtt_p99_us"],
                )
                print(f"added latency {n}: p50 {added[n][0]:.0f} us, p99 {added[n][1]:.0f} us")
        for a, b in ratios:
            if a in added and b in added:
                p50, p99 = (added[a][i] / max(1e-9, added[b][i]) for i in (0, 1))
                print(f"added latency {a}/{b}: p50 {p50:.2f}x, p99 {p99:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out / f"proxy_vs_stunnel-{stamp}.json"
    out.write_text(json.dumps({"runs": results, "medians": medians}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
