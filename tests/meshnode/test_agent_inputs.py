"""The agent reads time and randomness only through what it is given (`agent/inputs.py`)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import trio

from meshnode.agent.core import Agent
from meshnode.agent.inputs import Clock, child_rng
from meshnode.config import load_config

AGENT_DIR = Path(__file__).resolve().parents[2] / "meshnode" / "agent"

# 2026-01-02 03:04:05 UTC
WALL_S = 1767323045.0


async def test_metrics_and_tombstones_use_the_injected_wall_clock(tmp_path: Path) -> None:
    config = load_config(
        {"dev": True, "bind": "127.0.0.1:0"}, [], has_stored_keyring=lambda _: False
    )
    clock = Clock(monotonic_s=trio.current_time, wall_s=lambda: WALL_S)
    agent = Agent(config, tmp_path / "data", rng=random.Random(1), clock=clock)
    try:
        assert agent.metrics()["Timestamp"] == "2026-01-02 03:04:05 +0000 UTC"
        agent.kv_put("a", b"1")
        agent.kv_delete("a")
        (tombstone,) = agent.replicator.store.items("kv", tombstones=True)
        assert tombstone.tombstone_since_s == WALL_S
    finally:
        agent.close()


def test_children_of_one_seed_repeat_and_differ() -> None:
    first, second = random.Random(5), random.Random(5)
    a, b = child_rng(first), child_rng(second)
    assert [a.random() for _ in range(3)] == [b.random() for _ in range(3)]
    assert child_rng(first).random() != child_rng(first).random()


# Who may read the system's randomness: the seed at the top, and the keyring
# query ids (nonces that must differ across processes even on equal seeds).
_OS_RANDOM_ALLOWED = {"lifecycle.py", "keyring_ops.py"}
_CLOCK_READS = {("time", "time"), ("time", "monotonic"), ("trio", "current_time")}
_GLOBAL_RANDOM = {"random", "choice", "choices", "shuffle", "sample", "uniform", "randint"}


def _reads(tree: ast.AST) -> list[str]:
    """Calls such as time.time(), time.gmtime(), random.choice(), os.urandom()."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not isinstance(owner, ast.Name):
            continue
        pair = (owner.id, node.func.attr)
        if pair in _CLOCK_READS or (owner.id == "random" and node.func.attr in _GLOBAL_RANDOM):
            found.append(f"{owner.id}.{node.func.attr}() line {node.lineno}")
        if pair in {("time", "gmtime"), ("time", "localtime")} and not node.args:
            found.append(f"{owner.id}.{node.func.attr}() line {node.lineno}")
        if pair in {("os", "urandom"), ("random", "Random")}:
            found.append(f"{owner.id}.{node.func.attr}() line {node.lineno}")
    return found


def test_no_agent_module_reads_the_clock_or_global_random() -> None:
    offenders = {}
    for path in sorted(AGENT_DIR.glob("*.py")):
        if path.name in _OS_RANDOM_ALLOWED:
            continue
        reads = _reads(ast.parse(path.read_text(), str(path)))
        if path.name == "inputs.py":
            reads = [r for r in reads if not r.startswith("random.Random(")]
        if reads:
            offenders[path.name] = reads
    assert offenders == {}
