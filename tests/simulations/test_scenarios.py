"""Every scenario at small N with a fixed seed, and its asserted outcome.

Each failure message carries the command that replays the run to the packet.
"""

from __future__ import annotations

import pytest

from meshnode.gossip.events import Event, MemberFailed
from meshnode.gossip.replication import ReplicationConfig
from simulations import Params, Partition, Result, Simulator
from simulations.scenarios import (
    run_convergence,
    run_failure,
    run_false_positives,
    run_join,
    run_partition,
)
from simulations.sim import SimNode

SEED = 20261122


def explain(result: Result) -> str:
    p = result.params
    return (
        f"{result.failures}; reproduce with: python -m simulations {result.scenario} "
        f"--nodes {p.nodes} --seed {p.seed} --loss {p.loss}\n" + "\n".join(result.lines)
    )


def test_join_storm_converges() -> None:
    result = run_join(Params(nodes=120, seed=SEED, duration_s=10.0))
    assert result.ok, explain(result)
    assert result.curves[0].covered == 120
    assert 0.0 < result.figures["join_100_s"] < 5.0, explain(result)


def test_join_storm_converges_under_loss_encrypted_and_duplicated() -> None:
    result = run_join(
        Params(nodes=80, seed=SEED, loss=0.05, duplicate=0.02, encrypt=True, duration_s=20.0)
    )
    assert result.ok, explain(result)
    # Duplicates of sealed packets are replays, which the real Wire refuses.
    assert result.counters.packets_rejected > 0


def test_intention_update_reaches_every_replica() -> None:
    result = run_convergence(Params(nodes=120, seed=SEED))
    assert result.ok, explain(result)
    assert result.curves[-1].covered == 120
    # Carried by gossip and relayed once per node, not by the 10 s anti-entropy rounds.
    assert result.counters.store_relayed == 119
    # Infection-style spread: a few gossip rounds of 0.2 s, not seconds per node.
    assert result.figures["bcast_100_s"] < 3.0, explain(result)
    assert result.figures["bcast_50_s"] <= result.figures["bcast_99_s"]


def test_intention_update_sealed_under_loss_and_duplication() -> None:
    """Broadcasts and anti-entropy steps through AES-GCM, with lost and duplicated packets."""
    result = run_convergence(Params(nodes=60, seed=SEED, loss=0.05, duplicate=0.02, encrypt=True))
    assert result.ok, explain(result)
    assert result.curves[-1].covered == 60
    assert result.counters.packets_rejected > 0  # duplicates are replays to the real Wire


def test_partition_heals_to_identical_replicas_under_loss() -> None:
    result = run_partition(Params(nodes=50, seed=SEED + 1, loss=0.02, encrypt=True))
    assert result.ok, explain(result)
    assert result.counters.anti_entropy_done > 0
    assert result.figures["replicas_same_s"] < 30.0, explain(result)


def test_every_survivor_detects_every_crash_and_reboots_refute() -> None:
    result = run_failure(Params(nodes=100, seed=SEED, faulty=3))
    assert result.ok, explain(result)
    detection, reboot = result.curves[1], result.curves[2]
    assert detection.covered == detection.total == 97 * 3
    assert reboot.covered == reboot.total
    # Suspicion lasts at least suspicion_mult * log10(N) probe intervals (8 s at N=100).
    assert min(detection.times_s) >= 8.0


def test_no_false_positives_at_zero_loss_with_paused_nodes() -> None:
    result = run_false_positives(Params(nodes=60, seed=SEED, faulty=3, duration_s=20.0))
    assert result.ok, explain(result)
    assert result.figures["fp_on"] == 0.0


def test_lifeguard_is_no_worse_under_loss() -> None:
    result = run_false_positives(Params(nodes=50, seed=SEED, loss=0.1, faulty=2, duration_s=20.0))
    assert result.figures["fp_on"] <= result.figures["fp_off"], explain(result)


def test_partition_both_sides_detect_then_heal_with_identical_replicas() -> None:
    result = run_partition(Params(nodes=60, seed=SEED))
    assert result.ok, explain(result)
    split, healed = result.curves[1], result.curves[2]
    assert split.covered == split.total == 2 * 30 * 30
    assert healed.covered == 60
    # Writes on both sides during the split; after the heal, one digest everywhere.
    assert 0.0 <= result.figures["replicas_same_s"] < 30.0, explain(result)


def test_long_pause_is_declared_dead_then_refuted() -> None:
    """A node paused past the suspicion timeout is failed, and on resuming refutes it."""
    sim = Simulator(n_nodes=12, seed=SEED)
    failed: list[str] = []

    def hook(s: Simulator, node: SimNode, event: Event) -> None:
        if isinstance(event, MemberFailed):
            failed.append(event.member.name)

    sim.hooks.append(hook)
    sim.start_node(0)
    for i in range(1, 12):
        sim.start_node(i, join=[0])
    sim.run(10.0)
    assert all(n.up_count == 12 for n in sim.nodes)
    sim.pause(5, 40.0)
    sim.run(49.0)
    assert failed and set(failed) == {"n00005"}
    assert sim.nodes[5].backlog, "a paused node queues what it is sent"
    sim.run(90.0)
    assert not sim.nodes[5].backlog
    assert all(n.up_count == 12 for n in sim.nodes)
    assert sim.nodes[5].core is not None and sim.nodes[5].core.incarnation > 0


def test_warm_start_boots_a_quiet_converged_cluster() -> None:
    result = run_failure(Params(nodes=100, seed=SEED, faulty=2, warm=True))
    assert result.ok, explain(result)
    assert result.curves[0].covered == 2 * 98


