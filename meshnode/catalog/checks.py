"""Health checks run by the owning agent: TCP, HTTP and TTL.

(Contract for the runner; see `CheckSpec`. The runner itself is filled in by
the checks work.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["STATUSES", "CheckKind", "CheckSpec", "Report"]

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
