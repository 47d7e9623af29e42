"""Hypothesis drives the parser and the responder with random and mutated packets.

The laws: nothing raises; a packet gets None (dropped), a `Forward`, or bytes
that an independent decoder (dnslib) parses as a response to the same ID;
and for well-formed queries our parser reads what dnslib wrote.
"""

from __future__ import annotations

import contextlib
import random

import dnslib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.dns import DnsConfig, Forward, RemoteQueryError, Responder, StaticCatalog
from meshnode.dns.wire import parse_query
from tests.dns.conftest import instance

_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_NAMES = [
    "web.service.mesh",
    "primary.web.service.mesh",
    "_web._tcp.service.mesh",
    "n1.node.mesh",
    "web.connect.mesh",
    "big.service.mesh",
    "1.0.0.10.in-addr.arpa",
    "example.org",
    "mesh",
]
_TYPES = ["A", "AAAA", "SRV", "TXT", "PTR", "ANY", "SOA", "MX", "AXFR"]


def _catalog() -> StaticCatalog:
    cat = StaticCatalog()
    cat.set_service("web", [instance("n1", "10.0.0.1", tags=("primary",))])
    cat.set_service("big", [instance(f"b{i}", f"10.1.0.{i + 1}") for i in range(60)])
    return cat


_RESPONDERS = {
    "plain": Responder(_catalog(), DnsConfig(), random.Random(0)),
    "recursing": Responder(_catalog(), DnsConfig(recursors=("192.0.2.1",)), random.Random(0)),
}


def _valid(name: str, qtype: str, edns: int | None, qid: int) -> bytes:
    record = dnslib.DNSRecord(
        dnslib.DNSHeader(id=qid), q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype))
    )
    if edns is not None:
        record.add_ar(dnslib.EDNS0(udp_len=edns))
    return bytes(record.pack())


valid_queries = st.builds(
    _valid,
    st.sampled_from(_NAMES),
    st.sampled_from(_TYPES),
    st.none() | st.integers(0, 65535),
    st.integers(0, 65535),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_queries))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "count"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "count" and len(data) >= 12:
            index = draw(st.sampled_from([4, 6, 8, 10]))
            data[index : index + 2] = draw(st.integers(0, 65535)).to_bytes(2, "big")
    return bytes(data)


def _utf8_labels(reply: bytes) -> bool:
    pos = 12
    while pos < len(reply) and reply[pos] and not reply[pos] & 0xC0:
        try:
            reply[pos + 1 : pos + 1 + reply[pos]].decode()
        except UnicodeDecodeError:
            return False
        pos += 1 + reply[pos]
    return True


def _check(data: bytes, tcp: bool) -> None:
    for responder in _RESPONDERS.values():
        reply = responder.respond(data, tcp)
        if reply is None:
            continue
        if isinstance(reply, Forward):
            reply = reply.servfail
        assert reply[:2] == data[:2] and reply[2] & 0x80  # our ID, QR set
        try:
            dnslib.DNSRecord.parse(reply)
        except dnslib.DNSError:
            # dnslib reads labels as UTF-8; DNS allows any bytes, which we echo.
            assert not _utf8_labels(reply)
        if not tcp:
            assert len(reply) <= 4096


@_SETTINGS
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_never_break_the_responder(data: bytes, tcp: bool) -> None:
    _check(data, tcp)


@_SETTINGS
@given(mutated(), st.booleans())
def test_mutated_queries_never_break_the_responder(data: bytes, tcp: bool) -> None:
    _check(data, tcp)


@_SETTINGS
@given(valid_queries)
def test_parser_reads_what_dnslib_wrote(data: bytes) -> None:
    theirs = dnslib.DNSRecord.parse(data)
    ours = parse_query(data)
    assert ours.query_id == theirs.header.id
    assert ours.qtype == theirs.q.qtype
    assert b".".join(ours.labels).decode() == str(theirs.q.qname).rstrip(".").lower()
    assert (ours.edns is not None) == bool(theirs.ar)


@_SETTINGS
@given(mutated())
def test_parser_only_raises_its_own_error(data: bytes) -> None:
    with contextlib.suppress(RemoteQueryError):
        parse_query(data)
