"""Health checks: the probes against real loopback servers, the runner on a mock clock."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import itertools
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshnode.catalog.checks import (
    MIN_INTERVAL_S,
    TTL_INITIAL_OUTPUT,
    CheckError,
    CheckRunner,
    CheckSpec,
    NotTtlCheck,
    Thresholds,
    UnknownCheck,
    validate_spec,
)
from meshnode.catalog.probes import OUTPUT_MAX_BYTES, probe_http, probe_tcp
from meshnode.http import Request, Response, Router, serve_http

# --- helpers ------------------------------------------------------------------


class Reports:
    """A `Report` that keeps every call and wakes waiters."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.changed = trio.Event()

    def __call__(self, check_id: str, status: str, output: str) -> None:
        self.calls.append((check_id, status, output))
        self.changed.set()
        self.changed = trio.Event()

    def of(self, check_id: str) -> list[tuple[str, str]]:
        return [(status, output) for cid, status, output in self.calls if cid == check_id]

    async def wait_for(self, check_id: str, count: int = 1) -> list[tuple[str, str]]:
        """The reports of `check_id` once there are `count` of them (within 10 s)."""
        with trio.fail_after(10):
            while len(self.of(check_id)) < count:
                await self.changed.wait()
        return self.of(check_id)


class ScriptedProbe:
    """A `Probe` that answers from a script per check ID (the last entry repeats)."""

    def __init__(self, script: dict[str, list[str]] | None = None) -> None:
        self.script = script or {}
        self.runs: list[tuple[str, float]] = []

    async def __call__(self, spec: CheckSpec, timeout_s: float) -> tuple[str, str]:
        self.runs.append((spec.check_id, trio.current_time()))
        statuses = self.script.get(spec.check_id) or ["passing"]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if status == "raise":
            raise RuntimeError("probe bug")
        return status, f"{status} #{self.count(spec.check_id)}"

    def count(self, check_id: str) -> int:
        return sum(1 for cid, _ in self.runs if cid == check_id)

    def times(self, check_id: str) -> list[float]:
        return [at for cid, at in self.runs if cid == check_id]


class NoStagger(random.Random):
    """First runs start at once, so real-socket tests need not wait up to a second."""

    def uniform(self, a: float, b: float) -> float:
        return a


async def start_runner(
    nursery: trio.Nursery, reports: Reports, probe: ScriptedProbe
) -> CheckRunner:
    runner = CheckRunner(reports, rng=random.Random(0), probe=probe)
    await nursery.start(runner.run)
    return runner


def tcp_spec(
    check_id: str = "c1",
    interval_s: float = 10.0,
    *,
    failures_before_warning: int = 0,
    failures_before_critical: int = 0,
) -> CheckSpec:
    return CheckSpec(
        check_id,
        "tcp",
        interval_s=interval_s,
        tcp="127.0.0.1:1",
        failures_before_warning=failures_before_warning,
        failures_before_critical=failures_before_critical,
    )


def ttl_spec(check_id: str = "t1", ttl_s: float = 10.0) -> CheckSpec:
    return CheckSpec(check_id, "ttl", ttl_s=ttl_s)


