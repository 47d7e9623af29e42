"""KV across real `meshnode agent` processes on loopback, with gossip encryption.

Covers the replication paths end to end: a broadcast (small value), a notice +
TCP fetch (200 KiB), a delete, anti-entropy after a SIGSTOP longer than the
failure detector's patience, durability of an acknowledged write across kill -9,
the refusal of check-and-set, and an unmodified Consul client (py-consul).
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = pytest.mark.slow


def kv_value(agent: AgentProc, key: str) -> str | None:
    out = agent.cli("kv", "get", key, check=False)
    return out.stdout.rstrip("\n") if out.returncode == 0 else None


def test_put_on_one_is_read_on_three_big_values_and_deletes(
    cluster: Cluster, tmp_path: Path
) -> None:
    a1, a2, a3 = cluster.start(3)
    out = a1.cli("kv", "put", "config/db/url", "postgres://db:5432")
    assert out.stdout.strip() == "Success! Data written to: config/db/url"
    took = wait_for(lambda: kv_value(a3, "config/db/url") == "postgres://db:5432", 3.0, "put")
    print(f"put on n1 -> visible on n3 in {took * 1000:.0f} ms (includes CLI polling)")

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 800)  # 200 KiB: too big for a gossip packet
    a1.cli("kv", "put", "blob", f"@{big}")

    def big_on_3() -> bool:
        with urllib.request.urlopen(f"http://{a3.http}/v1/kv/blob?raw", timeout=2) as r:
            return bool(r.read() == big.read_bytes())

    def maybe(pred: object) -> bool:
        try:
            return bool(pred())  # type: ignore[operator]
        except urllib.error.HTTPError:
            return False

    wait_for(lambda: maybe(big_on_3), 3.0, "200 KiB value on n3")

    a2.cli("kv", "delete", "config/db/url")
    wait_for(lambda: kv_value(a3, "config/db/url") is None, 3.0, "delete on n3")
    missing = a3.cli("kv", "get", "config/db/url", check=False)
    assert missing.returncode == 1
    assert "Error! No key exists at: config/db/url" in missing.stderr

    request = urllib.request.Request(f"http://{a1.http}/v1/kv/x?cas=0", data=b"v", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=2)
    assert refused.value.code == 400
    assert "check-and-set is not supported" in refused.value.read().decode()


def test_paused_agent_catches_up_by_anti_entropy(cluster: Cluster) -> None:
    a1, a2, a3 = cluster.start(3)
    a1.cli("kv", "put", "before", "1")
    wait_for(lambda: kv_value(a3, "before") == "1", 3.0, "first put on n3")
    a3.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.0)
        for i in range(10):
            a1.cli("kv", "put", f"during/{i}", f"v{i}")
        a2.cli("kv", "delete", "before")
        time.sleep(13.0)  # 15 s in all: broadcasts are long spent, n3 is declared failed
    finally:
        a3.send_signal(signal.SIGCONT)
    took = wait_for(
        lambda: (
            a3.cli("kv", "get", "during/", "-keys", check=False).stdout.split()
            == [f"during/{i}" for i in range(10)]
            and kv_value(a3, "before") is None
        ),
        25.0,
        "n3 catching up after SIGCONT",
    )
    print(f"n3 caught up {took:.1f} s after SIGCONT")
    assert kv_value(a3, "during/7") == "v7"


def test_acknowledged_write_survives_kill9_of_the_writer(cluster: Cluster) -> None:
    a1, a2, a3 = cluster.start(3)
    a1.cli("kv", "put", "durable", "acked")
    a1.kill9()  # right after the acknowledgement: maybe before any gossip went out
    a1.start()
    assert kv_value(a1, "durable") == "acked"
    a1.cli("join", a2.gossip)
    wait_for(lambda: kv_value(a3, "durable") == "acked", 25.0, "the write on n3 after restart")


def test_py_consul_kv_against_meshnode(cluster: Cluster) -> None:
    consul = pytest.importorskip("consul")
    a1, a2 = cluster.start(2)
    c1 = consul.Consul(host=a1.ip, port=8500)
    c2 = consul.Consul(host=a2.ip, port=8500)
    assert c1.kv.put("app/feature", "on") is True
    wait_for(lambda: c2.kv.get("app/feature")[1] is not None, 3.0, "py-consul get on n2")
    index, entry = c2.kv.get("app/feature")
    assert entry["Value"] == b"on"
    assert int(index) >= 1
    _, keys = c2.kv.get("app/", keys=True)
    assert keys == ["app/feature"]
    assert c1.kv.delete("app/feature") is True
    wait_for(lambda: c2.kv.get("app/feature")[1] is None, 3.0, "py-consul delete on n2")