@pytest.mark.slow
def test_thousand_node_convergence() -> None:
    # Warm: a 1,000-node join storm alone costs minutes of codec work (see README).
    result = run_convergence(Params(nodes=1000, seed=SEED, warm=True))
    assert result.ok, explain(result)
    assert result.curves[-1].covered == 1000
    # O(log N): well within serf's model for the same N, fanout and interval (1.84 s to 99.9 %).
    assert result.figures["bcast_100_s"] < 2.0, explain(result)


def test_scheduled_asymmetric_partition_heals() -> None:
    """A one-way cut on a schedule: probes from one side fail, and it all heals after."""
    sim = Simulator(n_nodes=20, seed=SEED)
    sim.start_node(0)
    for i in range(1, 20):
        sim.start_node(i, join=[0])
    sim.run(10.0)
    assert all(n.up_count == 20 for n in sim.nodes)
    dropped_before = sim.counters.packets_dropped
    sim.partition(
        Partition(10.0, 40.0, frozenset(range(10)), frozenset(range(10, 20)), asymmetric=True)
    )
    sim.run(40.0)
    assert sim.counters.packets_dropped > dropped_before
    assert any(n.up_count < 20 for n in sim.nodes)
    sim.run(100.0)
    assert all(n.up_count == 20 for n in sim.nodes)


def test_paused_node_can_drop_instead_of_queueing() -> None:
    sim = Simulator(n_nodes=8, seed=SEED, pause_drops=True)
    sim.start_node(0)
    for i in range(1, 8):
        sim.start_node(i, join=[0])
    sim.run(10.0)
    dropped_before = sim.counters.packets_dropped
    sim.pause(3, 5.0)
    sim.run(14.0)
    # Datagrams are dropped; TCP still buffers stream data (anti-entropy) for it.
    assert sim.nodes[3].queued_datagrams() == 0
    assert sim.counters.packets_dropped > dropped_before
    sim.run(40.0)
    assert all(n.up_count == 8 for n in sim.nodes)


def test_the_simulator_runs_the_agents_replication_core() -> None:
    """Each node holds the agent's `Replication` core: its relay rule and its config."""
    from meshnode.gossip.replication import Replication, ReplicationConfig
    from meshnode.store import replication as agent

    sim = Simulator(n_nodes=30, seed=SEED, anti_entropy_interval_s=None)
    sim.warm_start()
    assert all(isinstance(n.rules, Replication) for n in sim.nodes)
    assert sim.replication_config == ReplicationConfig()
    assert agent.ReplicationConfig is ReplicationConfig  # one config, not a mirrored copy
    sim.store_put(7, "kv", "flag", b"on")
    sim.run(5.0)
    assert all(n.store is not None and n.store.get("kv", "flag") for n in sim.nodes)
    # The core's rule: every other node relays the write once, the first time it applies it.
    assert sim.counters.store_relayed == 29


def test_a_joiner_that_knows_few_members_still_reconciles_at_once() -> None:
    """The core picks among the alive members it knows, even when random draws miss them.

    A joiner of a 200-node cluster knows a handful of members when its join
    exchange ends; rejection sampling alone would give up and leave its
    store stale until the periodic round.
    """
    sim = Simulator(n_nodes=200, seed=SEED, anti_entropy_interval_s=None)
    sim.start_node(0)
    sim.run(1.0)
    sim.store_put(0, "kv", "before", b"x")
    sim.run(5.0)
    sim.start_node(1, join=[0])
    sim.run(8.0)
    assert sim.counters.anti_entropy_done >= 1
    store = sim.nodes[1].store
    assert store is not None and store.get("kv", "before") is not None


def _deny_spread_s(push_peers: int, writes: int = 150) -> list[float]:
    """Seconds until each of `writes` intention writes is on all 7 nodes, at 10 % loss."""
    from meshnode.gossip.replication import ReplicationConfig
    from simulations.network import NetworkConfig

    sim = Simulator(
        n_nodes=7,
        seed=SEED,
        network=NetworkConfig(loss=0.1),
        replication=ReplicationConfig(push_peers=push_peers),
    )
    sim.warm_start()
    holders: dict[str, set[int]] = {}
    done_at_s: dict[str, float] = {}

    def on_store(s: Simulator, node: SimNode, entry: object) -> None:
        key = getattr(entry, "key", "")
        holders.setdefault(key, set()).add(node.index)
        if len(holders[key]) == 6 and key not in done_at_s:
            done_at_s[key] = s.now_s

    sim.store_hooks.append(on_store)
    written_at_s: dict[str, float] = {}
    for k in range(writes):
        sim.run(sim.now_s + 3.0)
        key = f"web/db{k}"
        written_at_s[key] = sim.now_s
        sim.store_put(k % 7, "intention", key, b"deny")
    sim.run(sim.now_s + 40.0)
    return [done_at_s.get(k, float("inf")) - t for k, t in written_at_s.items()]


def test_a_deny_reaches_all_seven_nodes_in_tcp_retransmission_time_at_ten_percent_loss() -> None:
    """The core's TCP push of a security write, as the simulator runs it.

    Gossip alone leaves about 1 deny in 15 missing from a host until
    anti-entropy (10-25 s). With the push, a deny is late only when a host
    also missed every gossip packet *and* its push lost a SYN twice (1 + 2 s).
    """
    with_push = _deny_spread_s(push_peers=ReplicationConfig().push_peers)
    assert max(with_push) < 3.5, sorted(with_push)[-5:]
    assert sum(t > 2.0 for t in with_push) <= len(with_push) // 100
    gossip_only = _deny_spread_s(push_peers=0)
    assert sum(t > 2.0 for t in gossip_only) >= 5 and max(gossip_only) > 10.0
