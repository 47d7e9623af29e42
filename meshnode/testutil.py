"""Run real `meshnode agent` processes on loopback for tests (like Consul's sdk/testutil).

Each agent gets its own loopback address (127.0.0.0/8 needs no setup on
Linux), so agents use the default ports like separate hosts would. Every
process a test starts is killed by pid at teardown, even when the test fails.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MESHNODE = str(Path(sys.executable).with_name("meshnode"))

_subnets = itertools.count(os.getpid() * 7)


def _free_subnet() -> int:
    """A 127.0.X.0/24 no other test process holds: parallel pytest runs share loopback."""
    for _ in range(250):
        subnet = 2 + next(_subnets) % 250
        with socket.socket() as probe:
            try:
                probe.bind((f"127.0.{subnet}.1", 8500))
            except OSError:
                continue
        return subnet
    raise RuntimeError("no free 127.0.X.0/24 for a test cluster")


def new_key() -> str:
    """A fresh gossip key from `meshnode keygen`."""
    out = subprocess.run([MESHNODE, "keygen"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


class AgentProc:
    def __init__(self, cluster: Cluster, name: str, ip: str, data_dir: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.ip = ip
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Added to the default ports: a second agent on the same address (another host's
        # agents each have their own loopback address and the default ports).
        self.port_offset = 0

    @property
    def http(self) -> str:
        return f"{self.ip}:{8500 + self.port_offset}"

    @property
    def dns(self) -> str:
        return f"{self.ip}:{8600 + self.port_offset}"

    @property
    def gossip(self) -> str:
        return f"{self.ip}:{7946 + self.port_offset}"

    def start(self, *extra: str, key: str | None = "cluster", wait: bool = True) -> AgentProc:
        args = [
            MESHNODE,
            "agent",
            "-node",
            self.name,
            "-bind",
            self.gossip,
            "-http-addr",
            self.http,
            "-dns-addr",
            self.dns,
            "-data-dir",
            str(self.data_dir),
            "-log-level",
            "debug",
        ]
        if key == "cluster":
            key = self.cluster.key
        if key is not None:
            args += ["-encrypt", key]
        args += list(extra)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            wait_for(lambda: self.api("/v1/agent/self") is not None, 15.0, f"{self.name} up")
        return self

    def api(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [MESHNODE, *args, "-http-addr", self.http], capture_output=True, text=True, timeout=30
        )
        if check and out.returncode != 0:
            raise AssertionError(f"meshnode {' '.join(args)} failed: {out.stderr}")
        return out

    def statuses(self) -> dict[str, str]:
        """Node -> Status column, as `meshnode members` prints it."""
        out = self.cli("members", check=False).stdout.splitlines()[1:]
        return {line.split()[0]: line.split()[2] for line in out if line.strip()}

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.subnet = _free_subnet()
        self.key = new_key()
        self.agents: list[AgentProc] = []

    def agent(self, i: int) -> AgentProc:
        a = AgentProc(self, f"n{i}", f"127.0.{self.subnet}.{i}", self.base / f"n{i}")
        self.agents.append(a)
        return a

    def start(self, n: int, **kw: Any) -> list[AgentProc]:
        agents = [self.agent(i).start(**kw) for i in range(1, n + 1)]
        for a in agents[1:]:
            a.cli("join", agents[0].gossip)
        return agents

    def stop_all(self) -> None:
        for a in self.agents:
            if a.proc is not None and a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait(5)


def wait_for(pred: Callable[[], object], timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def keep_logs() -> bool:
    return bool(os.environ.get("MESHNODE_KEEP_LOGS"))


__all__ = ["MESHNODE", "AgentProc", "Cluster", "new_key", "wait_for"]


@contextlib.contextmanager
def idle_flood(host: str, port: int, count: int, source: str) -> Iterator[list[socket.socket]]:
    """`count` TCP connections from `source` to host:port that never send a byte; closed after.

    Needs about `count` free file descriptors (the caller raises the limit).
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setblocking(False)  # the kernel finishes each handshake on its own
            sock.bind((source, 0))
            sock.connect_ex((host, port))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def still_open(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server has neither closed, reset nor answered.

    A connection still in the server's accept queue counts as open too.
    """
    count = 0
    for sock in sockets:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            count += 1
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE):
                raise
    return count
