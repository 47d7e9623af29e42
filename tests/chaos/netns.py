"""A cluster of real agents, one per network namespace, and the faults we inject.

Why namespaces: loopback clusters share one kernel socket table and never
lose a packet; a namespace per host gives each agent its own address,
interface and firewall, so partitions and loss are real kernel drops.

Layout (nothing is added to the root namespace):

- `<prefix>br` holds the bridge `br0`; each host namespace `<prefix>hN` has a
  veth `eth0` (10.213.0.(10+N)/24) whose peer is enslaved to `br0`. No
  default route, so nothing leaves the namespaces.
- Each agent binds gossip on 0.0.0.0:7946 and advertises its `eth0`
  address (`--advertise`); HTTP and DNS are on 127.0.0.1 inside its
  namespace, so the test's control traffic never crosses the faulty bridge.
- The test process reaches a namespace's loopback by creating its sockets
  inside that namespace (`setns` on the calling thread, then back), and runs
  the real CLI and `dig` with `ip netns exec`.
- Faults are one nftables table `inet chaos` per host namespace, rebuilt
  atomically: drops by peer address (partitions, one-way or full) and
  `numgen random mod 100 < P drop` on `eth0` input (loss; no netem here).

Everything is named `<prefix>...` with `prefix = mnc-<pid>-`, so teardown
removes only our own namespaces, and `clean_stale()` removes only those of a
`mnc-<pid>-` whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MESHNODE = str(Path(sys.executable).with_name("meshnode"))
PREFIX_ROOT = "mnc-"
SUBNET = "10.213.0"  # a /24 that exists only inside our namespaces
GOSSIP_PORT = 7946
HTTP_PORT = 8500
DNS_PORT = 8600
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/var/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


def skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, nftables); CI and the dev machines run as root"
    for tool in ("ip", "nft", "dig"):
        if shutil.which(tool) is None:
            return f"needs `{tool}`: scripts/install-debs.sh installs iproute2, nftables, dig"
    return None


def run(*args: str, check: bool = True, timeout_s: float = 20.0, stdin: str | None = None) -> str:
    """Run a command; its stdout. Raises with stderr on failure when `check`."""
    out = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def wait_for(pred: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Seconds until `pred()` is true; bounded in time and in iterations."""
    start = time.monotonic()
    for _ in range(int(timeout_s / poll_s) + 10):
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            break
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# --- entering a namespace from the test process ------------------------------------------------


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block with this thread in namespace `ns`; sockets made here stay there."""
    with open(_NETNS_DIR / ns) as target, open("/proc/thread-self/ns/net") as home:
        if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:  # pragma: no cover
                os._exit(70)  # a thread stuck in a test namespace would corrupt the run


def ns_socket(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket that lives in namespace `ns` (usable from any thread afterwards)."""
    with in_netns(ns):
        return socket.socket(family, kind, proto)


class _NsConnection(http.client.HTTPConnection):
    def __init__(self, ns: str, host: str, port: int, timeout_s: float) -> None:
        super().__init__(host, port, timeout=timeout_s)
        self._ns = ns
        self._timeout_s = timeout_s

    def connect(self) -> None:
        sock = ns_socket(self._ns)
        sock.settimeout(self._timeout_s)
        try:
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def ns_http(
    ns: str, method: str, path: str, body: Any = None, *, timeout_s: float = 3.0
) -> tuple[int, Any]:
    """(status, decoded JSON or text) from the agent's API on 127.0.0.1 inside `ns`."""
    conn = _NsConnection(ns, "127.0.0.1", HTTP_PORT, timeout_s)
    try:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, raw.decode(errors="replace")


# --- hosts --------------------------------------------------------------------------------------


@dataclass
class Faults:
    """One host's fault state, rendered into its nftables table."""

    drop_from: set[str] = field(default_factory=set)  # peer IPs whose packets we drop on input
    drop_to: set[str] = field(default_factory=set)  # peer IPs we do not send to
    loss_pct: int = 0  # random input loss on eth0
    udp_from: set[str] = field(default_factory=set)  # peer IPs whose UDP we drop on input
    udp_to: set[str] = field(default_factory=set)  # peer IPs we send no UDP to

    def ruleset(self) -> str:
        inp = [f"ip saddr {{ {', '.join(sorted(self.drop_from))} }} drop"] if self.drop_from else []
        if self.udp_from:
            inp.append(f"ip saddr {{ {', '.join(sorted(self.udp_from))} }} meta l4proto udp drop")
        if self.loss_pct:
            inp.append(f'iifname "eth0" numgen random mod 100 < {self.loss_pct} counter drop')
        out = [f"ip daddr {{ {', '.join(sorted(self.drop_to))} }} drop"] if self.drop_to else []
        if self.udp_to:
            out.append(f"ip daddr {{ {', '.join(sorted(self.udp_to))} }} meta l4proto udp drop")
        return (
            "add table inet chaos\ndelete table inet chaos\ntable inet chaos {\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            + "".join(f"    {r};\n" for r in inp)
            + "  }\n  chain output { type filter hook output priority 0; policy accept;\n"
            + "".join(f"    {r};\n" for r in out)
            + "  }\n}\n"
        )


