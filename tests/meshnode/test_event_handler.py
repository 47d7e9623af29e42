"""Event handler scripts: real /bin/sh processes, serf's environment, order, timeouts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from meshnode.events.handler import EventHandlerRunner, HandlerSpec, parse_handler
from meshnode.events.user_events import UserEvent, UserEvents, encode_event


def event(name: str = "deploy", payload: bytes = b"v1.2", ltime: int = 4) -> UserEvent:
    return UserEvent(str(uuid.uuid4()), name, payload, ltime, "web1")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("./deploy.sh", HandlerSpec("./deploy.sh")),
        ("user=./all.sh", HandlerSpec("./all.sh")),
        ("user:deploy=./d.sh x=1", HandlerSpec("./d.sh x=1", "deploy")),
        ("FOO=1 ./run.sh", HandlerSpec("FOO=1 ./run.sh")),
    ],
)
def test_parse_handler_spellings(text: str, spec: HandlerSpec) -> None:
    assert parse_handler(text) == spec


async def test_handler_gets_serf_environment_and_payload_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = (
        f'{{ echo "$SERF_EVENT|$SERF_USER_EVENT|$SERF_USER_LTIME|$SERF_SELF_NAME'
        f'|$MESHNODE_EVENT_NAME|$MESHNODE_EVENT_ID"; cat; }} > {out}'
    )
    runner = EventHandlerRunner("db1", lambda: [script])
    e = event()
    with trio.fail_after(10):
        assert await runner.run_one(script, e) == 0
    env_line, stdin = out.read_text().split("\n", 1)
    assert env_line == f"user|deploy|4|db1|deploy|{e.id}"
    assert stdin == "v1.2\n"  # serf adds the missing newline
    assert (runner.ran, runner.failed) == (1, 0)


async def test_failing_handler_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    runner = EventHandlerRunner("db1", lambda: ["exit 3"])
    with trio.fail_after(10):
        assert await runner.run_one("echo oops; exit 3", event()) == 3
    assert runner.failed == 1
    fields = getattr(caplog.records[-1], "meshnode_fields", {})
    assert (fields["exit_code"], fields["output"]) == (3, "oops")


async def test_hanging_handler_and_its_children_are_killed(tmp_path: Path) -> None:
    child_pid = tmp_path / "child"
    script = f"trap '' TERM; sleep 60 & echo $! > {child_pid}; wait"
    runner = EventHandlerRunner("db1", lambda: [script], timeout_s=0.5, kill_grace_s=0.2)
    start = trio.current_time()
    with trio.fail_after(10):
        assert await runner.run_one(script, event()) is None
    assert trio.current_time() - start < 5
    assert runner.timed_out == 1
    pid = int(child_pid.read_text())
    with trio.fail_after(5):
        while _alive(pid):
            await trio.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_handlers_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    handlers = [
        f'echo "a $SERF_USER_EVENT" >> {log}; sleep 0.05',
        f'user:second=echo "b $SERF_USER_EVENT" >> {log}',
    ]
    runner = EventHandlerRunner("db1", lambda: handlers)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        for name in ("first", "second", "third"):
            runner.submit(event(name))
        with trio.fail_after(10):
            while runner.ran < 4:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert log.read_text().splitlines() == ["a first", "a second", "b second", "a third"]


def test_a_full_queue_drops_and_counts() -> None:
    runner = EventHandlerRunner("db1", lambda: ["true"], queue_max_events=1)
    for _ in range(3):
        runner.submit(event())
    assert runner.dropped == 2


def test_no_handlers_queue_nothing() -> None:
    runner = EventHandlerRunner("db1", lambda: [], queue_max_events=1)
    for _ in range(3):
        runner.submit(event())
    assert runner.dropped == 0


async def test_user_events_run_the_handler_once_per_event(tmp_path: Path) -> None:
    log = tmp_path / "log"
    runner = EventHandlerRunner("db1", lambda: [f"cat >> {log}"])
    events = UserEvents("db1", lambda _payload: None, handler=runner)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        fired = events.fire("deploy", b"once")
        for _ in range(3):
            events.on_user(encode_event(fired))
        with trio.fail_after(10):
            while runner.ran < 1:
                await trio.sleep(0.02)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert log.read_text() == "once\n"
