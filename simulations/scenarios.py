"""The scenarios: each builds a cluster, applies one fault, and checks one outcome.

Every scenario starts with the same join storm (node 0 boots, every other
node joins it at a random time in the first `join_window_s`), waits until every
node has a full view, lets gossip settle, then runs its own phase. An outcome
that is not reached is reported in `failures`; the CLI turns that into a
non-zero exit and the seed to reproduce it.

`convergence` is one intention written to one node's real `Store` and
carried as the agent carries it (a gossip broadcast relayed once per node);
`partition` writes on both sides of the split and ends when every replica's
digest is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import cbor2

from meshnode.gossip.config import GossipConfig
from meshnode.gossip.events import Event, MemberFailed, MemberJoined
from meshnode.gossip.formulas import suspicion_timeout_s
from meshnode.gossip.store import Entry
from simulations.analysis import serf_model_time_s, swim_expected_rounds
from simulations.network import NetworkConfig, Partition
from simulations.report import Curve, coverage_line, distribution_line
from simulations.sim import Counters, SimNode, Simulator


@dataclass(frozen=True, slots=True)
class Params:
    nodes: int
    seed: int
    loss: float = 0.0
    duplicate: float = 0.0
    # Virtual seconds the scenario's own phase may take (the join before it
    # has its own bound); None picks the scenario's default.
    duration_s: float | None = None
    encrypt: bool = False
    delay_ms_median: float = 0.5
    delay_ms_max: float = 50.0
    join_window_s: float = 1.0
    # Quiet time between a converged join and the fault, so the fault is
    # measured on its own rather than on top of the join's gossip.
    settle_s: float = 2.0
    # failure: crashed nodes; false-positives: paused nodes. None: N/100, at least 1.
    faulty: int | None = None
    pause_s: float = 3.0
    pause_drops: bool = False
    lifeguard: bool = True
    # Start converged and quiet instead of with a join storm (large N; see README).
    warm: bool = False

    def network(self) -> NetworkConfig:
        return NetworkConfig(
            loss=self.loss,
            duplicate=self.duplicate,
            delay_ms_median=self.delay_ms_median,
            delay_ms_max=self.delay_ms_max,
        )

    def gossip(self) -> GossipConfig:
        if self.lifeguard:
            return GossipConfig()
        # Lifeguard off: no local-health slowdown, and suspicion is a fixed
        # timeout that confirmations cannot shorten.
        return GossipConfig(awareness_max_multiplier=1, suspicion_max_timeout_mult=1)

    def n_faulty(self) -> int:
        return self.faulty if self.faulty is not None else max(1, self.nodes // 100)


@dataclass(slots=True)
class Result:
    scenario: str
    params: Params
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    trace_sha256: str = ""
    virtual_s: float = 0.0
    counters: Counters = field(default_factory=Counters)
    # Numbers the tests and the README table read.
    figures: dict[str, float] = field(default_factory=dict)
    # The curve the plot shows for this N (the CSV has them all).
    headline: int = -1

    @property
    def ok(self) -> bool:
        return not self.failures


# meshnode/intentions/replica.py's kind, key (source NUL destination) and value
# shape; that module needs trio, which the simulator must not import.
INTENTION_KIND = "intention"
INTENTION_KEY = "web\x00db"


def _intention_value(action: str = "allow") -> bytes:
    """An intention record as the agent stores it: canonical CBOR of its fields."""
    record = {
        "id": "6f0e1c8a-3c1e-4b4e-9d3a-2f1e0c9b8a70",
        "action": action,
        "description": "simulated",
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    return bytes(cbor2.dumps(record, canonical=True))


# ---------------------------------------------------------------------- shared steps


def _new_sim(p: Params) -> Simulator:
    return Simulator(
        n_nodes=p.nodes,
        seed=p.seed,
        network=p.network(),
        gossip=p.gossip(),
        encrypt=p.encrypt,
        pause_drops=p.pause_drops,
    )


def join_deadline_s(p: Params) -> float:
    """Generous bound for a join storm: quick push/pulls plus gossip rounds, scaled by loss."""
    return p.join_window_s + 30.0 + 60.0 * p.loss * 10


def _join_storm(sim: Simulator, p: Params) -> None:
    sim.at(0.0, lambda: sim.start_node(0))
    for i in range(1, p.nodes):
        sim.at(sim.rng.uniform(0.0, p.join_window_s), partial(sim.start_node, i, join=[0]))


def _join_curve(sim: Simulator, start_s: float = 0.0) -> Curve:
    curve = Curve("full view", sim.n_nodes)
    for node in sim.nodes:
        if node.full_view_at_s is not None:
            curve.add(node.full_view_at_s - start_s)
    return curve


def _converge(sim: Simulator, p: Params, result: Result) -> bool:
    """Run the join storm until every node has a full view; record its curve."""
    if p.warm:
        sim.warm_start()
        result.lines.append("warm start: every node booted with the full member list")
        sim.run(sim.now_s + p.settle_s)
        return True
    _join_storm(sim, p)
    sim.on_full_view = sim.stop
    sim.run(join_deadline_s(p))
    sim.on_full_view = None
    curve = _join_curve(sim)
    result.curves.append(curve)
    result.lines.append("join " + coverage_line(curve))
    if sim.full_view_nodes < p.nodes:
        result.failures.append(
            f"join did not converge: {sim.full_view_nodes}/{p.nodes} nodes had a full view "
            f"after {sim.now_s:.1f}s"
        )
        return False
    result.figures["join_100_s"] = curve.time_to(1.0) or 0.0
    sim.run(sim.now_s + p.settle_s)
    return True


def _all_up(sim: Simulator) -> bool:
    return all(n.core is not None and n.up_count == sim.n_nodes for n in sim.nodes)


def _poll(
    sim: Simulator, every_s: float, done: Callable[[], bool], on_done: Callable[[], None]
) -> None:
    """Check `done` every `every_s` virtual seconds (cheap next to the gossip itself)."""

    def check() -> None:
        if done():
            on_done()
        else:
            sim.at(sim.now_s + every_s, check)

    sim.at(sim.now_s + every_s, check)


def _finish(sim: Simulator, result: Result) -> Result:
    c = sim.counters
    result.trace_sha256 = sim.trace_sha256()
    result.virtual_s = sim.now_s
    result.counters = c
    n, t = sim.n_nodes, max(sim.now_s, 1e-9)
    result.figures["packets_per_node_s"] = c.packets_sent / n / t
    result.figures["bytes_per_node_s"] = c.bytes_sent / n / t
    result.lines.append(
        f"traffic: {c.packets_sent / n / t:.1f} packets/node/s, "
        f"{c.bytes_sent / n / t:.0f} UDP bytes/node/s, "
        f"{c.push_pull_bytes / n / t:.0f} push/pull bytes/node/s "
        f"({c.push_pulls_started} push/pulls, {c.push_pulls_failed} failed); "
        f"{c.packets_dropped} packets dropped, {c.packets_rejected} rejected"
    )
    return result


# ---------------------------------------------------------------------- scenarios


def run_join(p: Params) -> Result:
    """Join storm, then the cluster runs for the rest of `duration_s` (default 30 s)."""
    result = Result("join", p)
    sim = _new_sim(p)
    if p.warm:
        # No storm: a converged cluster at rest for `duration_s` (the steady-state benchmark).
        sim.warm_start()
        result.lines.append("warm start: steady state, no join storm")
    else:
        _join_storm(sim, p)
    sim.run(p.duration_s if p.duration_s is not None else 30.0)
    curve = _join_curve(sim)
    result.curves.append(curve)
    result.lines.append("join " + coverage_line(curve))
    if curve.covered < p.nodes:
        result.failures.append(f"only {curve.covered}/{p.nodes} nodes reached a full view")
    elif not _all_up(sim):
        bad = sum(1 for n in sim.nodes if n.up_count != p.nodes)
        result.failures.append(f"{bad} nodes lost their full view by the end")
    result.figures["join_100_s"] = curve.time_to(1.0) or -1.0
    return _finish(sim, result)


def run_convergence(p: Params) -> Result:
    """After the join, one node writes an intention; time until all N replicas hold it."""
    result = Result("convergence", p)
    sim = _new_sim(p)
    if not _converge(sim, p, result):
        return _finish(sim, result)
    origin = sim.rng.randrange(p.nodes)
    start_s = sim.now_s
    curve = Curve("intention replicated", p.nodes)
    written: list[Entry] = []
    holders: set[int] = set()

    def hook(s: Simulator, node: SimNode, entry: Entry) -> None:
        # Coverage: this replica holds the written version (anti-entropy counts too).
        if written and entry.version == written[0].version and node.index not in holders:
            holders.add(node.index)
            curve.add(s.now_s - start_s)
            if len(holders) == p.nodes:
                s.stop()

    sim.store_hooks.append(hook)

    def write() -> None:
        written.append(sim.store_put(origin, INTENTION_KIND, INTENTION_KEY, _intention_value()))
        holders.add(origin)
        curve.add(0.0)

    sim.at(start_s, write)
    sim.run(start_s + (p.duration_s if p.duration_s is not None else 60.0))
    result.curves.append(curve)
    result.lines.append(f"intention written on n{origin:05d}: " + coverage_line(curve))
    cfg = p.gossip()
    model = {
        m: serf_model_time_s(
            p.nodes, m, fanout=cfg.gossip_nodes, interval_s=cfg.gossip_interval_s, loss=p.loss
        )
        for m in (0.5, 0.99, 0.999)
    }
    serf = " ".join(f"{m * 100:g}%={t:.3f}s" for m, t in model.items())
    rounds = swim_expected_rounds(p.nodes, cfg.gossip_nodes)
    result.lines.append(
        f"reference: serf's model {serf}; SWIM/Pittel {rounds:.1f} rounds = "
        f"{rounds * cfg.gossip_interval_s:.3f}s"
    )
    c = sim.counters
    result.lines.append(
        f"store: {c.store_merged} merges, {c.store_relayed} relays, "
        f"{c.anti_entropy_done}/{c.anti_entropy_started} anti-entropy rounds done"
    )
    if curve.covered < p.nodes:
        result.failures.append(f"the intention reached only {curve.covered}/{p.nodes} replicas")
    for m, key in ((0.5, "bcast_50_s"), (0.99, "bcast_99_s"), (1.0, "bcast_100_s")):
        result.figures[key] = curve.time_to(m) or -1.0
    return _finish(sim, result)


def run_failure(p: Params) -> Result:
    """Crash k nodes; every survivor must detect each; then reboot them, and they must refute."""
    result = Result("failure", p)
    sim = _new_sim(p)
    if not _converge(sim, p, result):
        return _finish(sim, result)
    k = min(p.n_faulty(), p.nodes - 2)
    crashed = sorted(sim.rng.sample(range(1, p.nodes), k))
    crashed_names = {sim.nodes[i].name for i in crashed}
    crash_s = sim.now_s
    pairs = Curve("crash detected", (p.nodes - k) * k)
    per_survivor: dict[int, int] = {}
    survivor_done: list[float] = []
    detected: set[tuple[int, str]] = set()
    false_positives: list[tuple[int, str]] = []

    def hook(s: Simulator, node: SimNode, event: Event) -> None:
        if not isinstance(event, MemberFailed):
            return
        name = event.member.name
        if name not in crashed_names or s.nodes[s.index_of[name]].core is not None:
            false_positives.append((node.index, name))
            return
        if (node.index, name) in detected:
            return
        detected.add((node.index, name))
        pairs.add(s.now_s - crash_s)
        per_survivor[node.index] = per_survivor.get(node.index, 0) + 1
        if per_survivor[node.index] == k:
            survivor_done.append(s.now_s - crash_s)
        if len(detected) == pairs.total:
            s.stop()

    sim.hooks.append(hook)
    for i in crashed:
        sim.crash(i)
    limit_s = p.duration_s if p.duration_s is not None else 90.0
    sim.run(crash_s + limit_s)
    result.curves.append(pairs)
    result.headline = len(result.curves) - 1
    result.lines.append(f"crashed {k}: " + ", ".join(sim.nodes[i].name for i in crashed[:10]))
    result.lines.append("detection " + coverage_line(pairs))
    result.lines.append(distribution_line("detection time per (survivor, crash)", pairs.times_s))
    result.lines.append(distribution_line("time until a survivor saw all crashes", survivor_done))
    if pairs.covered < pairs.total:
        result.failures.append(
            f"only {pairs.covered}/{pairs.total} (survivor, crash) pairs detected in {limit_s}s"
        )
        result.lines.append(f"false positives: {len(false_positives)}")
        return _finish(sim, result)
    result.figures["detect_p50_s"] = pairs.time_to(0.5) or -1.0
    result.figures["detect_100_s"] = pairs.time_to(1.0) or -1.0

    # Reboot: incarnation 0 again, which must refute the cluster's record of its death.
    reboot_s = sim.now_s
    rejoined = Curve("reboot seen alive", (p.nodes - 1) * k)
    seen_alive: set[tuple[int, str]] = set()

    def alive_hook(s: Simulator, node: SimNode, event: Event) -> None:
        if not isinstance(event, MemberJoined) or event.member.name not in crashed_names:
            return
        if (node.index, event.member.name) not in seen_alive:
            seen_alive.add((node.index, event.member.name))
            rejoined.add(s.now_s - reboot_s)

    sim.hooks.append(alive_hook)
    survivors = [i for i in range(p.nodes) if i not in set(crashed)]
    for i in crashed:
        sim.start_node(i, join=[survivors[sim.rng.randrange(len(survivors))]])
    _poll(sim, 0.5, lambda: _all_up(sim), sim.stop)
    sim.run(reboot_s + limit_s)
    result.curves.append(rejoined)
    result.lines.append("reboot " + coverage_line(rejoined))
    result.lines.append(f"false positives: {len(false_positives)}")
    if not _all_up(sim):
        bad = sum(1 for n in sim.nodes if n.up_count != p.nodes)
        result.failures.append(f"after reboot, {bad} nodes still miss a live member")
    if false_positives:
        result.failures.append(f"{len(false_positives)} live members were declared dead")
    return _finish(sim, result)


def _false_positive_run(p: Params) -> tuple[Result, list[tuple[int, str]], list[int]]:
    result = Result("false-positives", p)
    sim = _new_sim(p)
    wrongly_dead: list[tuple[int, str]] = []

    def hook(s: Simulator, node: SimNode, event: Event) -> None:
        if isinstance(event, MemberFailed):
            wrongly_dead.append((node.index, event.member.name))

    sim.hooks.append(hook)
    if not _converge(sim, p, result):
        return _finish(sim, result), wrongly_dead, []
    start_s = sim.now_s
    window_s = p.duration_s if p.duration_s is not None else 60.0
    paused = sorted(sim.rng.sample(range(p.nodes), min(p.n_faulty(), p.nodes)))
    for i in paused:
        at_s = start_s + sim.rng.uniform(0.0, max(window_s - p.pause_s, 0.0))
        sim.at(at_s, partial(sim.pause, i, p.pause_s))
    sim.run(start_s + window_s)
    # Whoever was declared dead must come back: no one is really down.
    _poll(sim, 0.5, lambda: _all_up(sim), sim.stop)
    sim.run(sim.now_s + 60.0)
    if not _all_up(sim):
        result.failures.append("some live member was still seen dead 60s after the last pause")
    return _finish(sim, result), wrongly_dead, paused


def run_false_positives(p: Params) -> Result:
    """Loss and paused nodes, Lifeguard on then off, one seed: count live members declared dead."""
    on, fp_on, paused = _false_positive_run(replace(p, lifeguard=True))
    off, fp_off, _ = _false_positive_run(replace(p, lifeguard=False))
    result = Result("false-positives", p)
    result.curves = on.curves
    names_paused = {f"n{i:05d}" for i in paused}
    for label, run, fps in (("lifeguard on", on, fp_on), ("lifeguard off", off, fp_off)):
        subjects = {name for _, name in fps}
        of_paused = sum(1 for _, name in fps if name in names_paused)
        result.lines.extend(f"[{label}] {line}" for line in run.lines)
        result.lines.append(
            f"[{label}] false positives: {len(fps)} (observer, member) declarations about "
            f"{len(subjects)} members; {of_paused} about the {len(paused)} paused nodes"
        )
        result.failures.extend(f"[{label}] {f}" for f in run.failures if "did not converge" in f)
        result.figures[f"fp_{label.split()[1]}"] = float(len(fps))
    if p.loss == 0.0 and fp_on:
        result.failures.append(f"Lifeguard on: {len(fp_on)} false positives at 0% loss")
    if len(fp_on) > len(fp_off):
        result.failures.append(
            f"Lifeguard on gave more false positives ({len(fp_on)}) than off ({len(fp_off)})"
        )
    result.trace_sha256 = on.trace_sha256 + off.trace_sha256
    result.virtual_s = on.virtual_s + off.virtual_s
    result.counters = on.counters
    result.figures.update(
        {k: v for k, v in on.figures.items() if k in ("packets_per_node_s", "bytes_per_node_s")}
    )
    return result


def _write_on_both_sides(
    sim: Simulator, side_a: frozenset[int], side_b: frozenset[int], n_writes: int
) -> list[Entry]:
    """Writes during the split: distinct keys on each side, and one key written on both."""
    entries: list[Entry] = []
    for side, label in ((sorted(side_a), "a"), (sorted(side_b), "b")):
        for i in range(n_writes):
            writer = side[sim.rng.randrange(len(side))]
            entries.append(sim.store_put(writer, "kv", f"split/{label}/{i}", b"v%d" % i))
        # The same intention on both sides: last writer wins everywhere after the heal.
        writer = side[sim.rng.randrange(len(side))]
        action = "allow" if label == "a" else "deny"
        entries.append(
            sim.store_put(writer, INTENTION_KIND, INTENTION_KEY, _intention_value(action))
        )
    return entries


def run_partition(p: Params) -> Result:
    """Split in halves that write apart; each declares the other dead; heal: identical replicas."""
    result = Result("partition", p)
    sim = _new_sim(p)
    if not _converge(sim, p, result):
        return _finish(sim, result)
    order = list(range(p.nodes))
    sim.rng.shuffle(order)
    half = p.nodes // 2
    side_a, side_b = frozenset(order[:half]), frozenset(order[half:])
    side_of = {sim.nodes[i].name: (0 if i in side_a else 1) for i in range(p.nodes)}
    cfg = p.gossip()
    # Bound on the split: an unconfirmed suspicion at its longest, plus a probe round.
    minimum_s = suspicion_timeout_s(cfg.suspicion_mult, p.nodes, cfg.probe_interval_s)
    split_limit_s = minimum_s * cfg.suspicion_max_timeout_mult + 10.0
    split_s = sim.now_s
    spec = Partition(split_s, split_s + split_limit_s, side_a, side_b)
    sim.net.open_partition(spec)
    detected = Curve("other side declared dead", 2 * len(side_a) * len(side_b))
    seen: set[tuple[int, str]] = set()
    wrongly_dead: list[tuple[int, str]] = []
    healed_at: list[float] = []

    def hook(s: Simulator, node: SimNode, event: Event) -> None:
        if not isinstance(event, MemberFailed):
            return
        name = event.member.name
        if healed_at or side_of[name] == side_of[node.name]:
            wrongly_dead.append((node.index, name))
        elif (node.index, name) not in seen:
            seen.add((node.index, name))
            detected.add(s.now_s - split_s)
            if detected.covered == detected.total:
                s.stop()

    sim.hooks.append(hook)
    writes: list[Entry] = []
    sim.at(split_s + 1.0, lambda: writes.extend(_write_on_both_sides(sim, side_a, side_b, 5)))
    sim.run(split_s + split_limit_s)
    # Stay split a little longer, so the heal does not race the last failure notices.
    sim.run(sim.now_s + p.settle_s)
    result.curves.append(detected)
    result.lines.append(f"split {len(side_a)}/{len(side_b)} for {sim.now_s - split_s:.1f}s")
    result.lines.append("split " + coverage_line(detected))
    if detected.covered < detected.total:
        result.failures.append(
            f"before the heal only {detected.covered}/{detected.total} cross-partition "
            "pairs were declared dead"
        )
    sim.net.heal_partition(spec)
    heal_s = sim.now_s
    healed_at.append(heal_s)
    healed = Curve("full view after heal", p.nodes)
    healed_nodes: set[int] = set()
    kinds_differ = [0]
    same_at_s: list[float] = []

    def check_healed() -> bool:
        for node in sim.nodes:
            if node.index not in healed_nodes and node.up_count == p.nodes:
                healed_nodes.add(node.index)
                healed.add(sim.now_s - heal_s)
        digests = {n.store.digest() for n in sim.nodes if n.store is not None}
        kinds_differ[0] = len(digests)
        if len(digests) == 1 and not same_at_s:
            same_at_s.append(sim.now_s - heal_s)
        return len(healed_nodes) == p.nodes and bool(same_at_s)

    _poll(sim, 0.1, check_healed, sim.stop)
    limit_s = p.duration_s if p.duration_s is not None else 120.0
    sim.run(heal_s + limit_s)
    result.curves.append(healed)
    result.lines.append("heal " + coverage_line(healed))
    result.lines.append(f"false positives (same side, or after heal): {len(wrongly_dead)}")
    c = sim.counters
    result.lines.append(
        f"store: {len(writes)} writes during the split; replicas identical "
        + (f"{same_at_s[0]:.2f}s after the heal" if same_at_s else "NEVER")
        + f" ({c.anti_entropy_done} anti-entropy rounds done, {c.anti_entropy_failed} failed, "
        f"{c.anti_entropy_skipped} skipped as busy)"
    )
    if healed.covered < p.nodes:
        result.failures.append(
            f"{p.nodes - healed.covered} nodes had no full view {limit_s:.0f}s after the heal"
        )
    if not same_at_s:
        result.failures.append(
            f"{kinds_differ[0]} different replica digests {limit_s:.0f}s after the heal"
        )
    else:
        result.figures["replicas_same_s"] = same_at_s[0]
    final = {n.store.digest() for n in sim.nodes if n.store is not None}
    winner = sim.nodes[0].store.get(INTENTION_KIND, INTENTION_KEY) if sim.nodes[0].store else None
    expected = max((e for e in writes if e.kind == INTENTION_KIND), key=lambda e: e.version)
    if len(final) != 1 or winner is None or winner.version != expected.version:
        result.failures.append("the replicas do not all hold the last writer's intention")
    result.figures["heal_100_s"] = healed.time_to(1.0) or -1.0
    result.figures["split_100_s"] = detected.time_to(1.0) or -1.0
    return _finish(sim, result)


SCENARIOS: dict[str, Callable[[Params], Result]] = {
    "join": run_join,
    "convergence": run_convergence,
    "failure": run_failure,
    "false-positives": run_false_positives,
    "partition": run_partition,
}
