"""Each kind has its own room in the store: a full KV never blocks the control plane.

Sans-IO on `Store` for the rules (local writes, gossip from a key holder,
loading an old store), then a real agent: KV filled to its budget answers
413, while a deny intention, a service registration and `meshnode ca rotate`
still succeed; a recursive delete shrinks the database file.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest

from meshnode.gossip.errors import LocalProtocolError
from meshnode.gossip.store import (
    DEFAULT_LIMITS,
    Entry,
    KindFull,
    RemoteStoreFull,
    Store,
    StoreLimits,
    Version,
)
from meshnode.store.persist import DB_FILENAME
from meshnode.testutil import MESHNODE, AgentProc, Cluster, wait_for

_MIB = 1024 * 1024
_VALUE = b"x" * 500_000  # the report's 500 KB values
_WALL_S = 1_000_000.0


def _small_kv() -> StoreLimits:
    return DEFAULT_LIMITS.with_budget("kv", 2 * _MIB)


def _fill_kv(store: Store) -> int:
    """Put values until KV refuses; how many fitted."""
    for i in range(100):
        try:
            store.put("kv", f"big/{i}", _VALUE)
        except KindFull:
            return i
    raise AssertionError("KV never filled")


def test_defaults_add_up_to_the_store_totals() -> None:
    limits = DEFAULT_LIMITS
    budgets = [b for _, b in limits.budgets] + [limits.other_budget]
    assert sum(b.max_bytes for b in budgets) == limits.store_max_bytes
    assert sum(b.max_entries for b in budgets) == limits.entries_max


def test_the_default_store_takes_100k_services_with_sidecars_and_their_checks() -> None:
    """Issue 15, finding 6: the old 32,768-entry rooms refused a 100,000-service cluster.

    Values are the sizes the catalog writes (a service ~190 bytes, a check
    ~260), on 1,000 nodes, as gossip would merge them.
    """
    store = Store("n0")
    service, check = b"s" * 190, b"c" * 260
    lamport = 0
    for i in range(100_000):
        node = f"n{i % 1000}"
        for kind, key, value in (
            ("service", f"{node}/svc-{i}", service),
            ("service", f"{node}/svc-{i}-sidecar-proxy", service),
            ("check", f"{node}/service:svc-{i}", check),
            ("check", f"{node}/service:svc-{i}-sidecar-proxy", check),
        ):
            lamport += 1
            assert store.merge(Entry(kind, key, value, Version(lamport, node)))
    assert store.kind_usage("service")[1] == store.kind_usage("check")[1] == 200_000


def test_with_budget_moves_the_total_so_other_kinds_keep_their_room() -> None:
    limits = _small_kv()
    assert limits.budget_of("kv")[1].max_bytes == 2 * _MIB
    assert limits.store_max_bytes == DEFAULT_LIMITS.store_max_bytes - 126 * _MIB
    assert limits.budget_of("intention") == DEFAULT_LIMITS.budget_of("intention")


def test_a_full_kv_refuses_kv_writes_only() -> None:
    store = Store("n1", _small_kv())
    assert _fill_kv(store) == 4
    with pytest.raises(KindFull, match=r"kind 'kv' would hold .* its budget is 2097152"):
        store.put("kv", "one/more", _VALUE)
    # The control plane still writes, and a small KV overwrite of a big value fits.
    store.put("intention", "web\x00db", b"deny" * 100)
    store.put("service", "n1/web", b"s" * 1000)
    store.put("ca", "root/1", b"c" * 10_000)
    store.put("kv", "big/0", b"small now")
    # A delete always fits (a tombstone is smaller), and frees room.
    store.delete("kv", "big/1", _WALL_S)
    store.put("kv", "one/more", _VALUE[:400_000])


def test_a_gossip_key_holder_cannot_fill_our_store_either() -> None:
    store = Store("n1", _small_kv())
    remote = [Entry("kv", f"evil/{i}", _VALUE, Version(i + 1, "mallory")) for i in range(20)]
    taken = 0
    for entry in remote:
        with contextlib.suppress(RemoteStoreFull):  # the replicator drops it
            taken += store.merge(entry)
    assert taken == 4
    # Inventing kinds gets only the shared budget of unlisted kinds.
    other = DEFAULT_LIMITS.other_budget.max_bytes
    with pytest.raises(RemoteStoreFull, match="kinds without a budget"):
        for i in range(other // len(_VALUE) + 2):
            store.merge(Entry(f"junk{i}", "k", _VALUE, Version(100 + i, "mallory")))
    assert store.merge(Entry("intention", "a\x00b", b"deny", Version(999, "n2")))


def test_a_store_over_budget_still_loads_whole_and_takes_deletes() -> None:
    big = Store("n1")
    for i in range(8):
        big.put("kv", f"k{i}", _VALUE)
    entries = list(big.entries())
    reloaded = Store("n1", _small_kv())
    reloaded.load(entries, big.clock)  # acknowledged writes are never dropped
    assert len(reloaded.items("kv")) == 8
    with pytest.raises(LocalProtocolError):
        reloaded.put("kv", "new", _VALUE)
    reloaded.delete("kv", "k0", _WALL_S)


# --- a real agent ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("budgets")))
    try:
        yield cluster.agent(1).start("-signer", "-kv-max-mib", "4")
    finally:
        cluster.stop_all()


def _put(agent: AgentProc, path: str, body: bytes, method: str = "PUT") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{agent.http}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def test_a_full_kv_answers_413_and_the_control_plane_keeps_working(agent: AgentProc) -> None:
    statuses = [_put(agent, f"/v1/kv/fill/{i}", _VALUE)[0] for i in range(12)]
    assert statuses[:8] == [200] * 8 and set(statuses[8:]) == {413}, statuses
    status, body = _put(agent, "/v1/kv/fill/more", _VALUE)
    assert status == 413 and b"kind 'kv'" in body and b"budget" in body
    host, port = agent.http.rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))
    assert c.agent.service.register("db", service_id="db", port=5432)
    intention = {"SourceName": "web", "DestinationName": "db", "Action": "deny"}
    assert _put(agent, "/v1/connect/intentions", json.dumps(intention).encode(), "POST")[0] == 200
    wait_for(lambda: agent.api("/v1/connect/ca/roots")["Roots"], 20.0, "a CA root")
    rotate = subprocess.run(
        [MESHNODE, "ca", "rotate", "-http-addr", agent.http],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotate.returncode == 0, rotate.stderr
    assert len(agent.api("/v1/connect/ca/roots")["Roots"]) == 2


def test_deleting_kv_shrinks_the_database_file(agent: AgentProc) -> None:
    db_path = agent.data_dir / DB_FILENAME
    for i in range(8):
        _put(agent, f"/v1/kv/fill/{i}", _VALUE)
    full_bytes = db_path.stat().st_size + _wal_bytes(db_path)
    assert full_bytes > 4_000_000
    request = urllib.request.Request(f"http://{agent.http}/v1/kv/fill/?recurse", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    # Checkpoints move the shrink into the main file; the WAL is cut back after.
    wait_for(
        lambda: (
            db_path.stat().st_size < full_bytes // 2
            and db_path.stat().st_size + _wal_bytes(db_path) < full_bytes
        ),
        30.0,
        f"{db_path} to shrink from {full_bytes} bytes",
    )


def _wal_bytes(db_path: Path) -> int:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0