class Host:
    """One namespace, its address, and (optionally) the agent running in it."""

    def __init__(self, cluster: NetnsCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{cluster.prefix}{self.name}"
        self.ip = f"{SUBNET}.{10 + index}"
        self.data_dir = cluster.base_dir / self.name
        self.log_path = cluster.base_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.faults = Faults()
        self.paused = False

    @property
    def gossip(self) -> str:
        return f"{self.ip}:{GOSSIP_PORT}"

    def exec_args(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    # --- agent lifecycle ---

    def start(self, *extra: str, first_start: bool = True, wait: bool = True) -> Host:
        """Start `meshnode agent` in the namespace: 0.0.0.0 bind, our address advertised.

        A restart (`first_start=False`) passes neither key nor join: the data dir
        holds the keyring and the peers, as in production.
        """
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        args = [
            MESHNODE, "agent", "-node", self.name,
            "-bind", f"0.0.0.0:{GOSSIP_PORT}", "-advertise", self.gossip,
            "-http-addr", f"127.0.0.1:{HTTP_PORT}", "-dns-addr", f"127.0.0.1:{DNS_PORT}",
            "-data-dir", str(self.data_dir), "-log-level", "info",
            "-ca-reissue-jitter", "2s",
        ]  # fmt: skip
        if self.index <= self.cluster.signers:
            # The signer token approves every signer (docs/ca.md, "Signers").
            args += ["-signer", "-signer-token", "t-chaos-signers"]
        if first_start:
            args += ["-encrypt", self.cluster.key]
            if self.index != 1:
                args += ["-retry-join", self.cluster.hosts[0].ip, "-retry-interval", "1s"]
        args += list(extra)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
            log.flush()
            # `ip netns exec` execs the agent, so proc.pid is the agent's pid.
            self.proc = subprocess.Popen(
                self.exec_args(*args), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.paused = False
        if wait:
            wait_for(lambda: self.api("/v1/agent/self") is not None, 20.0, f"{self.name} up")
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.paused = False

    # --- talking to it ---

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return ns_http(self.ns, method, path, body)

    def api(self, path: str) -> Any:
        """Decoded JSON of a GET, or None when the agent does not answer 2xx."""
        try:
            status, body = self.request("GET", path)
        except (OSError, http.client.HTTPException):
            return None
        return body if 200 <= status < 300 else None

    def put(self, path: str, body: Any = None) -> Any:
        """A write that must be acknowledged (2xx), else the test fails here."""
        status, answer = self.request("PUT", path, body)
        assert 200 <= status < 300, f"{self.name} PUT {path}: {status} {answer}"
        return answer

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real CLI inside the namespace (it talks to 127.0.0.1:8500 there)."""
        out = subprocess.run(
            self.exec_args(MESHNODE, *args), capture_output=True, text=True, timeout=30
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{self.name}: meshnode {' '.join(args)}: {out.stderr}")
        return out

    def dig(self, name: str, qtype: str = "A") -> list[str]:
        """`dig +short` against this host's agent DNS; [] on no answer or timeout."""
        out = subprocess.run(
            self.exec_args(
                "dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", "-p", str(DNS_PORT),
                name, qtype,
            ),
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if out.returncode != 0:
            return []
        return sorted(line for line in out.stdout.splitlines() if line and not line.startswith(";"))

    def states(self) -> dict[str, str]:
        """Member name -> finer state (alive, suspect, failed, left) in this host's view."""
        members = self.api("/v1/agent/members")
        if not isinstance(members, list):
            return {}
        return {m["Name"]: m["State"] for m in members}

    def store(self) -> dict[str, str] | None:
        """`Stats.store` of /v1/agent/self: entries, index, digest."""
        info = self.api("/v1/agent/self")
        return info["Stats"]["store"] if isinstance(info, dict) else None

    def counters(self) -> dict[str, int]:
        """Counter name (without `meshnode.gossip.`) -> total."""
        metrics = self.api("/v1/agent/metrics")
        if not isinstance(metrics, dict):
            return {}
        return {c["Name"].removeprefix("meshnode.gossip."): c["Count"] for c in metrics["Counters"]}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def apply_faults(self) -> None:
        run(*self.exec_args("nft", "-f", "-"), stdin=self.faults.ruleset())


class NetnsCluster:
    """H hosts on one bridge, each with an agent; faults between them; teardown by name/pid."""

    def __init__(
        self, base_dir: Path, n_hosts: int = 7, *, signers: int = 3, prefix: str | None = None
    ) -> None:
        self.base_dir = base_dir
        self.prefix = prefix or f"{PREFIX_ROOT}{os.getpid()}-"
        self.bridge_ns = f"{self.prefix}br"
        self.signers = signers
        self.key = run(MESHNODE, "keygen").strip()
        self.hosts = [Host(self, i) for i in range(1, n_hosts + 1)]
        self.extra: list[Host] = []  # namespaces without an agent (attackers)
        self._namespaces: list[str] = []

    # --- network ---

    def _add_ns(self, ns: str) -> None:
        run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def create_network(self) -> None:
        """The bridge namespace, then one namespace per host plugged into it."""
        self._add_ns(self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for host in self.hosts:
            self.plug(host)

    def plug(self, host: Host) -> None:
        """Create `host`'s namespace and its veth into the bridge, with an empty fault table."""
        self._add_ns(host.ns)
        port = f"v{host.index}"
        run("ip", "-n", self.bridge_ns, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", host.ns)  # fmt: skip
        run("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        run("ip", "-n", host.ns, "link", "set", "eth0", "up")
        host.apply_faults()

    def add_extra_host(self, index: int) -> Host:
        """A namespace on the bridge with no agent (e.g. an attacker)."""
        host = Host(self, index)
        self.plug(host)
        self.extra.append(host)
        return host

    # --- agents ---

    def start_agents(self) -> None:
        """Seed first, then the others with `--retry-join <seed>`, all started before waiting."""
        self.hosts[0].start()
        for host in self.hosts[1:]:
            host.start(wait=False)
        for host in self.hosts[1:]:
            wait_for(lambda h=host: h.api("/v1/agent/self") is not None, 30.0, f"{host.name} up")  # type: ignore[misc]

    def all_alive(self, hosts: Iterable[Host] | None = None) -> bool:
        """Every given host's agent lists every given host alive."""
        group = list(self.hosts if hosts is None else hosts)
        names = {h.name for h in group}
        for h in group:
            states = h.states()
            if any(states.get(n) != "alive" for n in names):
                return False
        return True

    def digests(self, hosts: Iterable[Host] | None = None) -> dict[str, str | None]:
        group = self.hosts if hosts is None else hosts
        return {h.name: (s or {}).get("digest") for h in group for s in [h.store()]}

    # --- faults ---

    def partition(self, side_a: list[Host], side_b: list[Host], *, one_way: bool = False) -> None:
        """Cut A -> B (and B -> A unless `one_way`) for every protocol."""
        for a in side_a:
            a.faults.drop_to |= {b.ip for b in side_b}
            if not one_way:
                a.faults.drop_from |= {b.ip for b in side_b}
            a.apply_faults()
        if not one_way:
            for b in side_b:
                b.faults.drop_to |= {a.ip for a in side_a}
                b.faults.drop_from |= {a.ip for a in side_a}
                b.apply_faults()

    def block_udp(self, side_a: list[Host], side_b: list[Host]) -> None:
        """Drop UDP between A and B both ways (a firewall that lets only TCP through)."""
        for a, b in [(a, b) for a in side_a for b in side_b]:
            a.faults.udp_to.add(b.ip)
            a.faults.udp_from.add(b.ip)
            b.faults.udp_to.add(a.ip)
            b.faults.udp_from.add(a.ip)
        for h in {id(h): h for h in side_a + side_b}.values():
            h.apply_faults()

    def loss(self, pct: int, hosts: Iterable[Host] | None = None) -> None:
        """Random loss of `pct` % of the packets each host receives on eth0."""
        assert 0 <= pct <= 100
        for h in self.hosts if hosts is None else hosts:
            h.faults.loss_pct = pct
            h.apply_faults()

    def heal(self) -> None:
        """Remove every fault and resume every paused agent."""
        for h in self.hosts + self.extra:
            h.faults = Faults()
            h.apply_faults()
            h.resume()

    # --- teardown ---

    def destroy(self) -> None:
        """Kill our agents by pid, then whatever else runs in our namespaces, then delete them."""
        for h in self.hosts:
            h.resume()
            h.kill9()
        for ns in reversed(self._namespaces):
            _kill_ns_pids(ns)
            run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()


def _kill_ns_pids(ns: str) -> None:
    for pid in run("ip", "netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete `mnc-<pid>-*` namespaces whose creating process is gone; the names removed."""
    removed = []
    for line in run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX_ROOT}(\d+)-[a-z0-9]+", name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        _kill_ns_pids(name)
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


__all__ = [
    "DNS_PORT",
    "GOSSIP_PORT",
    "HTTP_PORT",
    "SUBNET",
    "Faults",
    "Host",
    "NetnsCluster",
    "clean_stale",
    "in_netns",
    "ns_http",
    "ns_socket",
    "run",
    "skip_reason",
    "wait_for",
]
