"""Security finding 10 in network namespaces: writes that lag under loss and after a crash.

A deny written on one agent must reach every live agent within 2 s at 10 %
loss (it is pushed over TCP to the other hosts as well as gossiped), and
writes an agent acknowledged just before a kill -9 must reach its peers as
soon as it is back (it reconciles with several peers at once). The figures are
recorded like test_cluster.py's.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from tests.chaos.netns import Host, NetnsCluster, wait_for
from tests.chaos.test_cluster import LOSS_PCT, allowed, grown, lossy, time_until_everywhere

pytestmark = pytest.mark.slow
SEED = 10
Figures = dict[str, dict[str, Any]]

DENIES = 30
DENY_TARGET_S = 2.0
# A deny is later than the target only when a host missed every gossip packet
# of it *and* its TCP push lost a SYN twice (retransmitted at 1 s, then 3 s).
DENY_MAX_S = 3.5


def test_a_deny_reaches_every_agent_within_two_seconds_at_ten_percent_loss(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    rng, before = lossy(cluster, SEED)
    took_s: list[float] = []
    for k in range(DENIES):
        writer = rng.choice(hosts)
        dst = f"lag-dst-{k}"
        start = time.monotonic()
        writer.put(f"/v1/connect/intentions/exact?source=web&destination={dst}",
                   {"Action": "deny"})  # fmt: skip
        time_until_everywhere(
            hosts, lambda h, d=dst: allowed(h, "web", d) is False, 30.0, f"deny {dst}", 0.02
        )
        took_s.append(time.monotonic() - start)
        time.sleep(0.5)
    cluster.heal()
    pushed = grown(hosts, before, "store.push.ok")
    ordered = sorted(took_s)
    figures["10_deny_under_loss"] = {
        "loss_pct": LOSS_PCT,
        "denies": DENIES,
        "median_s": round(statistics.median(ordered), 3),
        "p90_s": round(ordered[int(0.9 * len(ordered))], 3),
        "max_s": round(ordered[-1], 3),
        "over_1s": sum(t > 1.0 for t in took_s),
        "over_2s": sum(t > DENY_TARGET_S for t in took_s),
        "pushes_ok": pushed,
    }
    print(figures["10_deny_under_loss"], [round(t, 2) for t in took_s])
    assert pushed >= DENIES * (len(hosts) - 1) * 3 // 4
    assert max(took_s) < DENY_MAX_S, took_s
    assert sum(t > DENY_TARGET_S for t in took_s) <= DENIES // 30, took_s


KEYS = 300
RECONCILE_MAX_S = 5.0  # the periodic round alone takes up to 15 s


def _has_all(host: Host, prefix: str) -> bool:
    found = host.api(f"/v1/kv/{prefix}?keys")
    return isinstance(found, list) and len(found) == KEYS


def test_writes_acknowledged_before_a_kill9_reach_every_peer_right_after_the_restart(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    victim = hosts[2]
    others = [h for h in hosts if h is not victim]
    # The victim's broadcasts die with it: its packets out are dropped while it
    # takes (and acknowledges) the writes, then it is killed.
    cluster.partition([victim], others, one_way=True)
    prefix = f"crash-{int(time.time())}"
    for k in range(KEYS):
        victim.put(f"/v1/kv/{prefix}/{k:04d}", f"v{k}".encode())
    victim.kill9()
    cluster.heal()
    assert not any(_has_all(h, prefix) for h in others)
    restarted = time.monotonic()
    victim.start(first_start=False)
    up_s = time.monotonic() - restarted
    spread_s = time_until_everywhere(
        others, lambda h: _has_all(h, prefix), 30.0, f"{KEYS} keys written before the crash", 0.05
    )
    total_s = time.monotonic() - restarted
    wait_for(cluster.all_alive, 30.0, "the restarted agent alive everywhere", 0.25)
    figures["10_restart_reconcile"] = {
        "keys": KEYS,
        "agent_up_s": round(up_s, 2),
        "keys_on_every_peer_after_restart_s": round(total_s, 2),
        "after_http_up_s": round(spread_s, 2),
        "restart_rounds": victim.counters().get("store.anti_entropy.restart", 0),
    }
    print(figures["10_restart_reconcile"])
    assert spread_s < RECONCILE_MAX_S
