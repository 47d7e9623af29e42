"""SPIFFE IDs: the two shapes round-trip, and every other spelling is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.ca import (
    AgentID,
    ServiceID,
    SpiffeError,
    parse_spiffe_id,
    trust_domain_for,
)

segments = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True)
trust_domains = st.from_regex(r"[a-z0-9_-][a-z0-9._-]{0,30}", fullmatch=True)


def test_formats() -> None:
    assert ServiceID("c1.mesh", "dc1", "web").uri == "spiffe://c1.mesh/ns/default/dc/dc1/svc/web"
    assert ServiceID("c1.mesh", "dc1", "web", "prod").uri == (
        "spiffe://c1.mesh/ns/prod/dc/dc1/svc/web"
    )
    assert AgentID("c1.mesh", "dc1", "n1").uri == "spiffe://c1.mesh/agent/client/dc/dc1/id/n1"
    assert trust_domain_for("0b8f2c1e-5d4a-4c1b-9a7e-2f6d8c0b1a3e") == (
        "0b8f2c1e-5d4a-4c1b-9a7e-2f6d8c0b1a3e.mesh"
    )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web", ServiceID("c1.mesh", "dc1", "web")),
        ("spiffe://c1.mesh/ns/x/dc/east-1/svc/db.v2", ServiceID("c1.mesh", "east-1", "db.v2", "x")),
        ("spiffe://c1.mesh/agent/client/dc/dc1/id/node_7", AgentID("c1.mesh", "dc1", "node_7")),
    ],
)
def test_parses(uri: str, expected: ServiceID | AgentID) -> None:
    assert parse_spiffe_id(uri) == expected


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://c1.mesh/ns/default/dc/dc1/svc/web", "not a spiffe:// URI"),
        ("SPIFFE://c1.mesh/ns/default/dc/dc1/svc/web", "not a spiffe:// URI"),
        ("spiffe://C1.mesh/ns/default/dc/dc1/svc/web", "lower-case"),
        ("spiffe://c1.mesh:8443/ns/default/dc/dc1/svc/web", "port"),
        ("spiffe://u@c1.mesh/ns/default/dc/dc1/svc/web", "user info"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web?x=1", "query"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web#f", "fragment"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/w%65b", "percent-encoding"),
        ("spiffe:///ns/default/dc/dc1/svc/web", "trust domain is empty"),
        ("spiffe://c1.mesh", "no path"),
        ("spiffe://c1.mesh/", "no path"),
        ("spiffe://c1.mesh/ns//dc/dc1/svc/web", "is empty"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web/", "is empty"),
        ("spiffe://c1.mesh/ns/./dc/dc1/svc/web", "dot segment"),
        ("spiffe://c1.mesh/ns/default/dc/../svc/web", "dot segment"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web/extra", "neither"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/service/web", "neither"),
        ("spiffe://c1.mesh/agent/server/dc/dc1/id/n1", "neither"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/we b", "may hold only"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/web\n", "may hold only"),
        ("spiffe://" + "a" * 256 + "/ns/default/dc/dc1/svc/web", "over 255"),
        ("spiffe://c1.mesh/ns/default/dc/dc1/svc/" + "w" * 2048, "over 2048"),
    ],
)
def test_refuses(uri: str, reason: str) -> None:
    with pytest.raises(SpiffeError, match=reason) as info:
        parse_spiffe_id(uri)
    assert "\n" not in str(info.value)


def test_constructors_validate() -> None:
    with pytest.raises(SpiffeError, match="service is empty"):
        ServiceID("c1.mesh", "dc1", "")
    with pytest.raises(SpiffeError, match="lower-case"):
        AgentID("C1.mesh", "dc1", "n1")
    with pytest.raises(SpiffeError, match="node 'a/b'"):
        AgentID("c1.mesh", "dc1", "a/b")
    with pytest.raises(SpiffeError):
        trust_domain_for("Cluster")


@given(trust_domains, segments, segments, segments)
def test_service_round_trip(td: str, ns: str, dc: str, svc: str) -> None:
    sid = ServiceID(td, dc, svc, ns)
    assert parse_spiffe_id(sid.uri) == sid


@given(trust_domains, segments, segments)
def test_agent_round_trip(td: str, dc: str, node: str) -> None:
    aid = AgentID(td, dc, node)
    assert parse_spiffe_id(aid.uri) == aid
