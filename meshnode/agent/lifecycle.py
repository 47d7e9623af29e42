"""The agent as a process: `run_agent` (what `meshnode agent` calls), signals, exit code.

The one `random.Random` and the one `Clock` of the agent are made here, at
the top, and handed down. SIGTERM and SIGINT turn into a graceful leave,
SIGHUP into a reload. A user's mistake (a port taken, no peer answering
`--join`...) ends the process with one line and exit code 1, even when it
surfaces from inside a nursery as an exception group.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import tempfile
from pathlib import Path

import trio

from ..api.facade import JoinError, ReloadError
from ..config import AgentConfig
from ..dns import DnsBindError
from ..http.server import HttpBindError
from ..logs import log
from ..store.datadir import DataDirError, prepare_data_dir, restrict_umask
from ..store.persist import PersistenceError
from .core import Agent
from .errors import AgentStartError
from .inputs import Clock, system_clock

__all__ = ["run_agent"]

_log = logging.getLogger("meshnode.agent")

_USER_ERRORS = (
    AgentStartError,
    JoinError,
    HttpBindError,
    DnsBindError,
    PersistenceError,
    DataDirError,
)


def _data_dir(config: AgentConfig) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if config.data_dir is not None:
        prepare_data_dir(config.data_dir)
        return config.data_dir, None
    tmp = tempfile.TemporaryDirectory(prefix="meshnode-dev-")
    return Path(tmp.name), tmp


async def _reload_on_sighup(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                await agent.reload()
            except ReloadError as exc:
                log(_log, "error", "config reload failed; nothing changed", reason=str(exc))


async def _leave_on_signal(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log(
                _log,
                "info",
                "signal received, leaving gracefully",
                signal=signal.Signals(signum).name,
            )
            await agent.leave()
            return


async def _main(config: AgentConfig, rng: random.Random, clock: Clock) -> None:
    data_dir, tmp = _data_dir(config)
    try:
        agent = Agent(config, data_dir, rng=rng, clock=clock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_leave_on_signal, agent)
                nursery.start_soon(_reload_on_sighup, agent)
                await agent.run()  # returns once the agent has left
                nursery.cancel_scope.cancel()
        finally:
            agent.close()
    finally:
        if tmp is not None:
            tmp.cleanup()


def _user_error(exc: BaseException) -> BaseException | None:
    """The one user-facing error inside `exc`, looking through exception groups."""
    if isinstance(exc, _USER_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


def run_agent(config: AgentConfig) -> int:
    """Run an agent in the foreground until it leaves; the process exit code."""
    restrict_umask()  # before anything is written: the data dir holds the keyring
    # The agent's one source of randomness, seeded from the OS once, and its clocks.
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    clock = system_clock()
    try:
        trio.run(_main, config, rng, clock)
    except BaseException as exc:
        found = _user_error(exc)
        if found is None:
            raise
        log(_log, "error", str(found))
        return 1
    return 0