StreamHandler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_raw(nursery: trio.Nursery, handler: StreamHandler) -> int:
    """Serve `handler` on 127.0.0.1 at a port the kernel picks; the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def never_answer(stream: trio.abc.Stream) -> None:
    """Read and say nothing: the server every timeout must survive."""
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@dataclass
class HttpApp:
    port: int
    seen: list[Request] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def http_app(nursery: trio.Nursery) -> HttpApp:
    """Our own HTTP server: /status/<code>, a large body, redirects."""
    app = HttpApp(0)
    router = Router()

    async def status(request: Request) -> Response:
        app.seen.append(request)
        code = int(request.params["code"])
        return Response(status=code, body=f"status {code}".encode(), content_type="text/plain")

    async def large(request: Request) -> Response:
        return Response(body=b"x" * (1024 * 1024), content_type="text/plain")

    async def moved(request: Request) -> Response:
        return Response(status=302, headers=(("Location", "/status/200"),))

    async def loop(request: Request) -> Response:
        return Response(status=307, headers=(("Location", "/loop"),))

    router.add(["GET", "POST", "PUT"], "/status/{code}", status)
    router.add("GET", "/large", large)
    router.add("POST", "/moved", moved)
    router.add("GET", "/loop", loop)
    app.port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))
    return app


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def serve_tls(nursery: trio.Nursery, context: ssl.SSLContext, answer: bytes) -> int:
    """Answer every request on a TLS port with the raw bytes `answer`; the port."""

    async def handler(raw: trio.SocketStream) -> None:
        stream = trio.SSLStream(raw, context, server_side=True)
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client refused our certificate
        finally:
            await trio.aclose_forcefully(stream)

    return await serve_raw(nursery, handler)


# --- thresholds and validation (pure) ------------------------------------------


@pytest.mark.parametrize(
    ("passing", "warning", "critical", "results", "reported"),
    [
        # No thresholds: every result is reported as it is.
        (0, 0, 0, "pwc", ["passing", "warning", "critical"]),
        # Two successes in a row before passing; a failure resets the count.
        (2, 0, 0, "ppcpp", [None, "passing", "critical", None, "passing"]),
        # Warning counts as a success (the service answered).
        (2, 0, 0, "wp", [None, "passing"]),
        # Three failures before critical; warning defaults to the same count.
        (0, 0, 3, "cccc", [None, None, "critical", "critical"]),
        # Warning after one failure, critical after three.
        (0, 1, 3, "cccpc", ["warning", "warning", "critical", "passing", "warning"]),
        # A success resets the failure count.
        (0, 0, 2, "cpcc", [None, "passing", None, "critical"]),
    ],
)
def test_thresholds_follow_consul(
    passing: int, warning: int, critical: int, results: str, reported: list[str | None]
) -> None:
    names = {"p": "passing", "w": "warning", "c": "critical"}
    thresholds = Thresholds(passing, warning, critical)
    got = [thresholds.observe(names[r], "out") for r in results]
    assert [g[0] if g else None for g in got] == reported


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (CheckSpec("", "ttl", ttl_s=1), "needs a check ID"),
        (CheckSpec("x", "ttl"), "TTL must be > 0"),
        (CheckSpec("x", "tcp", tcp="127.0.0.1:1", interval_s=0), "interval must be > 0"),
        (CheckSpec("x", "http", http="http://a/", timeout_s=-1), "timeout must be >= 0"),
        (CheckSpec("x", "http"), "needs an address"),
        (CheckSpec("x", "tcp", tcp="127.0.0.1:1", failures_before_critical=-1), "thresholds"),
        (CheckSpec("x", "script", ttl_s=1), "unknown kind"),  # type: ignore[arg-type]
    ],
)
def test_validate_spec_refuses_what_cannot_run(spec: CheckSpec, message: str) -> None:
    with pytest.raises(CheckError, match=message):
        validate_spec(spec)


# --- TCP probes ----------------------------------------------------------------


async def test_tcp_passes_when_the_port_accepts(nursery: trio.Nursery) -> None:
    port = await serve_raw(nursery, never_answer)
    assert await probe_tcp(f"127.0.0.1:{port}", 5) == (
        "passing",
        f"TCP connect 127.0.0.1:{port}: Success",
    )


async def test_tcp_is_critical_when_refused() -> None:
    port = closed_port()
    assert await probe_tcp(f"127.0.0.1:{port}", 5) == (
        "critical",
        f"dial tcp 127.0.0.1:{port}: connect: connection refused",
    )


@pytest.mark.parametrize(
    ("address", "output"),
    [
        ("127.0.0.1", "dial tcp: '127.0.0.1': missing ':PORT'"),
        ("[::1", "dial tcp: '[::1': missing ']' after the IPv6 address"),
        ("nosuch.invalid:80", "dial tcp: lookup nosuch.invalid: "),
    ],
)
async def test_tcp_is_critical_for_bad_addresses(address: str, output: str) -> None:
    status, got = await probe_tcp(address, 5)
    assert status == "critical"
    assert got.startswith(output)


# --- HTTP probes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "line"),
    [
        (200, "passing", "200 OK"),
        (204, "passing", "204 No Content"),
        (429, "warning", "429 Too Many Requests"),
        (500, "critical", "500 Internal Server Error"),
        (404, "critical", "404 Not Found"),
    ],
)
async def test_http_status_decides(http_app: HttpApp, code: int, status: str, line: str) -> None:
    url = http_app.url(f"/status/{code}")
    body = "" if code == 204 else f"status {code}"
    assert await probe_http(url, timeout_s=5) == (status, f"HTTP GET {url}: {line} Output: {body}")


async def test_http_sends_method_headers_and_body(http_app: HttpApp) -> None:
    url = http_app.url("/status/200?x=1")
    header = {"X-Token": ["a", "b"], "Host": ["svc.example"]}
    status, output = await probe_http(url, method="put", header=header, body="{}", timeout_s=5)
    assert (status, output) == ("passing", f"HTTP PUT {url}: 200 OK Output: status 200")
    [request] = http_app.seen
    assert request.method == "PUT"
    assert request.query == {"x": ["1"]}
    assert request.body == b"{}"
    assert request.headers["x-token"] == "a, b"
    assert request.headers["host"] == "svc.example"
    assert request.headers["user-agent"] == "meshnode Health Check"


async def test_http_keeps_only_the_start_of_a_large_body(http_app: HttpApp) -> None:
    url = http_app.url("/large")
    status, output = await probe_http(url, timeout_s=5)
    assert status == "passing"
    assert output == f"HTTP GET {url}: 200 OK Output: " + "x" * OUTPUT_MAX_BYTES


async def test_http_follows_redirects_as_go_does(http_app: HttpApp) -> None:
    url = http_app.url("/moved")
    status, output = await probe_http(url, method="POST", body="data", timeout_s=5)
    assert (status, output) == ("passing", f"HTTP POST {url}: 200 OK Output: status 200")
    # A 302 turns a POST into a GET without a body, as Go's client does.
    assert [(r.method, r.body) for r in http_app.seen] == [("GET", b"")]


async def test_http_stops_after_ten_redirects(http_app: HttpApp) -> None:
    url = http_app.url("/loop")
    assert await probe_http(url, timeout_s=5) == (
        "critical",
        f'Get "{url}": stopped after 10 redirects',
    )


async def test_http_is_critical_when_refused() -> None:
    url = f"http://127.0.0.1:{closed_port()}/health"
    status, output = await probe_http(url, timeout_s=5)
    assert status == "critical"
    assert output == f'Get "{url}": dial tcp {url[7:-7]}: connect: connection refused'


async def test_http_is_critical_for_a_bad_url() -> None:
    assert await probe_http("ftp://127.0.0.1/", timeout_s=5) == (
        "critical",
        "Get \"ftp://127.0.0.1/\": unsupported protocol scheme 'ftp'",
    )


async def test_http_redacts_the_password_and_sends_basic_auth(http_app: HttpApp) -> None:
    url = f"http://user:secret@127.0.0.1:{http_app.port}/status/200"
    shown = url.replace("secret", "xxxxx")
    status, output = await probe_http(url, timeout_s=5)
    assert (status, output) == ("passing", f"HTTP GET {shown}: 200 OK Output: status 200")
    assert http_app.seen[0].headers["authorization"] == "Basic dXNlcjpzZWNyZXQ="


@pytest.mark.parametrize(
    ("url", "header", "output"),
    [
        ("http://[::1/", {}, 'Get "http://[::1/": invalid URL: Invalid IPv6 URL'),
        ("http:///x", {}, 'Get "http:///x": no host in request URL'),
        ("http://127.0.0.1:99999/", {}, "invalid port in request URL"),
        ("http://127.0.0.1:{port}/", {"X\n": ["a"]}, "invalid request: Illegal header name"),
        ("http://127.0.0.1:{port}/", {"X": ["\u00fc"]}, "invalid request: 'ascii' codec"),
    ],
)
async def test_http_bad_input_is_critical_never_raised(
    http_app: HttpApp, url: str, header: dict[str, list[str]], output: str
) -> None:
    url = url.format(port=http_app.port)
    status, got = await probe_http(url, header=header, timeout_s=5)
    assert status == "critical"
    assert output in got


async def test_http_escapes_the_path_as_go_does(http_app: HttpApp) -> None:
    url = http_app.url("/status/200?q=a b")
    status, _ = await probe_http(url, timeout_s=5)
    assert status == "passing"
    assert http_app.seen[0].query == {"q": ["a b"]}


async def test_http_closed_without_an_answer_is_critical(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)

    port = await serve_raw(nursery, hang_up)
    url = f"http://127.0.0.1:{port}/"
    status, output = await probe_http(url, timeout_s=5)
    assert status == "critical"
    assert output.startswith(f'Get "{url}": ')


async def test_http_body_cut_by_the_timeout_still_reports_the_status(
    nursery: trio.Nursery,
) -> None:
    async def stall(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\npartial")
        await never_answer(stream)

    port = await serve_raw(nursery, stall)
    url = f"http://127.0.0.1:{port}/"
    assert await probe_http(url, timeout_s=0.3) == (
        "critical",
        f"HTTP GET {url}: 503 Busy Output: partial",
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_timeout_holds_against_a_server_that_never_answers(
    nursery: trio.Nursery, scheme: str
) -> None:
    port = await serve_raw(nursery, never_answer)
    url = f"{scheme}://127.0.0.1:{port}/health"
    started_s = trio.current_time()
    status, output = await probe_http(url, timeout_s=0.3, tls_skip_verify=True)
    assert trio.current_time() - started_s < 5
    assert (status, output) == (
        "critical",
        f'Get "{url}": timeout (0.3s) exceeded while awaiting headers',
    )


async def test_https_verifies_the_certificate_unless_told_not_to(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    port = await serve_tls(nursery, self_signed(tmp_path), answer)
    url = f"https://127.0.0.1:{port}/health"
    status, output = await probe_http(url, timeout_s=5)
    assert status == "critical"
    assert output.startswith(f'Get "{url}": tls: failed to verify certificate: self')
    assert await probe_http(url, tls_skip_verify=True, timeout_s=5) == (
        "passing",
        f"HTTP GET {url}: 200 OK Output: ok",
    )


# --- the runner with real probes -------------------------------------------------


async def test_runner_runs_real_probes(nursery: trio.Nursery, http_app: HttpApp) -> None:
    reports = Reports()
    runner = CheckRunner(reports, rng=NoStagger())
    down = closed_port()
    runner.set(
        [
            CheckSpec("web", "http", http=http_app.url("/status/429")),
            CheckSpec("db", "tcp", tcp=f"127.0.0.1:{http_app.port}"),
            CheckSpec("cache", "tcp", tcp=f"127.0.0.1:{down}"),
        ]
    )
    await nursery.start(runner.run)
    assert (await reports.wait_for("web"))[0][0] == "warning"
    assert (await reports.wait_for("db"))[0][0] == "passing"
    assert (await reports.wait_for("cache"))[0] == (
        "critical",
        f"dial tcp 127.0.0.1:{down}: connect: connection refused",
    )
    assert runner.statuses()["db"] == ("passing", f"TCP connect 127.0.0.1:{http_app.port}: Success")


# --- the runner on a mock clock --------------------------------------------------


async def test_first_run_is_staggered_then_every_interval(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = ScriptedProbe()
    start_s = trio.current_time()
    runner_specs = [tcp_spec(f"c{i}", interval_s=5) for i in range(5)]
    runner = CheckRunner(Reports(), rng=random.Random(1), probe=probe)
    runner.set(runner_specs)
    await nursery.start(runner.run)
    await trio.sleep(11)
    firsts = [probe.times(spec.check_id)[0] - start_s for spec in runner_specs]
    assert all(0 <= first <= 1 for first in firsts)
    assert len(set(firsts)) == len(firsts)  # not all at once
    times = probe.times("c0")
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [5, 5]


async def test_interval_below_the_minimum_is_raised(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = ScriptedProbe()
    runner = await start_runner(nursery, Reports(), probe)
    runner.set([tcp_spec(interval_s=0.01)])
    await trio.sleep(10 * MIN_INTERVAL_S + 0.5)
    assert probe.count("c1") in (10, 11)  # the first run is staggered within a second


async def test_thresholds_apply_to_runner_results(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = ScriptedProbe({"c1": ["critical", "critical", "critical", "passing"]})
    reports = Reports()
    runner = await start_runner(nursery, reports, probe)
    runner.set([tcp_spec(failures_before_warning=2, failures_before_critical=3)])
    await trio.sleep(40)
    assert [status for status, _ in reports.of("c1")][:3] == ["warning", "critical", "passing"]


async def test_probe_and_report_failures_do_not_stop_the_runner(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = ScriptedProbe({"c1": ["raise", "passing"]})
    calls: list[str] = []

    def broken_report(check_id: str, status: str, output: str) -> None:
        calls.append(status)
        raise RuntimeError("catalog bug")

    runner = CheckRunner(broken_report, rng=random.Random(0), probe=probe)
    runner.set([tcp_spec()])
    await nursery.start(runner.run)
    await trio.sleep(25)
    assert calls == ["critical", "passing", "passing"]
    assert runner.statuses()["c1"] == ("passing", "passing #3")


async def test_set_before_run_starts_on_run(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = ScriptedProbe()
    reports = Reports()
    runner = CheckRunner(reports, rng=random.Random(0), probe=probe)
    runner.set([tcp_spec(), ttl_spec()])
    assert runner.statuses() == {"c1": ("critical", ""), "t1": ("critical", TTL_INITIAL_OUTPUT)}
    await trio.sleep(5)
    assert reports.calls == []
    await nursery.start(runner.run)
    await trio.sleep(1)
    assert reports.of("t1") == [("critical", TTL_INITIAL_OUTPUT)]
    assert reports.of("c1") == [("passing", "passing #1")]
    with pytest.raises(CheckError, match="already running"):
        await runner.run()


async def test_set_reconciles(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    probe = ScriptedProbe({"keep": ["critical", "passing"]})
    reports = Reports()
    runner = await start_runner(nursery, reports, probe)
    keep = tcp_spec("keep", failures_before_critical=2)
    runner.set([keep, tcp_spec("gone"), tcp_spec("change")])
    await trio.sleep(1)  # every first run has happened, none of the second ones
    assert (probe.count("keep"), probe.count("gone"), probe.count("change")) == (1, 1, 1)
    assert reports.of("keep") == []  # one failure of two: not reported yet

    runner.set([keep, tcp_spec("change", interval_s=20)])
    await trio.sleep(10.5)  # keep's second run was due within [10, 11]
    assert probe.count("gone") == 1  # stopped: no second run
    assert reports.of("gone") == [("passing", "passing #1")]
    assert "gone" not in runner.statuses()
    assert probe.count("change") == 2  # restarted: a new first run soon after set
    assert probe.count("keep") == 2  # unchanged: still on its own schedule
    # Its threshold state survived: the second result is a success, reported.
    assert reports.of("keep") == [("passing", "passing #2")]


async def test_set_refuses_bad_specs_and_changes_nothing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runner = await start_runner(nursery, Reports(), ScriptedProbe())
    runner.set([tcp_spec("a")])
    with pytest.raises(CheckError, match="given twice"):
        runner.set([tcp_spec("b"), tcp_spec("b")])
    with pytest.raises(CheckError, match="TTL must be > 0"):
        runner.set([ttl_spec("b", ttl_s=0)])
    assert list(runner.statuses()) == ["a"]


async def test_removed_check_in_flight_does_not_report(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()

    async def slow_probe(spec: CheckSpec, timeout_s: float) -> tuple[str, str]:
        await release.wait()
        return "passing", ""

    reports = Reports()
    runner = CheckRunner(reports, rng=random.Random(0), probe=slow_probe)
    await nursery.start(runner.run)
    runner.set([tcp_spec()])
    await trio.sleep(2)  # the probe is in flight
    release.set()
    runner.set([])
    await trio.sleep(20)
    assert reports.calls == []


# --- TTL checks --------------------------------------------------------------------


async def test_ttl_starts_critical_passes_and_expires(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    reports = Reports()
    runner = await start_runner(nursery, reports, ScriptedProbe())
    runner.set([ttl_spec(ttl_s=10)])
    await trio.testing.wait_all_tasks_blocked()
    assert reports.of("t1") == [("critical", TTL_INITIAL_OUTPUT)]

    await trio.sleep(3)
    runner.ttl_update("t1", "passing", "all good")
    await trio.sleep(8)  # 11 s after start: the update restarted the TTL
    runner.ttl_update("t1", "warning")
    runner.ttl_update("t1", "passing", "fine again")
    await trio.sleep(9.9)
    assert runner.statuses()["t1"] == ("passing", "fine again")
    await trio.sleep(0.2)
    assert runner.statuses()["t1"] == (
        "critical",
        "TTL expired (last output before timeout follows): fine again",
    )
    await trio.sleep(100)  # expired once; no repeat until the next update
    assert [status for status, _ in reports.of("t1")] == [
        "critical",
        "passing",
        "warning",
        "passing",
        "critical",
    ]
    runner.ttl_update("t1", "passing")
    await trio.sleep(10.1)
    assert reports.of("t1")[-1] == ("critical", "TTL expired")


async def test_ttl_without_updates_expires_after_its_ttl(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    reports = Reports()
    runner = await start_runner(nursery, reports, ScriptedProbe())
    runner.set([ttl_spec(ttl_s=5)])
    await trio.sleep(6)
    assert reports.of("t1") == [("critical", TTL_INITIAL_OUTPUT), ("critical", "TTL expired")]


async def test_ttl_update_before_run_replaces_the_initial_status(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    reports = Reports()
    runner = CheckRunner(reports, rng=random.Random(0))
    runner.set([ttl_spec()])
    runner.ttl_update("t1", "passing", "restored")
    await nursery.start(runner.run)
    await trio.sleep(1)
    assert reports.of("t1") == [("passing", "restored")]


async def test_ttl_update_errors(autojump_clock: trio.testing.MockClock) -> None:
    runner = CheckRunner(Reports())
    runner.set([ttl_spec(), tcp_spec()])
    with pytest.raises(UnknownCheck, match="unknown check ID 'nope'"):
        runner.ttl_update("nope", "passing")
    with pytest.raises(NotTtlCheck, match="'c1' is a tcp check"):
        runner.ttl_update("c1", "passing")
    with pytest.raises(CheckError, match="unknown check status 'ok'"):
        runner.ttl_update("t1", "ok")
    assert runner.statuses()["t1"] == ("critical", TTL_INITIAL_OUTPUT)


async def test_ttl_output_is_cut_at_4_kib(autojump_clock: trio.testing.MockClock) -> None:
    runner = CheckRunner(Reports())
    runner.set([ttl_spec()])
    runner.ttl_update("t1", "passing", "é" * 4000)
    output = runner.statuses()["t1"][1]
    assert output == "é" * 2048 + " ... (captured 4096 of 8000 bytes)"


async def test_changed_ttl_spec_starts_over(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    reports = Reports()
    runner = await start_runner(nursery, reports, ScriptedProbe())
    runner.set([ttl_spec()])
    runner.ttl_update("t1", "passing")
    runner.set([ttl_spec()])  # equal: keeps its state
    assert runner.statuses()["t1"] == ("passing", "")
    runner.set([replace(ttl_spec(), ttl_s=30)])
    assert runner.statuses()["t1"] == ("critical", TTL_INITIAL_OUTPUT)
    await trio.sleep(29)
    assert reports.of("t1")[-1] == ("critical", TTL_INITIAL_OUTPUT)
    await trio.sleep(2)
    assert reports.of("t1")[-1] == ("critical", "TTL expired")


async def test_a_ttl_check_starts_in_its_initial_status(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    reports = Reports()
    runner = CheckRunner(reports, rng=random.Random(0))
    await nursery.start(runner.run)
    started = dataclasses.replace(ttl_spec(), initial_status="passing")
    runner.set([started])
    await trio.sleep(9.9)
    assert reports.of("t1") == [("passing", "")]
    await trio.sleep(0.2)
    assert reports.of("t1")[-1][0] == "critical"  # the TTL ran out without an update
    # The initial status is not part of a spec's identity: the same check, not a restart.
    assert started == ttl_spec()
    runner.update([dataclasses.replace(ttl_spec(), initial_status="warning")], [])
    assert runner.statuses()["t1"][0] == "critical"
