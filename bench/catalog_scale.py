"""Catalog and DNS cost at scale: per-answer CPU and registrations per second.

Issue 5 (one PTR query froze an agent) and issue 6 (catalog writes slowed
as the catalog grew) were both costs proportional to the catalog's size.
This script builds a large catalog in one process, as gossip would (remote
services merged into the store), and measures through the real code paths:

- DNS: `Responder.respond` over `CatalogDnsView`, each query a cache miss:
  before it, outside the timed region, a remote check is rewritten (merged
  as gossip would), which raises the index and empties the answer cache,
  as any catalog change does. CPU time per answer
  (`time.process_time_ns`): median and p99, for A and SRV
  `<name>.service.mesh`, a tagged A, PTR of a node address and PTR of a
  service's own address; and PTR of a node address after a *member*
  change, which rebuilds the view's member table (O(members), see
  docs/dns.md).
- Writes: `Catalog.register` / `Catalog.deregister` of local services
  (what `PUT /v1/agent/service/register` calls after parsing), per second,
  with each write's p99; then the same through the HTTP API
  (`PUT /v1/agent/service/register` and `.../deregister/<id>` on the real
  router and server, on loopback, one keep-alive connection; the client
  runs in a worker thread of the same process; `--clients N` runs N client
  processes instead, each with its own connection, so registrations can
  share a commit). Each bounded by count and by `--budget-s`.
  Writes run twice: on an in-memory store, and on a durable one that
  commits each write to SQLite (`Persistence.save_store`, WAL,
  synchronous=FULL) before it returns, as the agent's
  `Replicator.write_many` does (one transaction per registration); the
  data dir is a fresh temporary directory (`--data-dir` picks where, so the
  disk is the one the agent would use), and the built catalog is in it.
  Before the durable writes, the disk's own floor is measured side by side:
  SQLite transactions of one small entry each, in a fresh database on the
  same disk ("SQLite commit alone (anchor)"); a registration cannot be
  acknowledged faster than one of those.

Targets (issue 5 and 6): every answer under 1 ms of CPU at 30,000 services
with 1,000 names; >= 1,000 registrations/s at 100,000 services. The anchor
is the code before the indexes became incremental: run this script on that
commit (`git stash` or a checkout) with the same arguments; its figures are
in docs/dns.md.

    .venv/bin/python bench/catalog_scale.py                  # both scales
    .venv/bin/python bench/catalog_scale.py --dns-services 3000 --names 100 --skip writes
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import multiprocessing.pool
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import dnslib
import trio

from meshnode.api.agent_service_endpoints import register_agent_service_routes
from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import CheckDefinition, parse_service
from meshnode.catalog.dns_view import CatalogDnsView
from meshnode.catalog.records import (
    KIND_CHECK,
    KIND_SERVICE,
    CheckRecord,
    ServiceRecord,
    encode_check,
)
from meshnode.catalog.testing import check_entry, service_entry
from meshnode.dns import DnsConfig, Responder
from meshnode.gossip.store import Entry, Version
from meshnode.http import Router, serve_http
from meshnode.store.persist import Persistence
from meshnode.store.state import LocalState, NodeInfo, StaticNodes

LOCAL = "local"
ANSWER_TARGET_NS = 1_000_000
REGISTER_TARGET_PER_S = 1000.0


class DurableState(LocalState):
    """`LocalState` that commits writes to SQLite first, as `Replicator.write_many` does.

    One transaction per `write_many` (a whole registration) or merge, before
    the change tracker sees the entries; so the built catalog is on disk too.
    """

    def __init__(self, node_name: str, persist: Persistence) -> None:
        super().__init__(node_name)
        self._persist = persist

    def _make_durable(self, entries: list[Entry]) -> None:
        self._persist.save_store(entries, [], self.store.clock)


@dataclass(frozen=True, slots=True)
class World:
    catalog: Catalog
    nodes: StaticNodes
    state: LocalState


def _node_ip(i: int) -> str:
    return f"10.{i // 250}.{i % 250}.1"


def _service_ip(i: int) -> str:
    return f"10.200.{i // 250 % 250}.{i % 250 + 2}"


def build(
    services: int, names: int, nodes: int, checks: bool, state: LocalState | None = None
) -> World:
    """`services` instances of `names` names on `nodes` remote nodes; every 3rd has its own IP."""
    state = state or LocalState(LOCAL)
    members = StaticNodes(
        [NodeInfo(LOCAL, "127.0.0.1", "alive")]
        + [NodeInfo(f"n{i}", _node_ip(i), "alive") for i in range(nodes)],
        state.tracker,
    )
    catalog = Catalog(state, members, node_name=LOCAL, datacenter="dc1", clock=time.monotonic)
    batch: list[Entry] = []
    for i in range(services):
        node = f"n{i % nodes}"
        body: dict[str, object] = {
            "Name": f"svc{i % names}",
            "ID": f"s{i}",
            "Port": 1000 + i % 50000,
            "Tags": [f"t{i % 3}"],
        }
        if i % 3 == 0:
            body["Address"] = _service_ip(i)
        batch.append(service_entry(ServiceRecord(node, parse_service(body)), i + 1))
        if checks:
            check = CheckRecord(
                node,
                f"service:s{i}",
                "passing",
                CheckDefinition(kind="ttl", check_id=f"service:s{i}", ttl_s=30.0),
                service_id=f"s{i}",
                service_name=f"svc{i % names}",
            )
            batch.append(check_entry(check, i + 1))
        if len(batch) >= 2000:
            state.merge(batch)
            batch = []
    state.merge(batch)
    return World(catalog, members, state)


def _query(name: str, qtype: str, rng: random.Random) -> bytes:
    record = dnslib.DNSRecord.question(name, qtype)
    record.header.id = rng.randrange(1 << 16)
    return bytes(record.pack())


def _reverse(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def _pct(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def measure_dns(world: World, args: argparse.Namespace, wanted: list[str]) -> dict[str, object]:
    """CPU ms per cache-missing answer for each query shape."""
    names, nodes, own_ips = args.names, args.nodes, max(1, args.dns_services // 3)
    responder = Responder(CatalogDnsView(world.catalog), DnsConfig(), random.Random(0))
    rng = random.Random(1)
    shapes: dict[str, Callable[[int], bytes]] = {
        "A": lambda k: _query(f"svc{k % names}.service.mesh", "A", rng),
        "SRV": lambda k: _query(f"svc{k % names}.service.mesh", "SRV", rng),
        "A tag": lambda k: _query(f"t1.svc{k % names}.service.mesh", "A", rng),
        "PTR node": lambda k: _query(_reverse(_node_ip(k % nodes)), "PTR", rng),
        "PTR service": lambda k: _query(_reverse(_service_ip(3 * (k % own_ips))), "PTR", rng),
    }
    shapes["PTR node after member change"] = shapes["PTR node"]
    found: dict[str, object] = {}
    first = world.nodes.node("n0")
    assert first is not None
    check = CheckRecord(
        "n0", "churn", "passing", CheckDefinition(kind="ttl", check_id="churn", ttl_s=30.0)
    )
    churn = [encode_check(check), encode_check(replace(check, output="changed"))]
    lamport = [1 << 40]

    def catalog_change() -> None:
        lamport[0] += 1
        entry = Entry(KIND_CHECK, "n0/churn", churn[lamport[0] % 2], Version(lamport[0], "n0"))
        world.state.merge([entry])

    def member_change() -> None:
        world.nodes.set(first)

    for shape, make in shapes.items():
        change = member_change if "member" in shape else catalog_change
        if shape not in wanted:
            continue
        samples: list[int] = []
        answered = 0
        deadline = time.monotonic() + args.budget_s
        for k in range(args.queries):
            if time.monotonic() > deadline:
                break
            query = make(k * 7919)
            change()  # the index rises, the answer cache empties
            t0 = time.process_time_ns()
            response = responder.respond(query)
            samples.append(time.process_time_ns() - t0)
            if isinstance(response, bytes) and dnslib.DNSRecord.parse(response).rr:
                answered += 1
        median, p99 = statistics.median(samples) / 1e6, _pct(samples, 0.99)
        found[shape] = {
            "n": len(samples),
            "answered": answered,
            "median_ms": median,
            "p99_ms": p99,
            "met": p99 * 1e6 < ANSWER_TARGET_NS,
        }
        print(
            f"  {shape:30} n={len(samples):4} answered={answered:4}"
            f"  median {median:8.3f} ms  p99 {p99:8.3f} ms  "
            f"{'<1 ms: met' if p99 * 1e6 < ANSWER_TARGET_NS else '<1 ms: NOT met'}",
            flush=True,
        )
    return found


def measure_commit_anchor(data_dir: Path, count: int, budget_s: float) -> dict[str, object]:
    """The disk's floor: one small entry per SQLite transaction, as a registration commits.

    A fresh database next to the catalog's, so the same disk and fsync.
    """
    with Persistence.open(data_dir / "anchor") as persist:
        value = b"x" * 200
        ops: list[Callable[[], object]] = [
            partial(
                persist.save_store,
                [Entry(KIND_SERVICE, f"{LOCAL}/anchor-{i}", value, Version(i + 1, LOCAL))],
                [],
                i + 1,
            )
            for i in range(count)
        ]
        _, figures = _timed("SQLite commit alone (anchor)", ops, budget_s, False)
    return figures


def _bodies(count: int, prefix: str) -> list[dict[str, object]]:
    return [
        {
            "Name": f"bench{i % 100}",
            "ID": f"{prefix}-{i}",
            "Port": 20000 + i % 10000,
            "Check": {"TTL": "30s"},
        }
        for i in range(count)
    ]


def _run_lane(ops: list[Callable[[], object]], deadline: float, took: list[int]) -> None:
    for op in ops:
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter_ns()
        op()
        took.append(time.perf_counter_ns() - t0)


def _timed(
    label: str, ops: list[Callable[[], object]], budget_s: float, target: bool
) -> tuple[list[int], dict[str, object]]:
    """Run `ops` in order until done or `budget_s`; the indexes of those that ran, and the figures.

    Per second by the wall clock (what a client sees) and by this process's
    CPU time (steadier on a shared machine; the HTTP client's share included).
    """
    took: list[int] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    _run_lane(ops, time.monotonic() + budget_s, took)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return list(range(len(took))), _figures(label, took, wall_s, cpu_s, target, 1)


def _figures(
    label: str, took: list[int], wall_s: float, cpu_s: float, target: bool, clients: int
) -> dict[str, object]:
    """Print and return the rates (by wall and CPU time) and p99 of `took` (ns each)."""
    rate = len(took) / wall_s if wall_s > 0 else 0.0
    cpu_rate = len(took) / cpu_s if cpu_s > 0 else 0.0
    met = rate >= REGISTER_TARGET_PER_S
    verdict = ("  >=1000/s: met" if met else "  >=1000/s: NOT met") if target else ""
    print(
        f"  {label:30} n={len(took):5}  {rate:9.1f}/s wall  {cpu_rate:9.1f}/s CPU"
        f"  p99 {_pct(took, 0.99):8.3f} ms{verdict}",
        flush=True,
    )
    return {
        "n": len(took),
        "per_s": rate,
        "per_cpu_s": cpu_rate,
        "p99_ms": _pct(took, 0.99),
        "clients": clients,
        "met": met,
    }


def measure_writes(world: World, count: int, budget_s: float) -> dict[str, object]:
    """Local registrations then deregistrations per second (wall clock, one process)."""
    catalog = world.catalog
    bodies = _bodies(count, "bench")
    results: dict[str, object] = {}
    done, results["register"] = _timed(
        "register",
        [partial(catalog.register, parse_service(b), source="api") for b in bodies],
        budget_s,
        True,
    )
    _, results["deregister"] = _timed(
        "deregister",
        [partial(catalog.deregister, f"bench-{i}") for i in done],
        budget_s,
        False,
    )
    return results


def _http_put(conn: http.client.HTTPConnection, path: str, body: bytes) -> None:
    conn.request("PUT", path, body=body, headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    reply.read()
    if reply.status != 200:
        raise RuntimeError(f"PUT {path}: HTTP {reply.status}")


def _http_lane(port: int, requests: list[tuple[str, bytes]], deadline: float) -> _Lane:
    """One client: its own keep-alive connection, each answer awaited before the next."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    took: list[int] = []
    cpu_start = time.process_time()
    try:
        _run_lane([partial(_http_put, conn, path, body) for path, body in requests], deadline, took)
    finally:
        conn.close()
    return took, time.process_time() - cpu_start


_Lane = tuple[list[int], float]  # the time of each request (ns), the lane's CPU seconds


def _http_phase(
    label: str,
    port: int,
    requests: list[tuple[str, bytes]],
    budget_s: float,
    target: bool,
    pool: multiprocessing.pool.Pool | None,
) -> tuple[list[int], dict[str, object]]:
    """`requests` in order on one connection in this process, or spread over `pool`'s clients.

    With a pool, client k (its own process, so the clients do not share
    this process's GIL with the server) sends requests k, k+N, ...; the CPU
    rate then counts this process and the clients.
    """
    deadline = time.monotonic() + budget_s
    start, cpu_start = time.perf_counter(), time.process_time()
    if pool is None:
        lanes = [_http_lane(port, requests, deadline)]
    else:
        n = pool._processes  # type: ignore[attr-defined]  # the pool's size
        lanes = pool.starmap(_http_lane, [(port, requests[k::n], deadline) for k in range(n)])
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start + (sum(c for _, c in lanes) if pool else 0.0)
    done = sorted(k + len(lanes) * j for k, (took, _) in enumerate(lanes) for j in range(len(took)))
    took = [t for lane, _ in lanes for t in lane]
    return done, _figures(label, took, wall_s, cpu_s, target, len(lanes))


def _http_client(port: int, count: int, budget_s: float, clients: int) -> dict[str, object]:
    """The client side: register, then deregister what was registered.

    One client runs in this worker thread (as before `--clients`); more run
    in as many processes, started before the clock runs.
    """
    results: dict[str, object] = {}
    bodies = [json.dumps(b).encode() for b in _bodies(count, "http")]
    suffix = f" ({clients} clients)" if clients > 1 else ""
    # fork: the children start at once and need nothing but this module.
    pool = multiprocessing.get_context("fork").Pool(clients) if clients > 1 else None
    try:
        path = "/v1/agent/service/register"
        done, results["register"] = _http_phase(
            "HTTP register" + suffix, port, [(path, b) for b in bodies], budget_s, True, pool
        )
        dereg = [(f"/v1/agent/service/deregister/http-{i}", b"") for i in done]
        _, results["deregister"] = _http_phase(
            "HTTP deregister" + suffix, port, dereg, budget_s, False, pool
        )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return results


def measure_http_writes(
    world: World, count: int, budget_s: float, clients: int = 1
) -> dict[str, object]:
    """The same writes through the HTTP API (router and server on a loopback port).

    The server runs in this thread, where the catalog and its SQLite
    connection live; the client runs in a worker thread.
    """
    router = Router()
    register_agent_service_routes(router, world.catalog, datacenter="dc1")

    async def run() -> dict[str, object]:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))
            results = await trio.to_thread.run_sync(_http_client, port, count, budget_s, clients)
            nursery.cancel_scope.cancel()
        return results

    return trio.run(run)


