"""Big list answers yield to the event loop while they are built and encoded.

No request may hold the loop for more than a few ms. A ticker task that only
checkpoints runs once per scheduler pass, so its ticks between sending a
request and the answer's first byte are at least the times the handler
yielded. An answer built and encoded in one go (the code before chunking)
yields only to read the request: 0 to 2 ticks, whatever the catalog's size.
Built in chunks of `CHUNK_OBJECTS`, it yields at least once per chunk. The
count does not depend on the machine's speed, so the test is not timing-flaky.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from meshnode.api.agent_service_endpoints import register_agent_service_routes
from meshnode.api.catalog_endpoints import register_catalog_routes
from meshnode.api.cooperative import CHUNK_OBJECTS, json_response
from meshnode.catalog.catalog import Catalog
from meshnode.catalog.definitions import CheckDefinition, parse_service
from meshnode.catalog.records import CheckRecord, ServiceRecord
from meshnode.catalog.testing import check_entry, service_entry
from meshnode.http import Router, serve_http
from meshnode.store.state import LocalState, NodeInfo, StaticNodes

INSTANCES = 6_000  # 12 chunks of 500 to build, 12 more to encode
NODES = 20
LOCAL = "n0"


def big_catalog() -> Catalog:
    """INSTANCES instances of "web" with a passing TTL check each; half on this agent's node."""
    state = LocalState(LOCAL)
    nodes = StaticNodes(
        [NodeInfo(f"n{i}", f"10.0.0.{i + 1}", "alive") for i in range(NODES)], state.tracker
    )
    catalog = Catalog(state, nodes, node_name=LOCAL, datacenter="dc1")
    entries = []
    for i in range(INSTANCES):
        node = LOCAL if i % 2 == 0 else f"n{1 + i % (NODES - 1)}"  # half are this agent's
        body = {"Name": "web", "ID": f"web{i}", "Port": 1000 + i, "Tags": [f"t{i % 3}"]}
        entries.append(service_entry(ServiceRecord(node, parse_service(body)), i + 1))
        definition = CheckDefinition(kind="ttl", check_id=f"c{i}", ttl_s=30.0)
        check = CheckRecord(
            node, f"c{i}", "passing", definition, service_id=f"web{i}", service_name="web"
        )
        entries.append(check_entry(check, i + 1))
    state.merge(entries)
    return catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return big_catalog()


@pytest.fixture
async def port(nursery: trio.Nursery, catalog: Catalog) -> AsyncIterator[int]:
    router = Router()
    register_catalog_routes(router, catalog, datacenter="dc1")
    register_agent_service_routes(router, catalog, datacenter="dc1")
    yield await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0))


async def ticks_before_answer(port: int, path: str) -> tuple[int, object]:
    """The ticker's passes from sending the GET to the answer's first byte, and its JSON.

    Only up to the first byte: sending a few MB afterwards yields per socket
    write whatever the handler did, so it is not counted.
    """
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()  # the ticker is running before the request is sent
            request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            await stream.send_all(request.encode())
            start = ticks
            received = [await stream.receive_some()]
            counted = ticks - start
            nursery.cancel_scope.cancel()
        with trio.fail_after(30):
            while chunk := await stream.receive_some():
                received.append(chunk)
    head, _, body = b"".join(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    assert b"content-length: %d" % len(body) in head.lower()
    return counted, json.loads(body)


FILTER = "?filter=ServiceName%20%3D%3D%20web"


@pytest.mark.parametrize(
    ("path", "answer_len", "objects_built"),
    [
        ("/v1/catalog/service/web", INSTANCES, INSTANCES),
        ("/v1/catalog/service/web" + FILTER, INSTANCES, INSTANCES),
        ("/v1/health/service/web", INSTANCES, INSTANCES),
        ("/v1/health/state/passing" + FILTER, INSTANCES, INSTANCES),
        ("/v1/health/checks/web", INSTANCES, INSTANCES),
        ("/v1/catalog/services" + FILTER, 1, INSTANCES),
        ("/v1/agent/services", INSTANCES // 2, INSTANCES // 2),
        ("/v1/agent/checks", INSTANCES // 2, INSTANCES // 2),
    ],
)
async def test_big_list_answers_yield_per_chunk(
    port: int, path: str, answer_len: int, objects_built: int
) -> None:
    counted, answer = await ticks_before_answer(port, path)
    assert isinstance(answer, list | dict) and len(answer) == answer_len
    # One yield per chunk built at least (encoding yields more); in one go: 1 or 2.
    wanted = objects_built // CHUNK_OBJECTS
    assert counted >= wanted, f"{path}: {counted} passes of the loop, want >= {wanted}"


async def test_chunked_encoding_is_byte_identical_to_one_dumps() -> None:
    """A long list or map encoded in chunks is the same bytes json.dumps gives in one go."""
    items = [{"Name": f"web{i}", "Tags": ["é", "\u2028"], "Port": i} for i in range(1_234)]
    mapping = {f"k{i}": item for i, item in enumerate(items)}
    for data in (items, mapping, [], {}, items[:3]):
        one_go = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        assert (await json_response(data)).body == one_go
