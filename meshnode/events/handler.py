"""Event handler scripts (``--event-handler SCRIPT``, serf's ``-event-handler``).

Rules that live here:
- Each delivered user event runs every configured handler through
  ``/bin/sh -c`` with serf's environment (``SERF_EVENT=user``,
  ``SERF_USER_EVENT``, ``SERF_USER_LTIME``, ``SERF_SELF_NAME``) plus
  ``MESHNODE_EVENT_NAME``, ``MESHNODE_EVENT_ID`` and ``MESHNODE_EVENT_LTIME``;
  the payload is on stdin, with a newline added when it lacks one (serf does).
- A handler may be restricted to one event name with serf's spelling
  ``user:NAME=SCRIPT`` (``user=SCRIPT`` means every user event).
- Handlers run one at a time, in the order events arrived (serf does): a
  handler sees events in Lamport order on a quiet cluster and never races
  itself. The queue is bounded; when it is full, new events are dropped and
  counted rather than piling up behind a slow script.
- A handler gets `timeout_s`; then its whole process group gets SIGTERM and,
  `kill_grace_s` later, SIGKILL. Failures are logged; nothing a handler does
  stops the agent.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ..logs import log
from ..store.datadir import child_umask
from .user_events import UserEvent

__all__ = ["EventHandlerRunner", "HandlerSpec", "parse_handler"]

_log = logging.getLogger("meshnode.events")

# serf runs handlers without a limit; a hung deploy script must not block every
# later event forever, and 30 s is far beyond what a handler should take.
HANDLER_TIMEOUT_S = 30.0
# Between SIGTERM and SIGKILL: time for a handler to clean up.
KILL_GRACE_S = 1.0
# Events waiting for the handlers; a burst beyond this is dropped and counted.
QUEUE_MAX_EVENTS = 256
# After the handler exits, how long to keep reading output still in the pipe.
OUTPUT_DRAIN_S = 1.0
# Handler output kept for the log line; the rest is read and dropped.
OUTPUT_MAX_BYTES = 2048

_SERF_PREFIX = re.compile(r"^user(?::([^=\s]+))?=(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A script and the event name it is for ("" for every user event)."""

    script: str
    event_name: str = ""


def parse_handler(text: str) -> HandlerSpec:
    """``SCRIPT``, ``user=SCRIPT`` or ``user:NAME=SCRIPT`` (serf's spellings)."""
    found = _SERF_PREFIX.match(text)
    if found is None:
        return HandlerSpec(text)
    return HandlerSpec(found.group(2), found.group(1) or "")


def handler_env(event: UserEvent, self_name: str) -> dict[str, str]:
    """serf's variables for a user event, plus meshnode's, over our own environment."""
    return {
        **os.environ,
        "SERF_EVENT": "user",
        "SERF_USER_EVENT": event.name,
        "SERF_USER_LTIME": str(event.ltime),
        "SERF_SELF_NAME": self_name,
        "MESHNODE_EVENT_NAME": event.name,
        "MESHNODE_EVENT_ID": event.id,
        "MESHNODE_EVENT_LTIME": str(event.ltime),
    }


class EventHandlerRunner:
    """Queues delivered events and runs the handler scripts for them, one at a time.

    `handlers()` is read for each event, so a config reload applies at once.
    Start `run` in a nursery; `submit` never blocks.
    """

    def __init__(
        self,
        self_name: str,
        handlers: Callable[[], Sequence[str]],
        *,
        timeout_s: float = HANDLER_TIMEOUT_S,
        kill_grace_s: float = KILL_GRACE_S,
        queue_max_events: int = QUEUE_MAX_EVENTS,
    ) -> None:
        self.self_name = self_name
        self._handlers = handlers
        self.timeout_s = timeout_s
        self.kill_grace_s = kill_grace_s
        self._send, self._receive = trio.open_memory_channel[UserEvent](queue_max_events)
        self.dropped = 0
        self.failed = 0
        self.timed_out = 0
        self.ran = 0

    def submit(self, event: UserEvent) -> None:
        """Queue `event` for the handlers; drop it (counted, logged) when the queue is full."""
        if not self._handlers():
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            log(_log, "warning", "event handler queue full, event dropped", name=event.name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run handlers for queued events until cancelled."""
        task_status.started()
        async for event in self._receive:
            for text in self._handlers():
                spec = parse_handler(text)
                if not spec.event_name or spec.event_name == event.name:
                    await self.run_one(spec.script, event)

    async def run_one(self, script: str, event: UserEvent) -> int | None:
        """Run `script` for `event`; its exit code, or None when it failed to start or hung."""
        output = bytearray()
        code: int | None = None
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                code = await self._run_process(script, event, output)
            except OSError as exc:
                self.failed += 1
                log(_log, "error", "event handler did not start", script=script, exc_info=exc)
                return None
        self.ran += 1
        text = output.decode("utf-8", "replace").strip()
        if scope.cancelled_caught:
            self.timed_out += 1
            log(
                _log,
                "error",
                "event handler timed out and was killed",
                script=script,
                timeout_s=self.timeout_s,
                event=event.name,
            )
        elif code != 0:
            self.failed += 1
            log(
                _log,
                "warning",
                "event handler failed",
                script=script,
                exit_code=code,
                event=event.name,
                output=text,
            )
        else:
            log(_log, "debug", "event handler ran", script=script, event=event.name, output=text)
        return code

    async def _run_process(self, script: str, event: UserEvent, output: bytearray) -> int:
        stdin = event.payload
        if stdin and not stdin.endswith(b"\n"):
            stdin += b"\n"
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    ["/bin/sh", "-c", script],
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=False,
                    env=handler_env(event, self.self_name),
                    # Its own process group, so a timeout kills what it started too.
                    start_new_session=True,
                    # The operator's umask, not the agent's private 0077.
                    umask=child_umask(),
                    deliver_cancel=self._kill_group,
                )
            )
            drained = trio.Event()
            nursery.start_soon(_read_some, proc, output, drained)
            code = await proc.wait()
            # What the handler wrote just before exiting may still be in the
            # pipe: read on until EOF, but a background child that keeps
            # stdout open must not hold us, so only for a moment.
            with trio.move_on_after(OUTPUT_DRAIN_S):
                await drained.wait()
            nursery.cancel_scope.cancel()
        return code

    async def _kill_group(self, proc: trio.Process) -> None:
        """SIGTERM the handler's process group, SIGKILL it after the grace time."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with trio.move_on_after(self.kill_grace_s):
            await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _read_some(proc: trio.Process, output: bytearray, drained: trio.Event) -> None:
    """Keep the first `OUTPUT_MAX_BYTES` of the handler's output; drain the rest."""
    assert proc.stdout is not None
    async for chunk in proc.stdout:
        if len(output) < OUTPUT_MAX_BYTES:
            output += chunk[: OUTPUT_MAX_BYTES - len(output)]
    drained.set()
