"""Shared helpers for the benchmarks in bench/ (stdlib only).

What lives here:

- `ProcessRegistry`: every child a benchmark starts, killed by pid on exit,
  on SIGINT/SIGTERM and, through PR_SET_PDEATHSIG, even if the benchmark
  itself is SIGKILLed.
- `/proc` readers for RSS and CPU time.
- A minimal msgpack codec and a client for serf's RPC protocol (the same one
  the `serf` CLI speaks), so a benchmark can poll 100 agents without
  starting 100 Go binaries per poll.
- `run_exchanges`: send one request to many agents at once and collect the
  replies as they arrive (selectors, no threads), with the receive time of
  each reply.
- Minimal HTTP/1.1 request building and response parsing for the same loop.
- Statistics helpers (median with timeouts counted as +inf).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import platform
import selectors
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")

# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL the child when we die."""
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ProcessRegistry:
    """Tracks the children we start; `kill_all` kills them by pid."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # Own session: a Ctrl-C in the terminal reaches only us, and
                # we decide how the agents die (by pid, below).
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._procs[proc.pid] = proc
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def reap(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
        if proc.poll() is not None:
            self._procs.pop(proc.pid, None)

    def kill_all(self) -> None:
        procs = list(self._procs.values())
        for proc in procs:
            self.kill(proc)
        for proc in procs:
            self.reap(proc)

    def install_handlers(self) -> None:
        """SIGINT becomes KeyboardInterrupt (even when started in the
        background, where it is inherited as ignored), SIGTERM/SIGHUP become
        SystemExit, so `finally` blocks run. atexit is the last resort."""
        import atexit

        atexit.register(self.kill_all)

        def _exit(signum: int, _frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _exit)
        signal.signal(signal.SIGHUP, _exit)


def add_binary_args(p: argparse.ArgumentParser) -> None:
    """--serf and --meshnode: the two binaries a side-by-side gossip benchmark starts."""
    repo = Path(__file__).resolve().parent.parent
    p.add_argument("--serf", default="serf", help="serf binary (default: serf on PATH)")
    p.add_argument(
        "--meshnode", type=Path, default=repo / ".venv" / "bin" / "meshnode", help="binary"
    )


def cluster_sizes(p: argparse.ArgumentParser, sizes: str) -> list[int]:
    """`--sizes` as a list; each 2 to 254 (one loopback address per agent), else a usage error."""
    try:
        found = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sizes: expected comma-separated integers, got {sizes!r}")
    if not found or any(not 2 <= x <= 254 for x in found):
        p.error("--sizes: each size must be between 2 and 254 (one loopback address each)")
    return found


def result_doc(
    name: str, out_dir: Path, options: Mapping[str, Any], versions: Mapping[str, str]
) -> tuple[Path, dict[str, Any]]:
    """A run's JSON document (results to fill in), and its path: `out_dir`/`name`-<start>.json."""
    started = datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "benchmark": name,
        "started": started.isoformat(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "options": dict(options),
        "versions": dict(versions),
        "results": {},
    }
    return out_dir / f"{name}-{started:%Y%m%d-%H%M%S}.json", doc


def save_results(out_path: Path, doc: Mapping[str, Any]) -> None:
    """Write the run's document (again after each size, so an interrupted run keeps its rows)."""
    out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def stop_and_save(
    registry: ProcessRegistry,
    procs: Iterable[subprocess.Popen[bytes]],
    out_path: Path,
    doc: Mapping[str, Any],
) -> None:
    """The end of a run, also after Ctrl-C: kill `procs` and every other child, save the results."""
    for proc in procs:
        registry.kill(proc)
    registry.kill_all()
    save_results(out_path, doc)
    print(f"\nresults: {out_path}")


