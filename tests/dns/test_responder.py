"""The sans-IO answer logic: query bytes in, response bytes out, decoded by dnslib."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dnslib
import pytest

from meshnode.dns import (
    DnsConfig,
    DnsConfigError,
    DnsInstance,
    DnsNode,
    Forward,
    Responder,
    StaticCatalog,
)
from tests.dns.conftest import instance

QTYPE = dnslib.QTYPE


def query(
    name: str,
    qtype: str = "A",
    *,
    edns_bytes: int | None = None,
    edns_version: int = 0,
    qid: int = 4242,
    qclass: str = "IN",
) -> bytes:
    record = dnslib.DNSRecord(
        dnslib.DNSHeader(id=qid, rd=1),
        q=dnslib.DNSQuestion(name, getattr(QTYPE, qtype), getattr(dnslib.CLASS, qclass)),
    )
    if edns_bytes is not None:
        record.add_ar(dnslib.EDNS0(udp_len=edns_bytes, version=edns_version))
    return bytes(record.pack())


def ask(responder: Responder, data: bytes, *, tcp: bool = False) -> dnslib.DNSRecord:
    reply = responder.respond(data, tcp)
    assert isinstance(reply, bytes), reply
    return dnslib.DNSRecord.parse(reply)


def rdatas(record: dnslib.DNSRecord, section: str = "rr") -> list[str]:
    return [str(rr.rdata) for rr in getattr(record, section)]


def make(catalog: StaticCatalog, seed: int = 0, **config: Any) -> Responder:
    return Responder(catalog, DnsConfig(**config), random.Random(seed))


def test_a_answers_healthy_instances_only(catalog: StaticCatalog) -> None:
    answer = ask(make(catalog), query("web.service.mesh"))
    assert answer.header.rcode == dnslib.RCODE.NOERROR
    assert answer.header.aa == 1 and answer.header.id == 4242 and answer.header.rd == 1
    assert sorted(rdatas(answer)) == ["10.0.0.1", "10.0.0.2"]  # warning in, critical out
    assert all(rr.ttl == 0 for rr in answer.rr)


def test_only_passing_drops_warning_instances(catalog: StaticCatalog) -> None:
    answer = ask(make(catalog, only_passing=True), query("web.service.mesh"))
    assert rdatas(answer) == ["10.0.0.1"]


def test_names_are_case_insensitive_and_the_question_is_echoed(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    for _ in range(2):  # the first fills the cache, the second is a hit
        answer = ask(responder, query("WeB.SERVICE.Mesh"))
        assert sorted(rdatas(answer)) == ["10.0.0.1", "10.0.0.2"]
        assert str(answer.q.qname) == "WeB.SERVICE.Mesh."


def test_srv_has_weight_port_node_target_and_additional_address(catalog: StaticCatalog) -> None:
    answer = ask(make(catalog), query("web.service.mesh", "SRV"))
    records = sorted((rr.rdata.port, rr.rdata.weight, str(rr.rdata.target)) for rr in answer.rr)
    assert records == [(80, 5, "n1.node.dc1.mesh."), (8080, 2, "n2.node.dc1.mesh.")]
    assert all(rr.rdata.priority == 1 for rr in answer.rr)
    additional = sorted((str(rr.rname), str(rr.rdata)) for rr in answer.ar)
    assert additional == [("n1.node.dc1.mesh.", "10.0.0.1"), ("n2.node.dc1.mesh.", "10.0.0.2")]


def test_srv_target_is_an_addr_name_when_the_service_has_its_own_address() -> None:
    catalog = StaticCatalog()
    catalog.add_node(DnsNode("n1", "10.0.0.1", "dc1"))
    catalog.set_service("api", [instance("n1", "10.9.0.7", 9000)])
    responder = make(catalog)
    answer = ask(responder, query("api.service.mesh", "SRV"))
    assert str(answer.rr[0].rdata.target) == "0a090007.addr.dc1.mesh."
    assert [(str(rr.rname), str(rr.rdata)) for rr in answer.ar] == [
        ("0a090007.addr.dc1.mesh.", "10.9.0.7")
    ]
    assert rdatas(ask(responder, query("0a090007.addr.mesh"))) == ["10.9.0.7"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("primary.web.service.mesh", ["10.0.0.1"]),
        ("V2.web.service.mesh", ["10.0.0.2"]),
        ("_web._tcp.service.mesh", ["10.0.0.1", "10.0.0.2"]),
        ("_web._primary.service.mesh", ["10.0.0.1"]),
    ],
)
def test_tags_and_rfc_2782(catalog: StaticCatalog, name: str, expected: list[str]) -> None:
    assert sorted(rdatas(ask(make(catalog), query(name)))) == expected


def test_unknown_names_get_nxdomain_with_soa(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    for name in ("nope.service.mesh", "nope.web.service.mesh", "x.y.z.mesh", "n9.node.mesh"):
        answer = ask(responder, query(name))
        assert answer.header.rcode == dnslib.RCODE.NXDOMAIN, name
        assert [rr.rtype for rr in answer.auth] == [QTYPE.SOA]
        soa = answer.auth[0]
        assert str(soa.rname) == "mesh." and str(soa.rdata.mname) == "ns.mesh."
        assert soa.rdata.times[0] == catalog.index()  # the serial follows the catalog


def test_nodata_for_a_type_the_name_does_not_have(catalog: StaticCatalog) -> None:
    answer = ask(make(catalog), query("web.service.mesh", "AAAA"))
    assert answer.header.rcode == dnslib.RCODE.NOERROR
    assert answer.rr == [] and [rr.rtype for rr in answer.auth] == [QTYPE.SOA]


def test_aaaa_by_address_family(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    assert rdatas(ask(responder, query("db.service.mesh", "AAAA"))) == ["fd00::6"]
    assert ask(responder, query("db.service.mesh", "A")).rr == []
    assert rdatas(ask(responder, query("v6.node.mesh", "AAAA"))) == ["fd00::6"]


def test_node_lookup_a_and_txt_metadata(catalog: StaticCatalog) -> None:
    responder = make(catalog, node_ttl_s=30)
    answer = ask(responder, query("n1.node.mesh"))
    assert rdatas(answer) == ["10.0.0.1"] and answer.rr[0].ttl == 30
    txt = ask(responder, query("n1.node.mesh", "TXT"))
    assert sorted(rdatas(txt)) == ['"rack=a"', '"role=web"']
    any_answer = ask(responder, query("n1.node.mesh", "ANY"))
    assert sorted(rr.rtype for rr in any_answer.rr) == [QTYPE.A, QTYPE.TXT, QTYPE.TXT]


def test_any_on_a_service_is_addresses_and_srv(catalog: StaticCatalog) -> None:
    answer = ask(make(catalog), query("web.service.mesh", "ANY"))
    assert Counter(rr.rtype for rr in answer.rr) == {QTYPE.A: 2, QTYPE.SRV: 2}


def test_ttls_per_service_and_default(catalog: StaticCatalog) -> None:
    catalog.set_service("slow", [instance("n1", "10.0.0.1", ttl_s=60)])
    responder = make(catalog, service_ttl_s=5)
    assert {rr.ttl for rr in ask(responder, query("web.service.mesh")).rr} == {5}
    assert {rr.ttl for rr in ask(responder, query("slow.service.mesh")).rr} == {60}


def test_connect_names_the_proxies_or_nxdomain(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    none_yet = ask(responder, query("web.connect.mesh", "SRV"))
    assert none_yet.header.rcode == dnslib.RCODE.NXDOMAIN and none_yet.auth
    catalog.set_connect("web", [instance("n1", "10.0.0.1", 21000)])
    answer = ask(responder, query("web.connect.mesh", "SRV"))
    assert [rr.rdata.port for rr in answer.rr] == [21000]


def test_ptr_for_node_and_service_addresses(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    answer = ask(responder, query("1.0.0.10.in-addr.arpa", "PTR"))
    assert sorted(rdatas(answer)) == ["n1.node.dc1.mesh.", "web.service.dc1.mesh."]
    v6 = ".".join(reversed("fd000000000000000000000000000006")) + ".ip6.arpa"
    assert sorted(rdatas(ask(responder, query(v6, "PTR")))) == [
        "db.service.dc1.mesh.",
        "v6.node.dc1.mesh.",
    ]
    # The critical instance's address names its node only.
    assert rdatas(ask(responder, query("3.0.0.10.in-addr.arpa", "PTR"))) == ["n3.node.dc1.mesh."]
    unknown = ask(responder, query("9.9.9.10.in-addr.arpa", "PTR"))
    assert unknown.header.rcode == dnslib.RCODE.REFUSED


def test_outside_the_domain_refused_or_forwarded(catalog: StaticCatalog) -> None:
    refused = ask(make(catalog), query("example.org"))
    assert refused.header.rcode == dnslib.RCODE.REFUSED and refused.header.ra == 0
    forwarding = make(catalog, recursors=("192.0.2.53",))
    data = query("example.org")
    decision = forwarding.respond(data, False)
    assert isinstance(decision, Forward) and decision.query == data
    servfail = dnslib.DNSRecord.parse(decision.servfail)
    assert servfail.header.rcode == dnslib.RCODE.SERVFAIL and servfail.header.id == 4242
    assert ask(forwarding, query("web.service.mesh")).header.ra == 1


def test_alt_domain_and_apex_soa(catalog: StaticCatalog) -> None:
    responder = make(catalog, domain="Mesh", alt_domain="consul.")
    assert sorted(rdatas(ask(responder, query("web.service.consul")))) == ["10.0.0.1", "10.0.0.2"]
    soa = ask(responder, query("consul", "SOA"))
    assert str(soa.rr[0].rdata.mname) == "ns.consul."


def test_udp_truncation_sets_tc_and_tcp_gets_everything(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    plain = responder.respond(query("big.service.mesh"), False)
    assert isinstance(plain, bytes) and len(plain) <= 512
    truncated = dnslib.DNSRecord.parse(plain)
    assert truncated.header.tc == 1 and 0 < len(truncated.rr) < 100
    edns = responder.respond(query("big.service.mesh", "SRV", edns_bytes=1232), False)
    assert isinstance(edns, bytes) and len(edns) <= 1232
    assert dnslib.DNSRecord.parse(edns).header.tc == 1
    full = ask(responder, query("big.service.mesh", "SRV"), tcp=True)
    assert full.header.tc == 0 and len(full.rr) == 100 and len(full.ar) == 100
    roomy = ask(responder, query("big.service.mesh", edns_bytes=4096))
    assert roomy.header.tc == 0 and len(roomy.rr) == 100


def test_truncation_disabled_trims_silently(catalog: StaticCatalog) -> None:
    answer = ask(make(catalog, enable_truncate=False), query("big.service.mesh"))
    assert answer.header.tc == 0 and 0 < len(answer.rr) < 100


def test_edns_is_answered_with_opt_and_bad_versions_get_badvers(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    answer = ask(responder, query("web.service.mesh", edns_bytes=1232))
    opts = [rr for rr in answer.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) == 1 and opts[0].rclass == 4096
    badvers = ask(responder, query("web.service.mesh", edns_bytes=1232, edns_version=1))
    assert badvers.header.rcode == 0 and badvers.ar[0].ttl >> 24 == 1  # BADVERS = 16
    assert ask(responder, query("web.service.mesh")).ar == []  # no OPT unless asked


def test_answers_are_shuffled_per_query(catalog: StaticCatalog) -> None:
    responder = make(catalog, seed=7)
    firsts = Counter(rdatas(ask(responder, query("web.service.mesh")))[0] for _ in range(200))
    assert set(firsts) == {"10.0.0.1", "10.0.0.2"} and min(firsts.values()) > 60
    orders = {
        tuple(rdatas(ask(responder, query("big.service.mesh", edns_bytes=4096)))) for _ in range(20)
    }
    assert len(orders) == 20  # 100! orders: a repeat means no shuffle


def test_cache_follows_the_catalog_index(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    data = query("web.service.mesh")
    assert len(ask(responder, data).rr) == 2
    catalog.set_service("web", [instance("n3", "10.0.0.3")])
    assert rdatas(ask(responder, data)) == ["10.0.0.3"]
    catalog.remove_service("web")
    assert ask(responder, data).header.rcode == dnslib.RCODE.NXDOMAIN
    assert responder.stats.cache_misses == 3


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        (b"\x00\x07\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", dnslib.RCODE.FORMERR),  # no question
        (query("a.mesh")[:4] + b"\x00\x02" + query("a.mesh")[6:], dnslib.RCODE.FORMERR),
        (query("a.mesh")[:2] + b"\x28\x00" + query("a.mesh")[4:], dnslib.RCODE.NOTIMP),  # UPDATE
        (query("a.mesh")[:-4], dnslib.RCODE.FORMERR),  # type and class cut off
        # A question compressed to point at itself.
        (b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", 1),
    ],
)
def test_malformed_queries_get_formerr_or_notimp(
    catalog: StaticCatalog, data: bytes, rcode: int
) -> None:
    answer = ask(make(catalog), data)
    assert answer.header.rcode == rcode and answer.header.qr == 1


def test_responses_short_packets_are_dropped(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    as_response = bytearray(query("web.service.mesh"))
    as_response[2] |= 0x80
    for data in (b"", b"\x00", b"\x00" * 11, bytes(as_response)):
        assert responder.respond(data, False) is None
    assert responder.stats.dropped == 4


def test_other_classes_and_zone_transfers_are_refused(catalog: StaticCatalog) -> None:
    responder = make(catalog)
    chaos = ask(responder, query("version.bind", "TXT", qclass="CH"))
    assert chaos.header.rcode == dnslib.RCODE.REFUSED
    axfr = ask(responder, query("mesh", "AXFR"))
    assert axfr.header.rcode == dnslib.RCODE.REFUSED


def test_a_catalog_failure_is_servfail_not_a_crash(catalog: StaticCatalog) -> None:
    class Broken(StaticCatalog):
        def service_instances(self, name: str) -> list[DnsInstance]:
            raise RuntimeError("adapter bug")

    answer = ask(make(Broken()), query("web.service.mesh"))
    assert answer.header.rcode == dnslib.RCODE.SERVFAIL


@pytest.mark.parametrize(
    "name",
    [
        "web.service.dc1.mesh",
        "web.service.dc1.dc.mesh",
        "WEB.Service.DC1.Dc.mesh",
        "primary.web.service.dc1.mesh",
        "_web._primary.service.dc1.dc.mesh",
    ],
)
def test_service_names_with_the_local_datacenter(catalog: StaticCatalog, name: str) -> None:
    expected = ["10.0.0.1"] if "primary" in name else ["10.0.0.1", "10.0.0.2"]
    assert sorted(rdatas(ask(make(catalog), query(name)))) == expected


def test_node_addr_and_connect_names_with_the_local_datacenter(catalog: StaticCatalog) -> None:
    catalog.set_connect("web", [instance("n1", "10.0.0.1", 21000)])
    responder = make(catalog, datacenter="east")
    for name in ("n1.node.east.mesh", "n1.node.east.dc.mesh", "0a000001.addr.east.dc.mesh"):
        assert rdatas(ask(responder, query(name))) == ["10.0.0.1"], name
    txt = ask(responder, query("n1.node.east.dc.mesh", "TXT"))
    assert sorted(rdatas(txt)) == ['"rack=a"', '"role=web"']
    assert rdatas(ask(responder, query("web.connect.east.mesh"))) == ["10.0.0.1"]


@pytest.mark.parametrize(
    "name",
    [
        "web.service.dc2.mesh",
        "web.service.dc2.dc.mesh",
        "n1.node.dc2.mesh",
        "0a000001.addr.dc2.dc.mesh",
        "web.service.dc1.ns.mesh",  # a pair other than `<dc>.dc`
        "web.service.a.b.dc.mesh",  # too many labels after the kind
    ],
)
def test_another_datacenter_is_nxdomain_with_soa(catalog: StaticCatalog, name: str) -> None:
    answer = ask(make(catalog), query(name))
    assert answer.header.rcode == dnslib.RCODE.NXDOMAIN and answer.rr == []
    assert [rr.rtype for rr in answer.auth] == [QTYPE.SOA]


def test_the_kind_label_nearest_the_zone_wins() -> None:
    """As in Consul: `service.node.mesh` is a node named `service`, and a
    datacenter may be called `dc` (`x.service.dc.mesh`)."""
    catalog = StaticCatalog()
    catalog.add_node(DnsNode("service", "10.0.0.9", "dc"))
    catalog.set_service("node", [instance("service", "10.0.0.9")])
    responder = make(catalog, datacenter="dc")
    assert rdatas(ask(responder, query("service.node.mesh"))) == ["10.0.0.9"]
    assert rdatas(ask(responder, query("node.service.dc.mesh"))) == ["10.0.0.9"]
    assert rdatas(ask(responder, query("service.node.dc.dc.mesh"))) == ["10.0.0.9"]


def test_srv_and_ptr_targets_name_the_configured_datacenter(catalog: StaticCatalog) -> None:
    responder = make(catalog, datacenter="East")  # stored lowercased, as the agent's is
    srv = ask(responder, query("web.service.mesh", "SRV"))
    assert sorted(str(rr.rdata.target) for rr in srv.rr) == [
        "n1.node.east.mesh.",
        "n2.node.east.mesh.",
    ]
    ptr = ask(responder, query("1.0.0.10.in-addr.arpa", "PTR"))
    assert sorted(rdatas(ptr)) == ["n1.node.east.mesh.", "web.service.east.mesh."]


def test_ns_names_this_agent_with_glue(catalog: StaticCatalog) -> None:
    responder = make(catalog, node_name="N1", node_ttl_s=7)
    ns = ask(responder, query("mesh", "NS"))
    assert ns.header.rcode == dnslib.RCODE.NOERROR and ns.header.aa == 1
    assert [(str(rr.rname), rr.rtype, str(rr.rdata), rr.ttl) for rr in ns.rr] == [
        ("mesh.", QTYPE.NS, "n1.node.dc1.mesh.", 7)
    ]
    assert [(str(rr.rname), str(rr.rdata)) for rr in ns.ar] == [("n1.node.dc1.mesh.", "10.0.0.1")]
    # The NS target resolves, in the zone, to the glue address.
    assert rdatas(ask(responder, query("n1.node.dc1.mesh"))) == ["10.0.0.1"]
    soa = ask(responder, query("mesh", "SOA"))
    assert [rr.rtype for rr in soa.rr] == [QTYPE.SOA]
    assert [str(rr.rdata) for rr in soa.auth] == ["n1.node.dc1.mesh."]
    assert [str(rr.rdata) for rr in soa.ar] == ["10.0.0.1"]
    assert sorted(rr.rtype for rr in ask(responder, query("mesh", "ANY")).rr) == [
        QTYPE.NS,
        QTYPE.SOA,
    ]


def test_ns_on_the_alt_domain_and_for_an_ipv6_agent(catalog: StaticCatalog) -> None:
    responder = make(catalog, node_name="v6", alt_domain="corp.example")
    ns = ask(responder, query("corp.example", "NS"))
    assert rdatas(ns) == ["v6.node.dc1.corp.example."]
    assert [(rr.rtype, str(rr.rdata)) for rr in ns.ar] == [(QTYPE.AAAA, "fd00::6")]


def test_ns_is_nodata_when_the_agent_is_not_in_the_catalog(catalog: StaticCatalog) -> None:
    for node_name in ("", "ghost"):
        answer = ask(make(catalog, node_name=node_name), query("mesh", "NS"))
        assert answer.header.rcode == dnslib.RCODE.NOERROR and answer.rr == []
        assert [rr.rtype for rr in answer.auth] == [QTYPE.SOA]


@pytest.mark.parametrize("datacenter", ["", "dc.1", "d c", "é", "x" * 64])
def test_a_datacenter_that_is_not_one_label_is_refused(datacenter: str) -> None:
    with pytest.raises(DnsConfigError, match="bad datacenter"):
        DnsConfig(datacenter=datacenter)
