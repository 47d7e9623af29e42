"""With an agent token, reads that reveal a secret need it; public reads stay open.

A real agent process started with `-api-token`, driven by py-consul (as a
Consul user would) and by raw HTTP: the gossip keyring and a leaf's private
key are 403 without the token, and answered with it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest

from meshnode.api import build_router
from meshnode.api.auth import token_guard
from meshnode.api.testing import FakeAgent
from meshnode.http.testing import serve_in_thread
from meshnode.testutil import AgentProc, Cluster, wait_for

TOKEN = "prod-token-4f1c"
_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("secrets")))
    try:
        yield cluster.agent(1).start("-api-token", TOKEN, "-signer")
    finally:
        cluster.stop_all()


def _get(agent: AgentProc, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{agent.http}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _client(agent: AgentProc, token: str | None = None) -> consul.Consul:
    host, port = agent.http.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), token=token)


def test_the_gossip_keyring_needs_the_token(agent: AgentProc) -> None:
    with pytest.raises(consul.ACLPermissionDenied):
        _client(agent).operator.keyring_list()
    with pytest.raises(consul.ACLPermissionDenied):
        _client(agent, token="wrong").operator.keyring_list()
    status, body = _get(agent, "/v1/operator/keyring")
    assert status == 403
    assert agent.cluster.key.encode() not in body
    assert b"holds a secret" in body
    rings = _client(agent, token=TOKEN).operator.keyring_list()
    assert agent.cluster.key in rings[0]["Keys"]


def test_a_leaf_private_key_needs_the_token(agent: AgentProc) -> None:
    _client(agent, token=TOKEN).agent.service.register("web", service_id="web", port=8080)
    for headers in ({}, {"X-Consul-Token": "wrong"}):
        status, body = _get(agent, "/v1/agent/connect/ca/leaf/web", headers)
        assert status == 403, body
        assert b"PRIVATE KEY" not in body
    issued: dict[str, object] = {}

    def leaf_with_token() -> bool:
        status, body = _get(agent, "/v1/agent/connect/ca/leaf/web", {"X-Consul-Token": TOKEN})
        if status == 200:
            issued.update(json.loads(body))
        return status == 200

    wait_for(leaf_with_token, 20.0, "a leaf for web")
    assert "PRIVATE KEY" in str(issued["PrivateKeyPEM"])


def test_public_reads_stay_open_without_the_token(agent: AgentProc) -> None:
    anonymous = _client(agent)
    assert anonymous.agent.self()["Config"]["NodeName"] == "n1"
    anonymous.kv.get("absent")  # 404 -> (index, None), not 403
    for path in ("/v1/connect/ca/roots", "/v1/agent/members", "/v1/catalog/services"):
        assert _get(agent, path)[0] == 200, path


def test_without_a_token_dev_mode_serves_the_keyring_and_a_reload_that_sets_one_closes_it() -> None:
    agent = FakeAgent(name="dev", keys=["a2V5a2V5a2V5a2V5a2V5aw=="])
    current: list[str | None] = [None]
    router = build_router(agent)
    router.add_guard(token_guard(lambda: current[0]))
    with serve_in_thread(router) as port:
        client = consul.Consul(host="127.0.0.1", port=port)
        assert "a2V5a2V5a2V5a2V5a2V5aw==" in client.operator.keyring_list()[0]["Keys"]
        current[0] = TOKEN  # as `meshnode reload` with a new acl.tokens.agent does
        with pytest.raises(consul.ACLPermissionDenied):
            client.operator.keyring_list()


def test_the_cli_lists_keys_only_with_the_token(agent: AgentProc) -> None:
    refused = agent.cli("keyring", "-list", check=False)
    assert refused.returncode == 1
    assert "403" in refused.stderr and "requires a token" in refused.stderr
    assert agent.cluster.key not in refused.stdout + refused.stderr
    listed = agent.cli("keyring", "-list", "-token", TOKEN)
    assert agent.cluster.key in listed.stdout