def _built(
    services: int,
    args: argparse.Namespace,
    checks: bool,
    what: str,
    state: LocalState | None = None,
) -> World:
    t0 = time.perf_counter()
    world = build(services, args.names, args.nodes, checks=checks, state=state)
    print(
        f"{services} services, {args.names} names, {args.nodes} nodes"
        f" (built in {time.perf_counter() - t0:.1f} s); {what}:",
        flush=True,
    )
    return world


def _skip_list(text: str) -> frozenset[str]:
    parts = frozenset(p for p in text.split(",") if p)
    unknown = parts - {"dns", "writes", "memory"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part {sorted(unknown)[0]!r}")
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dns-services", type=int, default=30_000)
    parser.add_argument("--names", type=int, default=1_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--write-services", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300, help="per query shape")
    parser.add_argument("--writes", type=int, default=3_000)
    parser.add_argument("--budget-s", type=float, default=10.0, help="per measurement")
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="concurrent HTTP clients (keep-alive connections), each waiting for its answers",
    )
    parser.add_argument(
        "--shapes",
        default="A,SRV,A tag,PTR node,PTR service,PTR node after member change",
        help="comma-separated",
    )
    parser.add_argument(
        "--skip",
        type=_skip_list,
        default=frozenset(),
        help="comma-separated: dns, writes (all of them), memory (the in-memory store's)",
    )
    parser.add_argument("--data-dir", default=None, help="parent of the temporary SQLite dir")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    out: dict[str, object] = {"args": {**vars(args), "skip": sorted(args.skip)}}
    if "dns" not in args.skip:
        world = _built(args.dns_services, args, True, "CPU per cache-missing answer")
        out["dns"] = measure_dns(world, args, args.shapes.split(","))
        del world
    if "writes" not in args.skip:
        if "memory" not in args.skip:
            world = _built(args.write_services, args, False, "local writes, in-memory store")
            out["writes"] = measure_writes(world, args.writes, args.budget_s)
            out["http_writes"] = measure_http_writes(
                world, args.writes, args.budget_s, args.clients
            )
            del world
        with tempfile.TemporaryDirectory(dir=args.data_dir) as data_dir:
            persist = Persistence.open(Path(data_dir))
            try:
                state = DurableState(LOCAL, persist)
                what = "local writes, each committed to SQLite first"
                world = _built(args.write_services, args, False, what, state)
                out["commit_anchor"] = measure_commit_anchor(
                    Path(data_dir), args.writes, args.budget_s
                )
                out["durable_writes"] = measure_writes(world, args.writes, args.budget_s)
                out["durable_http_writes"] = measure_http_writes(
                    world, args.writes, args.budget_s, args.clients
                )
            finally:
                persist.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
