"""Seven hosts in network namespaces: what a user sees through loss, partitions,
crashes and hostile packets. Every figure asserted here is also recorded (see
conftest.py) so the closing report can quote measured times.

One cluster is shared by the module (starting seven agents costs seconds of the
CI budget); each test leaves it healed and whole.
"""

from __future__ import annotations

import base64
import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from meshnode.gossip.keyring import Keyring, decode_key
from meshnode.gossip.wire import Wire
from tests.chaos.netns import Host, NetnsCluster, ns_http, ns_socket, wait_for

pytestmark = pytest.mark.slow
SEED = 8  # every random choice of these tests; printed for replay
Figures = dict[str, dict[str, Any]]


def register(host: Host, name: str, port: int, **extra: Any) -> None:
    host.put("/v1/agent/service/register", {"Name": name, "Port": port, **extra})


def catalog_has(host: Host, service: str) -> bool:
    found = host.api(f"/v1/catalog/service/{service}")
    return isinstance(found, list) and len(found) > 0


def allowed(host: Host, src: str, dst: str) -> bool | None:
    found = host.api(f"/v1/connect/intentions/check?source={src}&destination={dst}")
    return found["Allowed"] if isinstance(found, dict) else None


def kv_value(host: Host, key: str) -> str | None:
    found = host.api(f"/v1/kv/{key}")
    if not isinstance(found, list) or not found:
        return None
    return base64.b64decode(found[0]["Value"] or "").decode()


def time_until_everywhere(
    hosts: list[Host], pred: Any, timeout_s: float, what: str, poll_s: float = 0.1
) -> float:
    """Seconds until `pred(host)` holds on every host (each host checked until it does)."""
    start = time.monotonic()
    pending = list(hosts)
    for _ in range(int(timeout_s / poll_s) + 10):
        pending = [h for h in pending if not pred(h)]
        if not pending:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            break
        time.sleep(poll_s)
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what} on {[h.name for h in pending]}"
    )


def lossy(cluster: NetnsCluster, seed: int) -> tuple[random.Random, list[dict[str, int]]]:
    """Start LOSS_PCT % loss: the seeded rng (printed for replay) and the counters before it."""
    rng = random.Random(seed)
    print(f"seed={seed}")
    before = [h.counters() for h in cluster.hosts]
    cluster.loss(LOSS_PCT)
    return rng, before


def grown(hosts: list[Host], before: list[dict[str, int]], counter: str) -> int:
    """How much `counter` grew on all `hosts` together since `before`."""
    after = [h.counters() for h in hosts]
    return sum(a.get(counter, 0) - b.get(counter, 0) for a, b in zip(after, before, strict=True))


