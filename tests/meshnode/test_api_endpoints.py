"""The Consul-shaped endpoints against `FakeAgent`, through a real socket."""

from __future__ import annotations

import pytest

from meshnode.agent.keys import generate_key
from meshnode.api import AgentFacade
from meshnode.api.testing import FakeAgent
from meshnode.http.testing import fetch

OLD_KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="


def test_fake_agent_satisfies_the_facade() -> None:
    agent: AgentFacade = FakeAgent()
    assert agent.node_name == "node1"


async def test_members_in_consul_shape(api_port: int) -> None:
    reply = await fetch(api_port, "GET", "/v1/agent/members")
    assert reply.status == 200
    members = reply.json()
    assert [m["Name"] for m in members] == ["db1", "old1", "web1"]
    db = members[0]
    assert db["Addr"] == "127.0.0.2"
    assert db["Port"] == 7946
    assert db["Tags"] == {"role": "db", "zone": "a"}
    assert db["Status"] == 1
    for field in ("ProtocolMin", "ProtocolMax", "ProtocolCur", "DelegateCur"):
        assert isinstance(db[field], int)
    assert members[1]["Status"] == 4
    assert members[1]["State"] == "failed"


async def test_members_wan_is_empty(api_port: int) -> None:
    assert (await fetch(api_port, "GET", "/v1/agent/members?wan=1")).json() == []


async def test_join_ok_and_failure(api_port: int, fake_agent: FakeAgent) -> None:
    reply = await fetch(api_port, "PUT", "/v1/agent/join/10.0.0.1:7946")
    assert (reply.status, reply.body) == (200, b"")
    assert fake_agent.joined == ["10.0.0.1:7946"]
    fake_agent.unreachable.add("10.0.0.9")
    reply = await fetch(api_port, "PUT", "/v1/agent/join/10.0.0.9")
    assert reply.status == 500
    assert "connection refused" in reply.json()["error"]


@pytest.mark.parametrize("path", ["/v1/agent/join/10.0.0.1:99999", "/v1/agent/join/bad_host!"])
async def test_join_bad_address_is_400(api_port: int, path: str) -> None:
    reply = await fetch(api_port, "PUT", path)
    assert reply.status == 400
    assert reply.json()["error"].startswith("bad join address")


async def test_join_ipv6_and_wan(api_port: int, fake_agent: FakeAgent) -> None:
    assert (await fetch(api_port, "PUT", "/v1/agent/join/[::1]:7946")).status == 200
    assert fake_agent.joined == ["[::1]:7946"]
    assert (await fetch(api_port, "PUT", "/v1/agent/join/10.0.0.1?wan=1")).status == 400


async def test_join_needs_put(api_port: int) -> None:
    assert (await fetch(api_port, "GET", "/v1/agent/join/10.0.0.1")).status == 405


async def test_leave(api_port: int, fake_agent: FakeAgent) -> None:
    reply = await fetch(api_port, "PUT", "/v1/agent/leave")
    assert (reply.status, reply.body) == (200, b"")
    assert fake_agent.left


async def test_force_leave(api_port: int, fake_agent: FakeAgent) -> None:
    assert (await fetch(api_port, "PUT", "/v1/agent/force-leave/old1")).status == 200
    assert next(m for m in fake_agent.member_list if m.name == "old1").status == 3
    reply = await fetch(api_port, "PUT", "/v1/agent/force-leave/ghost")
    assert reply.status == 404
    assert reply.json() == {"error": "no member named 'ghost'"}


async def test_self_and_metrics(api_port: int) -> None:
    info = (await fetch(api_port, "GET", "/v1/agent/self")).json()
    assert info["Config"]["NodeName"] == "web1"
    assert info["Config"]["Datacenter"] == "dc1"
    metrics = (await fetch(api_port, "GET", "/v1/agent/metrics")).json()
    assert {"Timestamp", "Gauges", "Counters", "Samples"} <= set(metrics)


async def test_facade_bug_is_500(api_port: int, fake_agent: FakeAgent) -> None:
    fake_agent.explode = True
    reply = await fetch(api_port, "GET", "/v1/agent/members")
    assert reply.status == 500
    assert reply.json() == {"error": "internal error: RuntimeError: boom"}


async def test_keyring_list_in_consul_shape(api_port: int) -> None:
    reply = await fetch(api_port, "GET", "/v1/operator/keyring")
    assert reply.json() == [
        {
            "WAN": False,
            "Datacenter": "dc1",
            "Segment": "",
            "Keys": {OLD_KEY: 3},
            "PrimaryKeys": {OLD_KEY: 3},
            "NumNodes": 3,
            "Messages": {},
        }
    ]


async def test_keyring_rotation(api_port: int, fake_agent: FakeAgent) -> None:
    new = generate_key()
    assert (await fetch(api_port, "POST", "/v1/operator/keyring", {"Key": new})).status == 200
    assert (await fetch(api_port, "PUT", "/v1/operator/keyring", {"Key": new})).status == 200
    assert fake_agent.primary == new
    reply = await fetch(api_port, "DELETE", "/v1/operator/keyring", {"Key": OLD_KEY})
    assert reply.status == 200
    assert fake_agent.keys == [new]


async def test_keyring_refusals(api_port: int, fake_agent: FakeAgent) -> None:
    reply = await fetch(api_port, "DELETE", "/v1/operator/keyring", {"Key": OLD_KEY})
    assert reply.status == 400
    assert "primary key cannot be removed" in reply.json()["error"]
    fake_agent.keyring_failures = {"db1": "disk full"}
    reply = await fetch(api_port, "POST", "/v1/operator/keyring", {"Key": generate_key()})
    assert reply.status == 500
    assert reply.json()["error"] == "keyring install failed on 1 of 3 nodes: db1: disk full"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request body is empty"),
        (b"[1]", "must be a JSON object"),
        ({"Key": OLD_KEY, "Extra": 1}, "unknown field 'Extra'"),
        ({}, "missing field 'Key'"),
        ({"Key": 5}, "field 'Key' must be a string"),
        ({"Key": "c2hvcnQ="}, "got 5 bytes"),
        ({"Key": "!!!"}, "not valid base64"),
    ],
)
async def test_keyring_bad_bodies_are_400(api_port: int, body: object, message: str) -> None:
    reply = await fetch(api_port, "POST", "/v1/operator/keyring", body)
    assert reply.status == 400
    assert message in reply.json()["error"]
