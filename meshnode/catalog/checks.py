"""Health checks run by the owning agent: TCP, HTTP and TTL (Consul's semantics).

Rules that live here:
- `CheckRunner.set` reconciles the running checks with a list of `CheckSpec`:
  new ones start, removed ones stop, changed ones restart with fresh state and
  unchanged ones keep running with theirs;
- a TCP or HTTP check runs once soon after it starts, then `interval_s` after
  each run ends; `Thresholds` turns its results into reported statuses;
- a TTL check is critical until `ttl_update` says otherwise (or, when its spec
  has an `initial_status`, that status: a definition's ``Status``), and
  critical again when `ttl_s` passes without an update;
- every reported result goes to `report(check_id, status, output)`; the catalog
  decides what to persist. Neither a failing probe nor a failing `report` ever
  stops the runner: both are logged and the checks go on.

The probes themselves (dialing, HTTP over h11, TLS) live in probes.py.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from ..logs import get_logger, log
from .probes import OUTPUT_MAX_BYTES, probe_http, probe_tcp

__all__ = [
    "MIN_INTERVAL_S",
    "STATUSES",
    "TTL_INITIAL_OUTPUT",
    "CheckError",
    "CheckKind",
    "CheckRunner",
    "CheckSpec",
    "NotTtlCheck",
    "Probe",
    "Report",
    "Thresholds",
    "UnknownCheck",
    "run_probe",
    "validate_spec",
]

_log = get_logger("checks")

STATUSES = ("passing", "warning", "critical")
CheckKind = Literal["tcp", "http", "ttl"]
# report(check_id, status, output): status is one of STATUSES.
Report = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """What the runner needs to run one local check; equal specs need no restart."""

    check_id: str
    kind: CheckKind
    interval_s: float = 10.0  # tcp/http: time between runs
    timeout_s: float = 10.0  # tcp/http: one run's limit
    tcp: str = ""  # "host:port"
    http: str = ""  # URL, http:// or https://
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    ttl_s: float = 0.0  # ttl: critical when no update arrives for this long
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    # ttl: the status to start in until the first update or the TTL's end (a
    # definition's "Status"); "" is critical. Not part of equality: the catalog
    # builds specs from records, whose status changes must not restart a check.
    initial_status: str = field(default="", compare=False)


# Consul raises shorter intervals to its MinInterval of 1 s: probing faster
# spends the service's CPU on being watched and tells nothing more.
MIN_INTERVAL_S = 1.0
# Consul's timeout for a TCP or HTTP check that sets none.
DEFAULT_TIMEOUT_S = 10.0
# Consul staggers a check's first run at random within its whole interval. We
# bound the stagger by min(interval, 1 s): enough to spread the probes of a
# restarted agent so they do not all hit their services at once, short enough
# that a restart does not leave checks unknown for a whole interval.
FIRST_RUN_STAGGER_MAX_S = 1.0
# Consul's status and output for a TTL check that has not been updated yet.
TTL_INITIAL_OUTPUT = "TTL check has not been updated yet"

# probe(spec, timeout_s) -> (status, output): one run of a TCP or HTTP check.
Probe = Callable[[CheckSpec, float], Awaitable[tuple[str, str]]]


class CheckError(Exception):
    """A local mistake in using the runner (bad spec or status); the message is one line."""


class UnknownCheck(CheckError):
    """`ttl_update` named a check the runner does not have."""


class NotTtlCheck(CheckError):
    """`ttl_update` named a TCP or HTTP check, whose status only its probe sets."""


def validate_spec(spec: CheckSpec) -> None:
    """Raise `CheckError` when `spec` cannot run (the catalog calls it to answer 400)."""
    where = f"check {spec.check_id!r}"
    if not spec.check_id:
        raise CheckError("a check needs a check ID")
    if spec.kind not in ("tcp", "http", "ttl"):
        raise CheckError(f"{where}: unknown kind {spec.kind!r} (use tcp, http or ttl)")
    if spec.kind == "ttl":
        if not (math.isfinite(spec.ttl_s) and spec.ttl_s > 0):
            raise CheckError(f"{where}: TTL must be > 0 for TTL checks")
    else:
        if not (math.isfinite(spec.interval_s) and spec.interval_s > 0):
            raise CheckError(f"{where}: interval must be > 0 for {spec.kind.upper()} checks")
        if not (math.isfinite(spec.timeout_s) and spec.timeout_s >= 0):
            raise CheckError(f"{where}: timeout must be >= 0")
        if not (spec.tcp if spec.kind == "tcp" else spec.http):
            raise CheckError(f"{where}: a {spec.kind.upper()} check needs an address")
    counts = (
        spec.success_before_passing,
        spec.failures_before_warning,
        spec.failures_before_critical,
    )
    if min(counts) < 0:
        raise CheckError(f"{where}: success/failure thresholds must be >= 0")


@dataclass
class Thresholds:
    """Consul's StatusHandler: how many results in a row before a status is reported.

    Warning counts as a success (the service answered). `failures_before_warning`
    of 0 means "same as `failures_before_critical`", as in Consul.
    """

    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    successes: int = 0  # consecutive passing/warning results so far
    failures: int = 0  # consecutive critical results so far

    def observe(self, status: str, output: str) -> tuple[str, str] | None:
        """The (status, output) to report for this result, or None when below threshold."""
        if status in ("passing", "warning"):
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_before_passing:
                return status, output
            return None
        self.failures += 1
        self.successes = 0
        if self.failures >= self.failures_before_critical:
            return "critical", output
        if self.failures >= (self.failures_before_warning or self.failures_before_critical):
            return "warning", output
        return None


async def run_probe(spec: CheckSpec, timeout_s: float) -> tuple[str, str]:
    """One run of a TCP or HTTP check: the default `Probe`."""
    if spec.kind == "tcp":
        return await probe_tcp(spec.tcp, timeout_s)
    return await probe_http(
        spec.http,
        method=spec.method,
        header=spec.header,
        body=spec.body,
        tls_skip_verify=spec.tls_skip_verify,
        timeout_s=timeout_s,
    )


def _truncate(output: str) -> str:
    """Consul keeps the first 4 KiB of a TTL update's output and says how much it dropped."""
    raw = output.encode("utf-8")
    if len(raw) <= OUTPUT_MAX_BYTES:
        return output
    kept = raw[:OUTPUT_MAX_BYTES].decode("utf-8", "ignore")
    return f"{kept} ... (captured {OUTPUT_MAX_BYTES} of {len(raw)} bytes)"


