"""The trio server with a real client: dig against a StaticCatalog served in-process."""

from __future__ import annotations

import random
import re
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import dnslib
import pytest
import trio

from meshnode.dns import DnsBindError, DnsBound, DnsConfig, DnsServer, StaticCatalog, serve_dns
from meshnode.dns.server import _bind

pytestmark = pytest.mark.skipif(
    not __import__("shutil").which("dig"), reason="dig missing: apt-get install bind9-dnsutils"
)


@dataclass
class Dig:
    status: str
    flags: set[str]
    answer: list[str]
    authority: list[str]
    additional: list[str]


def _section(text: str, title: str) -> list[str]:
    match = re.search(rf";; {title} SECTION:\n(.*?)(?:\n\n|\Z)", text, re.S)
    return [" ".join(line.split()) for line in match.group(1).splitlines()] if match else []


async def dig(port: int, *args: str) -> Dig:
    done = await trio.run_process(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", *args],
        capture_stdout=True,
        check=False,
    )
    text = done.stdout.decode()
    status = re.search(r"status: (\w+)", text)
    flags = re.search(r";; flags: ([\w ]*);", text)
    assert status and flags, text
    return Dig(
        status.group(1),
        set(flags.group(1).split()),
        _section(text, "ANSWER"),
        _section(text, "AUTHORITY"),
        _section(text, "ADDITIONAL"),
    )


def addresses(lines: list[str]) -> list[str]:
    return sorted(line.split()[-1] for line in lines)


async def start(nursery: trio.Nursery, catalog: StaticCatalog, **config: Any) -> int:
    bound: DnsBound = await nursery.start(
        partial(
            serve_dns, catalog, DnsConfig(host="127.0.0.1", port=0, **config), rng=random.Random(1)
        )
    )
    assert bound.udp_port == bound.tcp_port
    return bound.udp_port


@pytest.fixture
async def port(nursery: trio.Nursery, catalog: StaticCatalog) -> AsyncIterator[int]:
    yield await start(nursery, catalog)


async def test_a_and_aaaa(port: int) -> None:
    web = await dig(port, "web.service.mesh")
    assert web.status == "NOERROR" and "aa" in web.flags
    assert addresses(web.answer) == ["10.0.0.1", "10.0.0.2"]
    db = await dig(port, "db.service.mesh", "AAAA")
    assert addresses(db.answer) == ["fd00::6"]


async def test_srv_with_additional_addresses(port: int) -> None:
    srv = await dig(port, "web.service.mesh", "SRV")
    assert sorted(line.split()[-4:] for line in srv.answer) == [
        ["1", "2", "8080", "n2.node.dc1.mesh."],
        ["1", "5", "80", "n1.node.dc1.mesh."],
    ]
    assert sorted(srv.additional) == [
        "n1.node.dc1.mesh. 0 IN A 10.0.0.1",
        "n2.node.dc1.mesh. 0 IN A 10.0.0.2",
    ]


async def test_tags_rfc_2782_and_nodes(port: int) -> None:
    assert addresses((await dig(port, "primary.web.service.mesh")).answer) == ["10.0.0.1"]
    rfc = await dig(port, "_web._tcp.service.mesh", "SRV")
    assert len(rfc.answer) == 2 and len(rfc.additional) == 2
    tagged = await dig(port, "_web._v2.service.mesh", "SRV")
    assert [line.split()[-2] for line in tagged.answer] == ["8080"]
    node = await dig(port, "N1.node.MESH")
    assert addresses(node.answer) == ["10.0.0.1"]
    txt = await dig(port, "n1.node.mesh", "TXT")
    assert sorted(line.split()[-1] for line in txt.answer) == ['"rack=a"', '"role=web"']


async def assert_nxdomain_with_soa(port: int, name: str) -> None:
    missing = await dig(port, name)
    assert missing.status == "NXDOMAIN" and missing.answer == []
    assert len(missing.authority) == 1 and " SOA ns.mesh. hostmaster.mesh. " in missing.authority[0]


def last_fields(lines: list[str]) -> list[str]:
    """The record data of one-name records (PTR, NS, SRV's target), sorted."""
    return sorted(line.split()[-1] for line in lines)


async def test_nxdomain_with_soa_and_ptr(port: int) -> None:
    await assert_nxdomain_with_soa(port, "nope.service.mesh")
    ptr = await dig(port, "-x", "10.0.0.1")
    assert last_fields(ptr.answer) == ["n1.node.dc1.mesh.", "web.service.dc1.mesh."]


