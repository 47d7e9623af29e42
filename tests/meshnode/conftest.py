"""Fixtures for the agent-shell tests: a fake agent and its HTTP API on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial

import pytest
import trio
from click.testing import Result

from meshnode.api import STATUS_FAILED, MemberView, build_router
from meshnode.api.testing import FakeAgent
from meshnode.http import serve_http
from meshnode.http.testing import serve_in_thread


@pytest.fixture
def fake_agent() -> FakeAgent:
    return FakeAgent(
        name="web1",
        member_list=[
            MemberView("web1", "127.0.0.1", 7946, {"role": "web"}),
            MemberView("db1", "127.0.0.2", 7946, {"role": "db", "zone": "a"}),
            MemberView("old1", "127.0.0.3", 7947, {}, status=STATUS_FAILED, state="failed"),
        ],
        keys=["pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="],
        primary="pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
    )


@pytest.fixture
async def api_port(nursery: trio.Nursery, fake_agent: FakeAgent) -> AsyncIterator[int]:
    """The fake agent's API served in the test's own trio run; the bound port."""
    port: int = await nursery.start(
        partial(serve_http, build_router(fake_agent), host="127.0.0.1", port=0)
    )
    yield port


@pytest.fixture
def threaded_api_port(fake_agent: FakeAgent) -> Iterator[int]:
    """The fake agent's API in a trio run on another thread, for synchronous tests (CLI)."""
    with serve_in_thread(build_router(fake_agent)) as port:
        yield port


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    """The CLI failed with `code` and one line "Error: ..." naming `fragment`, no traceback."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output
