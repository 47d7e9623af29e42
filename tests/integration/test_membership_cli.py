"""Issue 2's user stories with real agents and the real CLI."""

from __future__ import annotations

import signal
import socket

from meshnode.testutil import AgentProc, Cluster, new_key, wait_for


def all_see(agents: list[AgentProc], node: str, status: str) -> bool:
    return all(a.statuses().get(node) == status for a in agents)


def test_five_agents_join_fail_leave_and_rejoin(cluster: Cluster) -> None:
    agents = cluster.start(5)
    names = {a.name for a in agents}
    wait_for(
        lambda: all(
            set(a.statuses()) == names and set(a.statuses().values()) == {"alive"} for a in agents
        ),
        10.0,
        "five alive everywhere",
    )

    victim, leaver = agents[2], agents[4]
    victim.kill9()
    survivors = [a for a in agents if a is not victim]
    took_s = wait_for(lambda: all_see(survivors, victim.name, "failed"), 10.0, "kill detected")
    print(f"failure detected by every survivor in {took_s:.1f} s")

    # force-leave turns the failure into a departure everywhere (Consul's semantics).
    survivors[0].cli("force-leave", victim.name)
    wait_for(lambda: all_see(survivors, victim.name, "left"), 5.0, "force-leave seen as left")

    out = leaver.cli("leave")
    assert "leave" in out.stdout.lower()
    assert leaver.proc is not None and leaver.proc.wait(10) == 0
    remaining = [a for a in survivors if a is not leaver]
    wait_for(lambda: all_see(remaining, leaver.name, "left"), 5.0, "leave seen as left")

    # Restart the killed agent with nothing but its data dir: same identity,
    # same key, and it finds the cluster through the peers it remembered.
    node_id = None
    victim.start(key=None)
    node_id = victim.api("/v1/agent/self")["Config"]["NodeID"]
    wait_for(lambda: all_see([*remaining, victim], victim.name, "alive"), 10.0, "rejoin")
    assert victim.api("/v1/agent/self")["Config"]["NodeID"] == node_id


def test_sigterm_is_a_graceful_leave(cluster: Cluster) -> None:
    a, b, c = cluster.start(3)
    wait_for(lambda: all_see([a, b, c], "n3", "alive"), 10.0, "three alive")
    c.send_signal(signal.SIGTERM)
    assert c.proc is not None and c.proc.wait(10) == 0
    wait_for(lambda: all_see([a, b], "n3", "left"), 5.0, "SIGTERM seen as left")


def test_wrong_key_cannot_join_and_cluster_is_unharmed(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    intruder = cluster.agent(9)
    other_key = new_key()
    intruder.start(key=other_key)
    out = intruder.cli("join", a.gossip, check=False)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    wait_for(lambda: "AuthError" in a.log_text(), 5.0, "a log line about the bad key")
    assert set(a.statuses()) == {"n1", "n2"} and set(b.statuses()) == {"n1", "n2"}
    assert "n1" not in intruder.statuses() or intruder.statuses()["n1"] != "alive"


def test_key_rotation_on_a_live_cluster(cluster: Cluster) -> None:
    agents = cluster.start(3)
    wait_for(lambda: all_see(agents, "n3", "alive"), 10.0, "three alive")
    old = cluster.key
    new = new_key()
    agents[0].cli("keyring", "-install", new)
    agents[1].cli("keyring", "-use", new)
    agents[2].cli("keyring", "-remove", old)
    listing = agents[0].cli("keyring", "-list").stdout
    assert f"{new} [3/3]" in listing and old not in listing
    # Still one cluster, and a newcomer with only the new key gets in.
    late = cluster.agent(4).start(key=new)
    late.cli("join", agents[0].gossip)
    wait_for(lambda: all_see([*agents, late], "n4", "alive"), 10.0, "newcomer with new key")
    assert all(set(a.statuses().values()) == {"alive"} for a in agents)


def test_garbage_and_half_open_connections_do_not_disturb(cluster: Cluster) -> None:
    agents = cluster.start(3)
    wait_for(lambda: all_see(agents, "n3", "alive"), 10.0, "three alive")
    target = agents[0]
    host = target.ip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for i in range(2000):
            udp.sendto(bytes([i % 256]) * (i % 1500 + 1), (host, 7946))
    half_open = []
    for _ in range(50):
        s = socket.create_connection((host, 7946), timeout=2)
        s.sendall(b"\x00\x00\xff")  # a frame header that never completes
        half_open.append(s)
    try:
        for _ in range(30):
            assert all(set(a.statuses().values()) == {"alive"} for a in agents)
        late = cluster.agent(4).start()
        late.cli("join", target.gossip)
        wait_for(lambda: all_see([*agents, late], "n4", "alive"), 10.0, "join while under junk")
    finally:
        for s in half_open:
            s.close()
    metrics = target.api("/v1/agent/metrics")
    rejected = sum(c["Count"] for c in metrics["Counters"] if ".rejected." in c["Name"])
    assert rejected >= 2000