def log_tail(path: Path, n_lines: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(lines[-n_lines:])


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


# --------------------------------------------------------------------------
# msgpack (the subset serf's RPC uses)
# --------------------------------------------------------------------------


class NeedMore(Exception):
    """The buffer ends in the middle of a value."""


def msgpack_pack(obj: object) -> bytes:
    out = bytearray()
    _pack_into(obj, out)
    return bytes(out)


# Length heads: (fixed form's base, its limit, 8-bit code, 16-bit code, 32-bit code);
# a limit of 0 or a code of 0: the type has no such form.
_STR_HEAD = (0xA0, 32, 0xD9, 0xDA, 0xDB)
_BIN_HEAD = (0, 0, 0xC4, 0xC5, 0xC6)
_ARRAY_HEAD = (0x90, 16, 0, 0xDC, 0xDD)
_MAP_HEAD = (0x80, 16, 0, 0xDE, 0xDF)


def _pack_head(out: bytearray, n: int, head: tuple[int, int, int, int, int]) -> None:
    """The length head of a str, bin, array or map of `n` items: its shortest form."""
    fix, fix_limit, code8, code16, code32 = head
    if n < fix_limit:
        out.append(fix | n)
    elif code8 and n < 2**8:
        out += bytes((code8, n))
    elif n < 2**16:
        out.append(code16)
        out += struct.pack(">H", n)
    else:
        out.append(code32)
        out += struct.pack(">I", n)


def _pack_into(obj: object, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        if 0 <= obj < 0x80:
            out.append(obj)
        elif -32 <= obj < 0:
            out.append(obj & 0xFF)
        elif 0 <= obj < 2**64:
            out += b"\xcf" + struct.pack(">Q", obj)
        else:
            out += b"\xd3" + struct.pack(">q", obj)
    elif isinstance(obj, float):
        out += b"\xcb" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode()
        _pack_head(out, len(data), _STR_HEAD)
        out += data
    elif isinstance(obj, bytes | bytearray):
        _pack_head(out, len(obj), _BIN_HEAD)
        out += obj
    elif isinstance(obj, list | tuple):
        _pack_head(out, len(obj), _ARRAY_HEAD)
        for item in obj:
            _pack_into(item, out)
    elif isinstance(obj, dict):
        _pack_head(out, len(obj), _MAP_HEAD)
        for key, value in obj.items():
            _pack_into(key, out)
            _pack_into(value, out)
    else:
        raise TypeError(f"cannot msgpack {type(obj).__name__}")


_FIXED: dict[int, tuple[str, int]] = {
    0xCA: (">f", 4),
    0xCB: (">d", 8),
    0xCC: (">B", 1),
    0xCD: (">H", 2),
    0xCE: (">I", 4),
    0xCF: (">Q", 8),
    0xD0: (">b", 1),
    0xD1: (">h", 2),
    0xD2: (">i", 4),
    0xD3: (">q", 8),
}


def msgpack_unpack(buf: bytes | bytearray, pos: int = 0) -> tuple[Any, int]:
    """Decodes one value at `pos`; returns it and the position after it.
    Raises NeedMore when the buffer is short, ValueError on bad input."""

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(buf):
            raise NeedMore
        chunk = bytes(buf[pos : pos + n])
        pos += n
        return chunk

    def length(fmt: str, size: int) -> int:
        value: int = struct.unpack(fmt, take(size))[0]
        return value

    def text(raw: bytes) -> str | bytes:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw

    def array(n: int) -> list[Any]:
        nonlocal pos
        items = []
        for _ in range(n):
            item, pos = msgpack_unpack(buf, pos)
            items.append(item)
        return items

    def mapping(n: int) -> dict[Any, Any]:
        nonlocal pos
        result: dict[Any, Any] = {}
        for _ in range(n):
            key, pos = msgpack_unpack(buf, pos)
            value, pos = msgpack_unpack(buf, pos)
            result[key if not isinstance(key, list) else tuple(key)] = value
        return result

    b = take(1)[0]
    value: Any
    if b <= 0x7F:
        value = b
    elif b <= 0x8F:
        value = mapping(b & 0x0F)
    elif b <= 0x9F:
        value = array(b & 0x0F)
    elif b <= 0xBF:
        value = text(take(b & 0x1F))
    elif b >= 0xE0:
        value = b - 0x100
    elif b == 0xC0:
        value = None
    elif b == 0xC2:
        value = False
    elif b == 0xC3:
        value = True
    elif b in (0xC4, 0xC5, 0xC6):
        value = take(length(*[(">B", 1), (">H", 2), (">I", 4)][b - 0xC4]))
    elif b in (0xC7, 0xC8, 0xC9):
        n = length(*[(">B", 1), (">H", 2), (">I", 4)][b - 0xC7])
        take(1)  # ext type
        value = take(n)
    elif b in _FIXED:
        fmt, size = _FIXED[b]
        value = struct.unpack(fmt, take(size))[0]
    elif 0xD4 <= b <= 0xD8:
        take(1)
        value = take(1 << (b - 0xD4))
    elif b in (0xD9, 0xDA, 0xDB):
        value = text(take(length(*[(">B", 1), (">H", 2), (">I", 4)][b - 0xD9])))
    elif b == 0xDC:
        value = array(length(">H", 2))
    elif b == 0xDD:
        value = array(length(">I", 4))
    elif b == 0xDE:
        value = mapping(length(">H", 2))
    elif b == 0xDF:
        value = mapping(length(">I", 4))
    else:
        raise ValueError(f"msgpack: unknown type byte {b:#x}")
    return value, pos


# --------------------------------------------------------------------------
# Pipelined request/response over many sockets
# --------------------------------------------------------------------------

# A parser gets everything received so far and whether the peer closed; it
# returns the decoded reply, or raises NeedMore to be called again later.
Parser = Callable[[bytes, bool], T]


@dataclass
class Exchange(Generic[K, T]):
    key: K
    sock: socket.socket
    request: bytes
    parse: Parser[T]
    close_after: bool = False


@dataclass
class Reply(Generic[T]):
    value: T | None
    t: float  # time.monotonic() when the reply was complete (or we gave up)
    error: str | None = None


class Batch(Generic[K, T]):
    """Requests sent to many agents at once; `collect` reads the replies in
    whatever order they come. Sending is separate from collecting so that a
    benchmark can fire requests (joins) and poll other sockets meanwhile."""

    def __init__(self, exchanges: Sequence[Exchange[K, T]], send_timeout_s: float = 5.0) -> None:
        self.replies: dict[K, Reply[T]] = {}
        self._sel = selectors.DefaultSelector()
        self._bufs: dict[K, bytearray] = {}
        self._live: dict[K, Exchange[K, T]] = {}
        for ex in exchanges:
            try:
                ex.sock.setblocking(True)
                ex.sock.settimeout(send_timeout_s)
                ex.sock.sendall(ex.request)
                ex.sock.setblocking(False)
            except OSError as e:
                ex.sock.close()
                self.replies[ex.key] = Reply(None, time.monotonic(), f"send: {e}")
                continue
            self._bufs[ex.key] = bytearray()
            self._live[ex.key] = ex
            self._sel.register(ex.sock, selectors.EVENT_READ, ex.key)
        self.t_sent = time.monotonic()

    def _finish(self, key: K, reply: Reply[T]) -> None:
        ex = self._live.pop(key)
        self._sel.unregister(ex.sock)
        if ex.close_after or reply.error is not None:
            ex.sock.close()
        self.replies[key] = reply

    def collect(self, timeout_s: float, give_up: bool = True) -> dict[K, Reply[T]]:
        """Reads replies for up to `timeout_s`. With `give_up`, requests still
        unanswered then are recorded as timeouts (and their sockets closed)."""
        deadline = time.monotonic() + timeout_s
        while self._live:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for selkey, _ in self._sel.select(remaining):
                self._read(selkey.data)
        if give_up:
            for key in list(self._live):
                self._finish(key, Reply(None, time.monotonic(), "timeout"))
            self._sel.close()
        return self.replies

    def _read(self, key: K) -> None:
        ex = self._live[key]
        try:
            chunk = ex.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self._finish(key, Reply(None, time.monotonic(), f"recv: {e}"))
            return
        eof = not chunk
        self._bufs[key] += chunk
        try:
            value = ex.parse(bytes(self._bufs[key]), eof)
        except NeedMore:
            if eof:
                self._finish(key, Reply(None, time.monotonic(), "connection closed early"))
            return
        except ValueError as e:
            self._finish(key, Reply(None, time.monotonic(), f"bad reply: {e}"))
            return
        self._finish(key, Reply(value, time.monotonic()))


def run_exchanges(exchanges: Sequence[Exchange[K, T]], timeout_s: float) -> dict[K, Reply[T]]:
    """Sends every request first (so all agents see them within a
    millisecond), then reads the replies in whatever order they come."""
    return Batch(exchanges).collect(timeout_s)


def connect(host: str, port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --------------------------------------------------------------------------
# HTTP/1.1 (one request per connection)
# --------------------------------------------------------------------------


def http_request(method: str, host: str, port: int, path: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        "Content-Length: 0\r\nAccept: application/json\r\n\r\n"
    ).encode()


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes


def parse_http_response(buf: bytes, eof: bool) -> HttpResponse:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        raise NeedMore
    head = buf[:head_end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {head[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = buf[head_end + 4 :]
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(body) < n:
            raise NeedMore
        return HttpResponse(status, body[:n])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return HttpResponse(status, _dechunk(body))
    if not eof:
        raise NeedMore
    return HttpResponse(status, body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise NeedMore
        size = int(body[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            return bytes(out)
        if len(body) < start + size + 2:
            raise NeedMore
        out += body[start : start + size]
        pos = start + size + 2


# --------------------------------------------------------------------------
# serf RPC (github.com/hashicorp/serf/client: msgpack header + body)
# --------------------------------------------------------------------------

# Commands whose reply carries a body after the header.
SERF_REPLY_HAS_BODY = {
    "handshake": False,
    "event": False,
    "join": True,
    "members": True,
    "members-filtered": True,
    "stats": True,
}


class SerfError(Exception):
    pass


class SerfRPC:
    """One persistent RPC connection to a serf agent. Requests are built
    with `request()` and run through `run_exchanges`, so many agents can be
    asked at once; `call()` is the one-agent convenience."""

    def __init__(self, host: str, port: int, timeout_s: float = 5.0) -> None:
        self.host, self.port = host, port
        self._seq = 0
        self.sock = self._open(timeout_s)

    def _open(self, timeout_s: float) -> socket.socket:
        self.sock = connect(self.host, self.port, timeout_s)
        self.call("handshake", {"Version": 1}, timeout_s)
        return self.sock

    def request(self, command: str, body: object | None, key: K) -> Exchange[K, Any]:
        seq = self._seq
        self._seq += 1
        data = msgpack_pack({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack_pack(body)
        has_body = SERF_REPLY_HAS_BODY[command]

        def parse(buf: bytes, _eof: bool) -> Any:
            header, pos = msgpack_unpack(buf)
            if not isinstance(header, dict) or header.get("Seq") != seq:
                raise ValueError(f"unexpected reply header {header!r}")
            if header.get("Error"):
                raise ValueError(f"serf: {header['Error']}")
            if not has_body:
                return None
            reply, _ = msgpack_unpack(buf, pos)
            return reply

        return Exchange(key, self.sock, data, parse)

    def call(self, command: str, body: object | None = None, timeout_s: float = 10.0) -> Any:
        reply = run_exchanges([self.request(command, body, 0)], timeout_s)[0]
        if reply.error is not None:
            raise SerfError(f"{self.host}:{self.port} {command}: {reply.error}")
        return reply.value

    @property
    def broken(self) -> bool:
        return self.sock.fileno() < 0

    def reconnect(self, timeout_s: float = 5.0) -> None:
        self.close()
        self._seq = 0
        self._open(timeout_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def median(values: Iterable[float]) -> float | None:
    """Median; +inf values (timeouts) take part as the largest values."""
    vals = sorted(values)
    if not vals:
        return None
    mid = len(vals) // 2
    if len(vals) % 2:
        return vals[mid]
    lo, hi = vals[mid - 1], vals[mid]
    if math.isinf(lo) or math.isinf(hi):
        return hi
    return (lo + hi) / 2


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[rank - 1]