async def test_datacenter_forms_and_ns_with_glue(
    nursery: trio.Nursery, catalog: StaticCatalog
) -> None:
    port = await start(nursery, catalog, datacenter="east", node_name="n1")
    for name in ("web.service.east.mesh", "web.service.east.dc.mesh"):
        assert addresses((await dig(port, name)).answer) == ["10.0.0.1", "10.0.0.2"], name
    assert addresses((await dig(port, "n2.node.east.dc.mesh")).answer) == ["10.0.0.2"]
    assert addresses((await dig(port, "0a000002.addr.east.mesh")).answer) == ["10.0.0.2"]
    await assert_nxdomain_with_soa(port, "web.service.west.mesh")
    srv = await dig(port, "web.service.east.mesh", "SRV")
    assert last_fields(srv.answer) == ["n1.node.east.mesh.", "n2.node.east.mesh."]
    ns = await dig(port, "mesh", "NS")
    assert ns.status == "NOERROR" and "aa" in ns.flags
    assert ns.answer == ["mesh. 0 IN NS n1.node.east.mesh."]
    assert ns.additional == ["n1.node.east.mesh. 0 IN A 10.0.0.1"]
    soa = await dig(port, "mesh", "SOA")
    assert soa.authority == ["mesh. 0 IN NS n1.node.east.mesh."]


async def test_truncated_over_udp_then_complete_over_tcp(port: int) -> None:
    udp = await dig(port, "big.service.mesh", "SRV", "+ignore")
    assert "tc" in udp.flags and len(udp.answer) < 100
    no_edns = await dig(port, "big.service.mesh", "+ignore", "+noedns")
    assert "tc" in no_edns.flags and len(no_edns.answer) < 100
    tcp = await dig(port, "big.service.mesh", "SRV", "+tcp")
    assert "tc" not in tcp.flags and len(tcp.answer) == 100 and len(tcp.additional) == 100
    retried = await dig(port, "big.service.mesh")  # dig itself retries over TCP on TC
    assert len(retried.answer) == 100


async def test_outside_the_domain_is_refused(port: int) -> None:
    refused = await dig(port, "example.org")
    assert refused.status == "REFUSED" and refused.answer == []


async def _fake_upstream(
    udp: trio.socket.SocketType, tcp: trio.socket.SocketType, nursery: trio.Nursery
) -> None:
    """Answers every query with 192.0.2.7, over UDP and TCP."""

    def answer(data: bytes) -> bytes:
        request = dnslib.DNSRecord.parse(data)
        reply = request.reply()
        reply.add_answer(dnslib.RR(request.q.qname, rdata=dnslib.A("192.0.2.7"), ttl=42))
        return bytes(reply.pack())

    async def serve_tcp_client(conn: trio.socket.SocketType) -> None:
        with conn:
            head = await conn.recv(2)
            (length,) = struct.unpack("!H", head)
            data = b""
            while len(data) < length:
                data += await conn.recv(length - len(data))
            reply = answer(data)
            await conn.send(struct.pack("!H", len(reply)) + reply)

    async def serve_tcp() -> None:
        while True:
            conn, _ = await tcp.accept()
            nursery.start_soon(serve_tcp_client, conn)

    nursery.start_soon(serve_tcp)
    while True:
        data, peer = await udp.recvfrom(4096)
        await udp.sendto(answer(data), peer)


async def test_recursors_answer_names_outside_the_domain(catalog: StaticCatalog) -> None:
    plain_udp, plain_tcp = _bind("127.0.0.1", 0)  # the server's own pair, port-0 retries included
    udp = trio.socket.from_stdlib_socket(plain_udp)
    tcp = trio.socket.from_stdlib_socket(plain_tcp)
    with udp, tcp:
        upstream_port = udp.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fake_upstream, udp, tcp, nursery)
            port = await start(nursery, catalog, recursors=(f"127.0.0.1:{upstream_port}",))
            for transport in ("+notcp", "+tcp"):
                forwarded = await dig(port, "example.org", transport)
                assert forwarded.answer == ["example.org. 42 IN A 192.0.2.7"], transport
                assert "ra" in forwarded.flags
            web = await dig(port, "web.service.mesh")
            assert addresses(web.answer) == ["10.0.0.1", "10.0.0.2"]
            nursery.cancel_scope.cancel()


