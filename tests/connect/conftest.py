"""Fixtures for native-service tests: real agents on loopback (see `meshnode.testutil`)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from meshnode.connect import ConnectError, MeshStream, Service
from meshnode.testutil import AgentProc, Cluster, wait_for
from tests.integration.conftest import cluster

__all__ = ["cluster"]  # the real-agent fixture, shared with tests/integration

# How long a fresh registration may take to reach a leaf and the other agent's catalog.
READY_S = 20.0


def start_agents(cluster: Cluster, n: int, *flags: str) -> list[AgentProc]:
    """`n` signer-eligible agents joined into one cluster (leaves re-issued within 2 s)."""
    agents = [
        # The signer token approves every signer (docs/ca.md, "Signers").
        cluster.agent(i).start(
            "-signer", "-signer-token", "t-signers", "-ca-reissue-jitter", "2s", *flags
        )
        for i in range(1, n + 1)
    ]
    for a in agents[1:]:
        a.cli("join", agents[0].gossip)
    wait_for(lambda: all(len(a.statuses()) == n for a in agents), 15.0, f"{n} members")
    return agents


@asynccontextmanager
async def agents_in_nursery(
    cluster: Cluster, n: int, timeout_s: float, *flags: str
) -> AsyncIterator[tuple[list[AgentProc], trio.Nursery]]:
    """`start_agents`, then a nursery bounded by `timeout_s` and cancelled when the body ends."""
    agents = await trio.to_thread.run_sync(start_agents, cluster, n, *flags)
    with trio.fail_after(timeout_s):
        async with trio.open_nursery() as nursery:
            yield agents, nursery
            nursery.cancel_scope.cancel()


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port


async def register(agent: AgentProc, tmp_path: Path, definition: dict[str, Any]) -> None:
    """`meshnode services register` of one definition file, off the trio thread."""
    path = tmp_path / f"{agent.name}-{definition.get('id', definition['name'])}.json"
    path.write_text(json.dumps({"service": definition}))
    await trio.to_thread.run_sync(agent.cli, "services", "register", str(path))


async def cli(agent: AgentProc, *args: str) -> str:
    out = await trio.to_thread.run_sync(agent.cli, *args)
    return out.stdout


async def api(agent: AgentProc, path: str) -> Any:
    return await trio.to_thread.run_sync(agent.api, path)


async def echo(stream: MeshStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def dial_when_ready(service: Service, destination: str) -> MeshStream:
    """The first stream to `destination` once the catalog has it (bounded by READY_S)."""
    last: ConnectError | None = None
    with trio.move_on_after(READY_S):
        while True:
            try:
                return await service.dial(destination, timeout_s=5.0)
            except ConnectError as exc:
                last = exc
                await trio.sleep(0.2)
    raise AssertionError(f"no connection to {destination} within {READY_S} s: {last}")
