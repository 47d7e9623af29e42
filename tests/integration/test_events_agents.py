"""User events across real agents: fired on one, listed on all, handled once per agent."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from meshnode.testutil import Cluster, wait_for

pytestmark = pytest.mark.slow


def test_event_reaches_every_agent_and_runs_the_handler_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.txt"
    handler = f'echo "$SERF_USER_EVENT $(cat)" >> {seen}'
    a1 = cluster.agent(1).start()
    a2 = cluster.agent(2).start()
    a3 = cluster.agent(3).start("-event-handler", handler)
    for a in (a2, a3):
        a.cli("join", a1.gossip)
    out = a1.cli("event", "-name", "deploy", "v42")
    assert out.stdout.startswith("Event ID: ")
    for a in (a1, a2, a3):
        wait_for(
            lambda a=a: any(  # type: ignore[misc]
                e["Name"] == "deploy" for e in (a.api("/v1/event/list") or [])
            ),
            3.0,
            f"deploy listed on {a.name}",
        )
    (event,) = a2.api("/v1/event/list?name=deploy")
    assert base64.b64decode(event["Payload"]) == b"v42"
    wait_for(seen.exists, 5.0, "the handler's output")
    wait_for(lambda: seen.read_text().strip() != "", 5.0, "the handler's line")
    assert seen.read_text().splitlines() == ["deploy v42"]