class StateWatch:
    """Polls every host's member list in a thread, remembering failures and suspicions."""

    def __init__(self, hosts: list[Host], period_s: float = 0.5) -> None:
        self.hosts = hosts
        self.period_s = period_s
        self.failed: list[tuple[float, str, str]] = []  # (t, observer, member)
        self.suspect: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        for _ in range(100_000):
            if self._stop.is_set():
                return
            for h in self.hosts:
                for member, state in h.states().items():
                    if state == "failed":
                        self.failed.append((time.monotonic() - self._start, h.name, member))
                    elif state == "suspect":
                        self.suspect.add((h.name, member))
            self._stop.wait(self.period_s)

    @contextmanager
    def running(self) -> Iterator[StateWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


# --- 1. formation and DNS ------------------------------------------------------------------------


def test_cluster_forms_from_one_seed_and_dns_answers_on_every_host(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    assert cluster.all_alive()
    members = hosts[-1].api("/v1/agent/members")
    assert {m["Name"]: m["Addr"] for m in members} == {h.name: h.ip for h in hosts}, (
        "each member must be known by its advertised address, not 0.0.0.0"
    )
    start = time.monotonic()
    for h in hosts:
        register(h, f"svc-{h.name}", 8000 + h.index)
    # Every host answers for every other host's service with that host's address.
    for asker in hosts:
        time_until_everywhere(
            [o for o in hosts if o is not asker],
            lambda owner, a=asker: a.dig(f"svc-{owner.name}.service.mesh") == [owner.ip],
            15.0,
            f"DNS on {asker.name}",
        )
    dns_s = time.monotonic() - start
    srv = hosts[0].dig(f"svc-{hosts[3].name}.service.mesh", "SRV")
    assert len(srv) == 1 and srv[0].split()[2] == str(8000 + hosts[3].index)
    figures["1_formation_dns"] = {
        "formed_s": figures["setup"]["formed_after_up_s"],
        "dns_all_pairs_s": round(dns_s, 2),
        "dns_pairs": len(hosts) * (len(hosts) - 1),
    }
    print(f"formed, 42 DNS pairs answered {dns_s:.1f} s after the registrations")


# --- 2. random loss ------------------------------------------------------------------------------


LOSS_PCT = 10
LOSS_S = 60.0
# A broadcast is best effort: a host that none of its packets reached catches up
# at anti-entropy, a random peer every 10 s (measured worst: 11.8 s).
SPREAD_MAX_S = 25.0


def test_ten_percent_loss_for_a_minute_declares_no_one_failed(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    rng, before = lossy(cluster, SEED)
    start = time.monotonic()
    service_s: list[float] = []
    intention_s: list[float] = []
    with StateWatch(hosts).running() as watch:
        for round_no in range(20):
            if time.monotonic() - start > LOSS_S - 8:
                break
            writer = rng.choice(hosts)
            svc = f"lossy-{round_no}"
            register(writer, svc, 9000 + round_no)
            service_s.append(
                time_until_everywhere(hosts, lambda h, s=svc: catalog_has(h, s), SPREAD_MAX_S, svc)
            )
            writer = rng.choice(hosts)
            dst = f"lossy-dst-{round_no}"
            writer.put(f"/v1/connect/intentions/exact?source=web&destination={dst}",
                       {"Action": "deny"})  # fmt: skip
            intention_s.append(
                time_until_everywhere(
                    hosts,
                    lambda h, d=dst: allowed(h, "web", d) is False,
                    SPREAD_MAX_S,
                    f"deny {dst}",
                )
            )
            time.sleep(max(0.0, 5.0 - (time.monotonic() - start) % 5.0))
        remaining_s = LOSS_S - (time.monotonic() - start)
        if remaining_s > 0:
            time.sleep(remaining_s)
    received = grown(hosts, before, "udp.recv_packets")
    figures["2_loss"] = {
        "loss_pct": LOSS_PCT,
        "duration_s": round(time.monotonic() - start, 1),
        "failed_observations": len(watch.failed),
        "suspect_pairs_seen": len(watch.suspect),
        "service_to_all_median_s": round(statistics.median(service_s), 2),
        "service_to_all_max_s": round(max(service_s), 2),
        "intention_to_all_median_s": round(statistics.median(intention_s), 2),
        "intention_to_all_max_s": round(max(intention_s), 2),
        "writes": len(service_s) + len(intention_s),
        "gossip_packets_received": received,
    }
    print(figures["2_loss"])
    assert not watch.failed, f"members declared failed under {LOSS_PCT} % loss: {watch.failed}"
    assert len(service_s) >= 5 and len(intention_s) >= 5
    assert cluster.all_alive()


# --- 2b. UDP blocked, TCP open (memberlist #37) ---------------------------------------------------

UDP_BLOCKED_S = 30.0


def _fallback_saves(host: Host) -> int:
    return sum(v for k, v in host.counters().items() if k.endswith("tcp_fallback_saves"))


def test_udp_blocked_to_one_host_is_not_a_failure(cluster: NetnsCluster, figures: Figures) -> None:
    """A firewall drops all UDP between h6 and the others; TCP passes: h6 is never failed.

    Every UDP ping to h6, direct or through a helper, is lost, so without the
    TCP fallback probe h6 is suspected by every host and declared failed
    within a few seconds (7 nodes: Lifeguard's 3.4 s to 20 s).
    """
    hosts = cluster.hosts
    h6 = hosts[5]
    others = [h for h in hosts if h is not h6]
    before = {h.name: _fallback_saves(h) for h in hosts}
    cluster.block_udp([h6], others)
    start = time.monotonic()
    with StateWatch(hosts).running() as watch:
        time.sleep(UDP_BLOCKED_S)
    saves = {h.name: _fallback_saves(h) - before[h.name] for h in hosts}
    figures["2b_udp_blocked"] = {
        "duration_s": round(time.monotonic() - start, 1),
        "failed_observations": len(watch.failed),
        "suspect_pairs_seen": len(watch.suspect),
        "tcp_fallback_saves": sum(saves.values()),
        "tcp_fallback_saves_by_h6": saves[h6.name],
    }
    print(figures["2b_udp_blocked"])
    assert not watch.failed, f"declared failed with only UDP blocked: {watch.failed}"
    assert saves[h6.name] > 0 and sum(saves[h.name] for h in others) > 0
    assert cluster.all_alive()


# --- 3. partition 4 | 3 --------------------------------------------------------------------------


PARTITION_S = 30.0
DETECT_MAX_S = 45.0  # 7 nodes: Lifeguard's suspicion lasts 3.4 s to 20 s, plus slowed probes
REJOIN_MAX_S = 45.0  # measured 0.5 s to 20 s after a one-way cut and a pause


def test_partition_then_heal_converges_and_loses_no_acknowledged_write(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    side_a, side_b = hosts[:4], hosts[4:]
    cluster.partition(side_a, side_b)
    start = time.monotonic()
    # Writes on both sides, each acknowledged by the agent that took it.
    register(side_a[1], "part-a", 7001)
    register(side_b[1], "part-b", 7002)
    side_a[2].put("/v1/connect/intentions/exact?source=pa&destination=db", {"Action": "deny"})
    side_b[2].put("/v1/connect/intentions/exact?source=pb&destination=db", {"Action": "deny"})
    side_a[0].put("/v1/kv/part/a", b"from-a")
    side_b[0].put("/v1/kv/part/b", b"from-b")
    side_a[3].put("/v1/kv/part/both", b"from-a")
    side_b[2].put("/v1/kv/part/both", b"from-b")
    # Every host declares every member of the other side failed (SWIM's verdict on
    # an unreachable member, Lifeguard's suspicion first).
    cross = [(x, y) for x in side_a for y in side_b] + [(y, x) for x in side_a for y in side_b]
    seen: dict[tuple[str, str], float] = {}
    # The partition lasts PARTITION_S, longer (up to DETECT_MAX_S) only if detection is slower.
    for _ in range(int(DETECT_MAX_S / 0.5) + 10):
        views = {h.name: h.states() for h in hosts}
        for x, y in cross:
            if views[x.name].get(y.name) == "failed" and (x.name, y.name) not in seen:
                seen[(x.name, y.name)] = time.monotonic() - start
        if len(seen) == len(cross) or time.monotonic() - start > DETECT_MAX_S:
            break
        time.sleep(0.5)
    missing = [(x.name, y.name, views[x.name].get(y.name)) for x, y in cross
               if (x.name, y.name) not in seen]  # fmt: skip
    assert not missing, f"not declared failed after {DETECT_MAX_S} s of partition: {missing}"
    detect_s = max(seen.values())
    # During the partition, each side has only its own writes.
    assert catalog_has(side_a[0], "part-a") and not catalog_has(side_a[0], "part-b")
    assert kv_value(side_b[1], "part/both") == "from-b"
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - start)))
    partitioned_s = time.monotonic() - start
    cluster.heal()
    healed = time.monotonic()
    alive_s = wait_for(cluster.all_alive, 30.0, "every member alive again after the heal", 0.25)

    def same_digest() -> bool:
        d = set(cluster.digests().values())
        return len(d) == 1 and None not in d

    wait_for(same_digest, 30.0 - (time.monotonic() - healed), "identical replicas", 0.25)
    converge_s = time.monotonic() - healed
    for h in hosts:
        assert catalog_has(h, "part-a") and catalog_has(h, "part-b"), h.name
        assert allowed(h, "pa", "db") is False and allowed(h, "pb", "db") is False, h.name
        assert kv_value(h, "part/a") == "from-a" and kv_value(h, "part/b") == "from-b", h.name
    both = {kv_value(h, "part/both") for h in hosts}
    assert len(both) == 1 and both <= {"from-a", "from-b"}, both
    figures["3_partition"] = {
        "partition_s": round(partitioned_s, 1),
        "detect_first_failed_s": round(min(seen.values()), 2),
        "detect_all_cross_pairs_failed_s": round(detect_s, 2),
        "all_alive_after_heal_s": round(alive_s, 2),
        "identical_digests_after_heal_s": round(converge_s, 2),
        "conflicting_key_winner": both.pop(),
    }
    print(figures["3_partition"])


def test_one_way_partition_and_a_paused_agent_are_failed_then_rejoin(
    cluster: NetnsCluster, figures: Figures
) -> None:
    """The two other fault tools: a host whose packets never leave, and a SIGSTOPped agent."""
    hosts = cluster.hosts
    mute, frozen, rest = hosts[6], hosts[5], hosts[:5]
    cluster.partition([mute], hosts[:6], one_way=True)  # mute hears everyone, nobody hears it
    frozen.pause()
    start = time.monotonic()
    rest[0].put("/v1/kv/oneway/k", b"written while they were away")
    detect_s = time_until_everywhere(
        rest,
        lambda h: {h.states().get(mute.name), h.states().get(frozen.name)} == {"failed"},
        DETECT_MAX_S,
        "mute and frozen declared failed",
        0.25,
    )
    detect_s = time.monotonic() - start
    mute_view = mute.states()
    cluster.heal()  # also SIGCONTs the frozen agent
    healed = time.monotonic()
    # Each side may hold the other dead with no broadcast left to say so: the
    # reconnect push/pull (every 10 s, serf's odds) is what brings them back.
    wait_for(cluster.all_alive, REJOIN_MAX_S, "mute and frozen alive everywhere again", 0.25)
    alive_s = time.monotonic() - healed
    wait_for(lambda: len(set(cluster.digests().values())) == 1, 30.0, "same replicas", 0.25)
    assert time.monotonic() - healed < REJOIN_MAX_S
    converge_s = time.monotonic() - healed
    for h in (mute, frozen):
        assert kv_value(h, "oneway/k") == "written while they were away", h.name
    figures["3b_one_way_and_pause"] = {
        "both_failed_everywhere_s": round(detect_s, 2),
        "mute_saw": ",".join(sorted({s for n, s in mute_view.items() if n != mute.name})),
        "all_alive_after_heal_s": round(alive_s, 2),
        "identical_digests_after_heal_s": round(converge_s, 2),
    }
    print(figures["3b_one_way_and_pause"])


# --- 4. kill -9 of a signer and of a service owner -----------------------------------------------


def leaf_ok(host: Host, service: str, timeout_s: float = 20.0) -> bool:
    try:
        status, body = ns_http(
            host.ns, "GET", f"/v1/agent/connect/ca/leaf/{service}", timeout_s=timeout_s
        )
    except OSError:
        return False
    return status == 200 and "BEGIN CERTIFICATE" in body.get("CertPEM", "")


def test_kill9_signer_and_owner_then_restart_with_same_data(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    by_name = {h.name: h for h in hosts}
    register(hosts[5], "leafy", 6001)
    assert wait_for(lambda: leaf_ok(hosts[5], "leafy"), 30.0, "a first leaf (CA up)", 0.5)
    signers = hosts[5].api("/v1/connect/ca/signers")
    assert isinstance(signers, list) and len(signers) == 3, signers
    signer = by_name[signers[0]]
    owner = hosts[6]  # owns svc-h7 (scenario 1) and the service below, signs nothing
    assert owner.name not in signers
    register(owner, "owned", 6002)
    others = [h for h in hosts if h not in (signer, owner)]
    time_until_everywhere(
        others, lambda h: h.dig("owned.service.mesh") == [owner.ip], 10.0, "owned in DNS"
    )

    # The signer's whole host vanishes (its address answers nothing, not even a
    # reset, so requesters wait out the per-signer timeout); the owner's process
    # crashes on a live host.
    cluster.partition([signer], [h for h in hosts if h is not signer])
    signer.kill9()
    owner.kill9()
    killed = time.monotonic()

    def out_of_dns() -> float:
        time_until_everywhere(
            others, lambda h: h.dig("owned.service.mesh") == [], 20.0, "owned gone from DNS"
        )
        return time.monotonic() - killed

    def declared_failed() -> float:
        time_until_everywhere(
            others,
            lambda h: {h.states().get(signer.name), h.states().get(owner.name)} == {"failed"},
            20.0,
            "both declared failed",
        )
        return time.monotonic() - killed

    def leaf_after_kill() -> float:
        # A service registered after the crash gets a leaf: another signer issues it.
        register(hosts[4], "after-crash", 6003)
        wait_for(lambda: leaf_ok(hosts[4], "after-crash"), 30.0, "a leaf after the kill", 0.5)
        return time.monotonic() - killed

    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(f) for f in (out_of_dns, declared_failed, leaf_after_kill)]
        gone_s, detect_s, leaf_s = (j.result() for j in jobs)
    replaced = hosts[4].api("/v1/connect/ca/signers")
    assert isinstance(replaced, list) and signer.name not in replaced, replaced

    # Restart both with only their data dirs: same key, same peers, same services.
    cluster.heal()
    restarted = time.monotonic()
    signer.start(first_start=False)
    owner.start(first_start=False)
    alive_s = wait_for(cluster.all_alive, 30.0, "restarted agents alive everywhere", 0.25)
    local = owner.api("/v1/agent/services")
    assert isinstance(local, dict) and {"owned", "svc-h7"} <= set(local), local
    back_s = time_until_everywhere(
        hosts, lambda h: h.dig("owned.service.mesh") == [owner.ip], 20.0, "owned back in DNS"
    )
    back_s = time.monotonic() - restarted
    figures["4_kill9"] = {
        "killed": f"{signer.name} (signer, host vanished), {owner.name} (owner)",
        "owner_services_out_of_dns_s": round(gone_s, 2),
        "both_failed_everywhere_s": round(detect_s, 2),
        "leaf_issued_after_kill_s": round(leaf_s, 2),
        "restarted_alive_everywhere_s": round(alive_s, 2),
        "services_back_in_dns_s": round(back_s, 2),
    }
    print(figures["4_kill9"])


# --- 5. proxied connection through loss, cut by a deny -------------------------------------------


@contextmanager
def echo_server(host: Host, port: int) -> Iterator[None]:
    """A TCP echo service on 127.0.0.1:port inside `host`'s namespace (a thread of ours)."""
    listener = ns_socket(host.ns)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    listener.settimeout(0.5)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            for _ in range(1_000_000):
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept_loop() -> None:
        for _ in range(1_000_000):
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def dial(host: Host, port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = ns_socket(host.ns)
    sock.settimeout(timeout_s)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the proxy closes `sock` (EOF or reset) while we keep talking; None if not.

    A slow answer (a retransmit under loss) is not a cut: only EOF or a reset is.
    """
    start = time.monotonic()
    sock.settimeout(0.1)
    for _ in range(int(timeout_s / 0.05) + 10):
        if time.monotonic() - start > timeout_s:
            return None
        try:
            sock.sendall(b"x")
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def echo(sock: socket.socket, payload: bytes) -> bool:
    try:
        sock.sendall(payload)
        got = b""
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            got += chunk
            if len(got) >= len(payload):
                return got == payload
    except OSError:
        return False
    return False


def test_proxied_connection_survives_loss_and_a_deny_cuts_it(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    web_host, db_host, admin = hosts[1], hosts[5], hosts[3]
    db_port, upstream_port = 15432, 19191
    with echo_server(db_host, db_port):
        register(db_host, "db", db_port, Connect={"SidecarService": {}})
        register(web_host, "web", 18080, Connect={"SidecarService": {"Proxy": {"Upstreams": [
            {"DestinationName": "db", "LocalBindPort": upstream_port}]}}})  # fmt: skip

        def connects() -> bool:
            try:
                with dial(web_host, upstream_port, 3.0) as s:
                    return echo(s, b"ping")
            except OSError:
                return False

        ready_s = wait_for(connects, 45.0, "web -> db through both sidecars", 0.5)
        live = dial(web_host, upstream_port)
        assert echo(live, b"hello db")

        cluster.loss(LOSS_PCT)
        rng = random.Random(SEED)
        lossy_start = time.monotonic()
        rtts_s: list[float] = []
        new_ok = 0
        for i in range(200):
            if time.monotonic() - lossy_start > 10.0:
                break
            t0 = time.monotonic()
            assert echo(live, rng.randbytes(256)), f"live connection broke under loss ({i})"
            rtts_s.append(time.monotonic() - t0)
            if i % 10 == 0:
                with dial(web_host, upstream_port, 10.0) as fresh:
                    assert echo(fresh, b"new connection under loss")
                new_ok += 1
            time.sleep(0.05)

        # The deny is written on a third host once the loss is gone: under 10 % loss
        # about 1 write in 15 misses some host's replica until anti-entropy (up to
        # 10 s; see docs/chaos.md), so a 3 s bound would fail that often.
        cluster.loss(0)
        assert echo(live, b"after the loss"), "the live connection did not survive the loss"
        # The cut is timed from the moment the command starts (the CLI's own start-up,
        # ~0.3 s of Python imports, included).
        command_at = time.monotonic()
        arrived: list[float] = []

        def deny_arrives() -> None:
            for _ in range(200):
                if allowed(db_host, "web", "db") is False:
                    arrived.append(time.monotonic() - command_at)
                    return
                time.sleep(0.025)

        watcher = threading.Thread(target=deny_arrives, daemon=True)
        watcher.start()
        out = admin.cli("intention", "deny", "web", "db")
        acked_s = time.monotonic() - command_at
        assert out.stdout.strip() == "Created: web => db (deny)"
        after_ack_s = closed_by_peer(live, 5.0)
        cut_s = None if after_ack_s is None else acked_s + after_ack_s
        live.close()
        watcher.join(10)
        figures["5_proxy"] = {
            "ready_s": round(ready_s, 2),
            "echoes_under_loss": len(rtts_s),
            "new_connections_under_loss": new_ok,
            "rtt_under_loss_median_ms": round(statistics.median(rtts_s) * 1000, 1),
            "rtt_under_loss_max_ms": round(max(rtts_s) * 1000, 1),
            "deny_cli_acked_s": round(acked_s, 2),
            "deny_in_db_host_replica_s": round(arrived[0], 2) if arrived else None,
            "cut_after_deny_command_s": None if cut_s is None else round(cut_s, 2),
        }
        print(figures["5_proxy"])
        assert cut_s is not None and cut_s <= 3.0, f"deny did not cut within 3 s ({cut_s})"
        with dial(web_host, upstream_port) as after:
            assert not echo(after, b"denied now"), "a new connection passed after the deny"
        # Leave the mesh allowing web -> db for anyone who comes after.
        admin.cli("intention", "delete", "web", "db")


# --- 6. hostile hosts on the same bridge ---------------------------------------------------------


def sniff_gossip(host: Host, want: int, timeout_s: float) -> list[bytes]:
    """UDP payloads sent to `host`'s gossip port, read off its eth0 with a raw socket."""
    raw = ns_socket(host.ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    raw.bind(("eth0", 0))
    raw.settimeout(0.5)
    found: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    with raw:
        for _ in range(100_000):
            if len(found) >= want or time.monotonic() > deadline:
                break
            try:
                frame, meta = raw.recvfrom(65535)
            except TimeoutError:
                continue
            if meta[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17 or ip[16:20] != socket.inet_aton(host.ip):
                continue
            udp = ip[ihl:]
            if int.from_bytes(udp[2:4], "big") == 7946:
                found.append(bytes(udp[8 : int.from_bytes(udp[4:6], "big")]))
    return found


def rejected(host: Host, kind: str) -> int:
    return host.counters().get(f"udp.rejected.{kind}", 0)


def test_attackers_without_and_with_the_key_change_nothing_and_are_counted(
    cluster: NetnsCluster, figures: Figures
) -> None:
    hosts = cluster.hosts
    victim = hosts[2]
    rng = random.Random(SEED)
    outsider = cluster.add_extra_host(20)  # on the bridge, no key
    insider = cluster.add_extra_host(21)  # holds the gossip key, speaks garbage and replays
    tcp_before = sum(v for k, v in victim.counters().items() if k.startswith("tcp.rejected."))
    before = {h.name: {k: rejected(h, k) for k in ("AuthError", "DecodeError", "ReplayError")}
              for h in hosts}  # fmt: skip

    wrong = Wire(Keyring([rng.randbytes(32)]))
    ours = Wire(Keyring([decode_key(cluster.key)]))
    captured = sniff_gossip(victim, 20, 10.0)
    assert len(captured) >= 5, f"sniffed only {len(captured)} gossip packets to {victim.name}"
    sent = {"outsider": 0, "insider_garbage": 0, "replays": 0}
    out_sock = ns_socket(outsider.ns, socket.AF_INET, socket.SOCK_DGRAM)
    in_sock = ns_socket(insider.ns, socket.AF_INET, socket.SOCK_DGRAM)
    with out_sock, in_sock:
        for _ in range(20):
            for h in hosts:
                out_sock.sendto(rng.randbytes(rng.randint(1, 1400)), (h.ip, 7946))
                out_sock.sendto(wrong.seal(rng.randbytes(200)), (h.ip, 7946))
                sent["outsider"] += 2
                in_sock.sendto(ours.seal(rng.randbytes(rng.randint(0, 1200))), (h.ip, 7946))
                sent["insider_garbage"] += 1
        for packet in captured:
            in_sock.sendto(packet, (victim.ip, 7946))
            in_sock.sendto(packet, (victim.ip, 7946))
            sent["replays"] += 2
        # A TCP stream of garbage too (push/pull port), from both.
        for ns in (outsider.ns, insider.ns):
            with ns_socket(ns) as tcp:
                tcp.settimeout(3)
                tcp.connect((victim.ip, 7946))
                tcp.sendall(rng.randbytes(64) + ours.frame(ours.seal(b"\xff" * 50)))
                time.sleep(0.3)

    def all_counted() -> bool:
        return all(
            rejected(h, "AuthError") > before[h.name]["AuthError"]
            and rejected(h, "DecodeError") > before[h.name]["DecodeError"]
            for h in hosts
        ) and (
            rejected(victim, "ReplayError") >= before[victim.name]["ReplayError"] + len(captured)
            and sum(v for k, v in victim.counters().items() if k.startswith("tcp.rejected."))
            >= tcp_before + 2
        )

    counted_s = wait_for(all_counted, 10.0, "every attempt kind counted", 0.25)
    time.sleep(3.0)  # would anything bad spread?
    assert cluster.all_alive()
    for h in hosts:
        assert set(h.states()) == {x.name for x in hosts}, f"{h.name} lists an attacker"
    # Replicas still agree (their content may move on: CA renewals, check changes).
    wait_for(lambda: len(set(cluster.digests().values())) == 1, 15.0, "replicas agree", 0.25)
    for attacker in (outsider, insider):
        assert any(f"input from {attacker.ip}" in h.log_text() for h in hosts), attacker.ip
    assert "ReplayError" in victim.log_text()
    totals = {
        kind: sum(rejected(h, kind) - before[h.name][kind] for h in hosts)
        for kind in ("AuthError", "DecodeError", "ReplayError")
    }
    figures["6_attackers"] = {**sent, **{f"rejected_{k}": v for k, v in totals.items()},
                              "counted_within_s": round(counted_s, 2)}  # fmt: skip
    print(figures["6_attackers"])