async def test_a_dead_recursor_gives_servfail_in_time(
    nursery: trio.Nursery, catalog: StaticCatalog
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        dead = silent.getsockname()[1]
        port = await start(
            nursery, catalog, recursors=(f"127.0.0.1:{dead}",), recursor_timeout_s=0.3
        )
        started = trio.current_time()
        failed = await dig(port, "example.org")
        assert failed.status == "SERVFAIL"
        assert trio.current_time() - started < 2.0


def _raw_query(name: str, qid: int = 0x4242) -> bytes:
    return bytes(dnslib.DNSRecord(dnslib.DNSHeader(id=qid), q=dnslib.DNSQuestion(name)).pack())


GARBAGE = [
    b"",
    b"\x00",
    b"\xff" * 11,
    b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # no question
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # loop
    b"\x12\x34\x01\x00\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01\xc0\x0c",
    b"\x12\x34\x81\x80" + b"\x00" * 8,  # a response
    b"\x12\x34\x28\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",  # UPDATE
    random.Random(3).randbytes(700),
    b"\x12\x34\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x3f" * 300,
]


async def _udp_exchange(port: int, data: bytes, *, expect_reply: bool) -> bytes | None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(data)
        if not expect_reply:
            return None
        with trio.fail_after(5):
            reply: bytes = await sock.recv(65535)
            return reply


@pytest.mark.parametrize("batching", [True, False])
async def test_udp_garbage_never_disturbs_the_server(
    nursery: trio.Nursery, catalog: StaticCatalog, batching: bool
) -> None:
    server = DnsServer(catalog, DnsConfig(port=0), udp_batching=batching)
    bound: DnsBound = await nursery.start(server.run)
    for data in GARBAGE:
        await _udp_exchange(bound.udp_port, data, expect_reply=False)
        reply = await _udp_exchange(
            bound.udp_port, _raw_query("web.service.mesh"), expect_reply=True
        )
        assert reply is not None
        parsed = dnslib.DNSRecord.parse(reply)
        assert parsed.header.id == 0x4242 and len(parsed.rr) == 2, data
    formerr = await _udp_exchange(bound.udp_port, GARBAGE[3], expect_reply=True)
    assert formerr is not None and dnslib.DNSRecord.parse(formerr).header.rcode == 1
    assert server.stats.dropped >= 3 and server.stats.formerr >= 1


async def _tcp_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    """Never read past the message: pipelined answers may share one segment."""
    buffer = b""
    while len(buffer) < size:
        chunk = await stream.receive_some(size - len(buffer))
        if not chunk:
            return None
        buffer += chunk
    return buffer


async def _tcp_read_message(stream: trio.SocketStream) -> bytes | None:
    with trio.fail_after(5):
        prefix = await _receive_exactly(stream, 2)
        if prefix is None:
            return None
        return await _receive_exactly(stream, struct.unpack("!H", prefix)[0])


async def _tcp_ask(stream: trio.SocketStream, data: bytes) -> dnslib.DNSRecord:
    await stream.send_all(struct.pack("!H", len(data)) + data)
    reply = await _tcp_read_message(stream)
    assert reply is not None
    return dnslib.DNSRecord.parse(reply)


async def test_tcp_garbage_pipelining_and_oversized_prefixes(
    nursery: trio.Nursery, catalog: StaticCatalog
) -> None:
    port = await start(nursery, catalog)
    async with await _tcp_connect(port) as stream, await _tcp_connect(port) as other:
        # Two queries in one write come back as two answers, in order.
        first, second = _raw_query("web.service.mesh", 1), _raw_query("nope.service.mesh", 2)
        await stream.send_all(b"".join(struct.pack("!H", len(q)) + q for q in (first, second)))
        replies = [await _tcp_read_message(stream) for _ in range(2)]
        answers = [dnslib.DNSRecord.parse(reply or b"") for reply in replies]
        assert [(a.header.id, a.header.rcode) for a in answers] == [(1, 0), (2, 3)]
        garbage = await _tcp_ask(stream, GARBAGE[3])
        assert garbage.header.rcode == dnslib.RCODE.FORMERR
        # A length prefix over the limit closes the connection; others are unaffected.
        await stream.send_all(b"\xff\xff" + b"x" * 100)
        assert await _tcp_read_message(stream) is None
        assert len((await _tcp_ask(other, _raw_query("web.service.mesh"))).rr) == 2


async def test_tcp_connections_are_bounded_and_idle_ones_closed(
    nursery: trio.Nursery, catalog: StaticCatalog
) -> None:
    port = await start(nursery, catalog, tcp_connections_max=2, tcp_idle_timeout_s=0.5)
    async with await _tcp_connect(port) as one, await _tcp_connect(port) as two:
        for stream in (one, two):  # each holds a slot once it has been answered
            assert len((await _tcp_ask(stream, _raw_query("web.service.mesh"))).rr) == 2
        async with await _tcp_connect(port) as refused:
            assert await _tcp_read_message(refused) is None  # closed at once
        # A client that promises 60,000 bytes and stalls is cut at the idle timeout.
        await one.send_all(b"\xea\x60" + b"x" * 10)
        assert await _tcp_read_message(one) is None
        assert await _tcp_read_message(two) is None  # silent: closed too
    async with await _tcp_connect(port) as fresh:
        assert len((await _tcp_ask(fresh, _raw_query("web.service.mesh"))).rr) == 2


async def test_a_taken_port_is_a_one_line_bind_error(catalog: StaticCatalog) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        config = DnsConfig(port=taken.getsockname()[1])
        with pytest.raises(DnsBindError, match=r"^cannot listen for DNS on UDP 127\.0\.0\.1:\d+: "):
            await serve_dns(catalog, config)
