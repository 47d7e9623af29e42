"""The longest stretch one big list answer holds the event loop, at 100,000 services.

No request may block the loop for more than a few ms (gossip, DNS and
sidecars share it). This serves the catalog, health and agent endpoints over
real HTTP on loopback from a catalog built as gossip would (catalog_scale.py's
`build`), and for each request records, with a trio Instrument, the longest
single task step (the time between two yields of any task) while the request
is answered, plus the request's wall time. Medians of `--repeat` runs.

    .venv/bin/python bench/list_stall.py                   # 100,000 services
    .venv/bin/python bench/list_stall.py --services 20000 --repeat 3

Run it on the commit before the chunked builders (the anchor) and after.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import trio
from catalog_scale import build

from meshnode.api.agent_service_endpoints import register_agent_service_routes
from meshnode.api.catalog_endpoints import register_catalog_routes
from meshnode.http import Router, serve_http
from meshnode.http.testing import fetch

PATHS = (
    "/v1/catalog/services",
    "/v1/catalog/services?filter=ServiceName%20%3D%3D%20svc1",
    "/v1/catalog/nodes",
    "/v1/catalog/service/svc1",
    "/v1/health/state/any",
    "/v1/health/state/passing?filter=ServiceName%20%3D%3D%20svc1",
)


class LongestStep(trio.abc.Instrument):
    """The longest time any task ran without yielding, since the last `reset`."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._started_s = 0.0

    def reset(self) -> None:
        self.longest_s = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started_s = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.longest_s = max(self.longest_s, time.perf_counter() - self._started_s)


async def measure(router: Router, repeat: int) -> None:
    steps = LongestStep()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))
        trio.lowlevel.add_instrument(steps)
        for path in PATHS:
            longest_ms: list[float] = []
            wall_ms: list[float] = []
            size = 0
            for _ in range(repeat):
                steps.reset()
                started_s = time.perf_counter()
                reply = await fetch(port, "GET", path)
                wall_ms.append((time.perf_counter() - started_s) * 1000)
                longest_ms.append(steps.longest_s * 1000)
                assert reply.status == 200, reply.body[:200]
                size = len(reply.body)
            print(
                f"{path:62} longest step {statistics.median(longest_ms):7.1f} ms"
                f"  wall {statistics.median(wall_ms):7.1f} ms  {size / 1e6:6.2f} MB"
            )
        trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100_000)
    parser.add_argument("--names", type=int, default=1_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    world = build(args.services, args.names, args.nodes, checks=True)
    router = Router()
    register_catalog_routes(router, world.catalog, datacenter="dc1")
    register_agent_service_routes(router, world.catalog, datacenter="dc1")
    print(
        f"{args.services} services, {args.names} names, {args.nodes} nodes;"
        f" medians of {args.repeat}"
    )
    trio.run(measure, router, args.repeat)


if __name__ == "__main__":
    main()