@dataclass(eq=False)
class _Check:
    """One running check and what it has reported."""

    spec: CheckSpec
    status: str = "critical"  # Consul's status for a check nobody has judged yet
    output: str = ""
    thresholds: Thresholds = field(default_factory=Thresholds)
    scope: trio.CancelScope | None = None  # set while a task runs the check
    # TTL checks only:
    expires_at: float | None = None  # trio time; None until started or updated
    wakeup: trio.Event = field(default_factory=trio.Event)  # set by ttl_update
    last_output: str = ""  # kept for the "TTL expired" output, as Consul does

    @classmethod
    def new(cls, spec: CheckSpec) -> _Check:
        if spec.kind == "ttl":
            if spec.initial_status in ("passing", "warning"):
                return cls(spec, status=spec.initial_status)
            return cls(spec, output=TTL_INITIAL_OUTPUT)
        thresholds = Thresholds(
            spec.success_before_passing,
            spec.failures_before_warning,
            spec.failures_before_critical,
        )
        return cls(spec, thresholds=thresholds)


class CheckRunner:
    """Runs this agent's checks and reports their results; see the module docstring."""

    def __init__(
        self,
        report: Report,
        *,
        rng: random.Random | None = None,
        probe: Probe = run_probe,
    ) -> None:
        self._report = report
        self._rng = rng or random.Random()
        self._probe = probe
        self._checks: dict[str, _Check] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the checks until cancelled; start with ``await nursery.start(runner.run)``."""
        if self._nursery is not None:
            raise CheckError("the check runner is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for check in self._checks.values():
                    self._start(check)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def set(self, specs: list[CheckSpec]) -> None:
        """Make the running checks exactly `specs`; unchanged ones keep their state.

        Raises `CheckError` (and changes nothing) when a spec is invalid or two
        share a check ID.
        """
        wanted: dict[str, CheckSpec] = {}
        for spec in specs:
            validate_spec(spec)
            if spec.check_id in wanted:
                raise CheckError(f"check {spec.check_id!r} is given twice")
            wanted[spec.check_id] = spec
        for check_id, check in list(self._checks.items()):
            if wanted.get(check_id) != check.spec:
                del self._checks[check_id]
                if check.scope is not None:
                    check.scope.cancel()
        for check_id, spec in wanted.items():
            if check_id not in self._checks:
                self._checks[check_id] = _Check.new(spec)
                if self._nursery is not None:
                    self._start(self._checks[check_id])

    def update(self, changed: list[CheckSpec], removed: list[str]) -> None:
        """Reconcile only these checks: O(the change), whatever else runs.

        A changed spec restarts its check, an equal one keeps its state;
        removed IDs stop. Raises `CheckError` (and changes nothing) on an invalid spec.
        """
        for spec in changed:
            validate_spec(spec)
        wanted = {spec.check_id: spec for spec in changed}
        for check_id in [*removed, *wanted]:
            check = self._checks.get(check_id)
            if check is not None and check.spec != wanted.get(check_id):
                del self._checks[check_id]
                if check.scope is not None:
                    check.scope.cancel()
        for spec in wanted.values():
            if spec.check_id not in self._checks:
                self._checks[spec.check_id] = _Check.new(spec)
                if self._nursery is not None:
                    self._start(self._checks[spec.check_id])

    def ttl_update(self, check_id: str, status: str, output: str = "") -> None:
        """Set a TTL check's status (Consul's /v1/agent/check/update) and restart its TTL."""
        check = self._checks.get(check_id)
        if check is None:
            raise UnknownCheck(f"unknown check ID {check_id!r}")
        if check.spec.kind != "ttl":
            raise NotTtlCheck(f"check {check_id!r} is a {check.spec.kind} check, not a TTL check")
        if status not in STATUSES:
            raise CheckError(f"unknown check status {status!r} (use passing, warning or critical)")
        output = _truncate(output)
        check.last_output = output
        check.expires_at = trio.current_time() + check.spec.ttl_s
        check.wakeup.set()
        self._deliver(check, status, output)

    def statuses(self) -> dict[str, tuple[str, str]]:
        """The last reported (status, output) of every check, by check ID."""
        return {check_id: (c.status, c.output) for check_id, c in self._checks.items()}

    def _start(self, check: _Check) -> None:
        assert self._nursery is not None
        check.scope = trio.CancelScope()
        name = f"check {check.spec.check_id}"
        self._nursery.start_soon(self._supervise, check, check.scope, name=name)

    async def _supervise(self, check: _Check, scope: trio.CancelScope) -> None:
        with scope:
            if check.spec.kind == "ttl":
                await self._run_ttl(check)
            else:
                await self._run_probes(check)

    async def _run_probes(self, check: _Check) -> None:
        spec = check.spec
        interval_s = max(spec.interval_s, MIN_INTERVAL_S)
        timeout_s = spec.timeout_s if spec.timeout_s > 0 else DEFAULT_TIMEOUT_S
        await trio.sleep(self._rng.uniform(0.0, min(interval_s, FIRST_RUN_STAGGER_MAX_S)))
        while True:
            try:
                status, output = await self._probe(spec, timeout_s)
            except Exception as exc:  # a bug in a probe: log it, keep checking
                log(_log, "error", "check probe failed", exc_info=exc, check_id=spec.check_id)
                status, output = "critical", f"check failed: {type(exc).__name__}: {exc}"
            result = check.thresholds.observe(status, output)
            if result is None:
                log(_log, "debug", "check result below threshold", check_id=spec.check_id)
            else:
                self._deliver(check, *result)
            await trio.sleep(interval_s)

    async def _run_ttl(self, check: _Check) -> None:
        if check.expires_at is None:  # no update arrived before the start
            check.expires_at = trio.current_time() + check.spec.ttl_s
            self._deliver(check, check.status, check.output)
        while True:
            check.wakeup = trio.Event()
            with trio.move_on_at(check.expires_at):
                await check.wakeup.wait()
            if trio.current_time() >= check.expires_at:
                check.expires_at = math.inf  # expired once; the next update re-arms it
                output = "TTL expired"
                if check.last_output:
                    output += f" (last output before timeout follows): {check.last_output}"
                self._deliver(check, "critical", output)

    def _deliver(self, check: _Check, status: str, output: str) -> None:
        """Record and report a result, unless the check was removed or replaced meanwhile."""
        check_id = check.spec.check_id
        if self._checks.get(check_id) is not check:
            return
        if status != check.status:
            level = "info" if status == "passing" else "warning"
            log(_log, level, "check status changed", check_id=check_id, status=status)
        check.status, check.output = status, output
        try:
            self._report(check_id, status, output)
        except Exception as exc:  # the catalog's bug must not stop the checks
            log(_log, "error", "check report failed", exc_info=exc, check_id=check_id)
