"""The audit log of intention decisions: who was let in or kept out, by which rule.

Consul answers a decision's `Reason` and forgets it. An operator asking "why
could web not reach db at 10:42?" needs the decisions themselves, so every
one this agent makes is recorded:

- ``connect``: an inbound connection to one of the agent's sidecars, allowed
  or denied, with the peer's address;
- ``cut``: a live connection closed because an intention turned to deny;
- ``authorize``: an answer of ``POST /v1/agent/connect/authorize`` (native
  services and other proxies ask it).

The last `capacity` decisions stay in memory for ``GET
/v1/agent/connect/audit``; with a path, each is also appended to a JSON-lines
file (one object per line) and flushed, so it survives the agent. The file
is its user's alone (0600: it says who talks to whom, from where). A write
error is logged once and the file is then left alone: auditing never stops
the agent from serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..logs import log
from ..store.datadir import open_private_append

__all__ = ["AUDIT_CAPACITY", "AuditEntry", "AuditLog"]

_log = logging.getLogger("meshnode.audit")

# About 200 KiB of entries: hours of decisions on a quiet node, the last few
# seconds of a connection storm; the file keeps everything.
AUDIT_CAPACITY = 1000
EVENTS = ("connect", "cut", "authorize")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time_s: float  # wall clock (Unix seconds)
    event: str  # one of EVENTS
    where: str  # the proxy's ID, or "api" for the authorize endpoint
    source: str  # the client's service
    destination: str
    allowed: bool
    reason: str  # the matched intention and its precedence, or the default policy
    peer: str  # "ip:port" of the client, "" when unknown

    def as_json(self) -> dict[str, Any]:
        return {
            "Time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.time_s))
            + f".{int(self.time_s * 1000) % 1000:03d}Z",
            "Event": self.event,
            "Where": self.where,
            "Source": self.source,
            "Destination": self.destination,
            "Allowed": self.allowed,
            "Reason": self.reason,
            "Peer": self.peer,
        }


class AuditLog:
    """Recent decisions in memory, and optionally every decision in a file."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        capacity: int = AUDIT_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._entries: deque[AuditEntry] = deque(maxlen=capacity)
        self._clock = clock
        self.path = path
        self.recorded_total = 0
        self.denied_total = 0
        self._file: IO[str] | None = None
        if path is not None:
            # Opened at start, so a path that cannot be written is a start-up error.
            self._file = open_private_append(path)

    def record(
        self,
        event: str,
        where: str,
        source: str,
        destination: str,
        allowed: bool,
        reason: str,
        peer: str = "",
    ) -> None:
        entry = AuditEntry(self._clock(), event, where, source, destination, allowed, reason, peer)
        self._entries.append(entry)
        self.recorded_total += 1
        if not allowed:
            self.denied_total += 1
        if self._file is not None:
            try:
                self._file.write(json.dumps(entry.as_json(), separators=(",", ":")) + "\n")
                self._file.flush()
            except (OSError, ValueError) as exc:
                log(
                    _log,
                    "error",
                    "audit log not written; continuing without the file",
                    path=str(self.path),
                    error=exc,
                )
                self._close_file()

    def entries(
        self, *, limit: int = AUDIT_CAPACITY, denied_only: bool = False
    ) -> list[AuditEntry]:
        """The newest `limit` decisions, newest first."""
        found: list[AuditEntry] = []
        for entry in reversed(self._entries):
            if len(found) >= limit:
                break
            if denied_only and entry.allowed:
                continue
            found.append(entry)
        return found

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()
