"""`meshnode ca revoke` across real agents: a live connection is cut on the other agent.

web's sidecar runs on n1, db's on n2. The operator revokes web's leaf on n1
through the CLI; the revocation reaches n2 by gossip and n2's sidecar cuts
the live web -> db connection and refuses the leaf to `openssl s_client`.
n1 owns the leaf, so it replaces it and web reaches db again.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshnode.ca.pem import cert_from_pem, serial_colon_hex
from meshnode.testutil import MESHNODE, AgentProc, Cluster, wait_for
from tests.integration.test_proxy_agents import (
    _Echo,
    app,
    free_port,
    register_db,
    register_web,
    round_trip,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]

_TOKEN = "revoke-test-token"
_CUT_S = 3.0  # a dissemination round is well under a second on loopback


def start_pair(cluster: Cluster) -> tuple[AgentProc, AgentProc]:
    agents = [
        cluster.agent(i).start("-signer", "-api-token", _TOKEN, "-ca-reissue-jitter", "2s")
        for i in (1, 2)
    ]
    agents[1].cli("join", agents[0].gossip)
    wait_for(lambda: all(len(a.statuses()) == 2 for a in agents), 15.0, "2 members everywhere")
    return agents[0], agents[1]


def s_client(address: str, port: int, leaf_dir: Path) -> str:
    """What `openssl s_client` with web's leaf gets back for "ping" (the echo, or nothing)."""
    command = (
        f"(echo ping; sleep 1) | openssl s_client -connect {address}:{port} -tls1_3 -quiet "
        f"-no_ign_eof -CAfile {leaf_dir / 'roots.pem'} -cert {leaf_dir / 'cert.pem'} "
        f"-key {leaf_dir / 'key.pem'} -cert_chain {leaf_dir / 'chain.pem'}"
    )
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=15)
    return out.stdout


def put_without_token(agent: AgentProc, serial: str) -> int:
    request = urllib.request.Request(
        f"http://{agent.http}/v1/connect/ca/revoke",
        data=json.dumps({"SerialNumber": serial}).encode(),
        method="PUT",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_cli_revoke_cuts_a_live_connection_on_the_other_agent(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHNODE_HTTP_TOKEN", _TOKEN)  # for every CLI call (a write)
    web_agent, db_agent = start_pair(cluster)
    upstream = free_port()
    with app(_Echo) as db_port:
        register_db(db_agent, tmp_path, db_port)
        register_web(web_agent, tmp_path, upstream)
        wait_for(lambda: round_trip(upstream) == b"ping", 30.0, "web -> db")
        sidecar = db_agent.api("/v1/catalog/service/db-sidecar-proxy")[0]
        address = sidecar["ServiceAddress"] or sidecar["Address"]
        port = sidecar["ServicePort"]

        leaf_dir = tmp_path / "web-leaf"
        web_agent.cli("ca", "leaf", "web", "--out", str(leaf_dir))
        serial = serial_colon_hex(cert_from_pem((leaf_dir / "cert.pem").read_text()))
        assert "ping" in s_client(address, port, leaf_dir)  # the leaf works before

        assert put_without_token(web_agent, serial) == 403
        with socket.create_connection(("127.0.0.1", upstream), timeout=5) as live:
            live.sendall(b"hello")
            assert live.recv(5) == b"hello"
            revoked = web_agent.cli("ca", "revoke", serial, "--reason", "key leaked")
            revoked_at = time.monotonic()
            assert f"Revoked {serial} (by serial and public key)" in revoked.stdout
            live.settimeout(_CUT_S + 2)
            assert live.recv(100) == b""  # cut by db's sidecar on the other agent
            cut_s = time.monotonic() - revoked_at
        print(f"live connection cut {cut_s:.2f} s after `ca revoke` on the other agent")
        assert cut_s < _CUT_S

        assert "ping" not in s_client(address, port, leaf_dir)  # refused at the handshake
        listed = db_agent.api("/v1/connect/ca/revocations")
        assert [(r["SerialNumber"], r["Reason"], r["RevokedBy"]) for r in listed] == [
            (serial, "key leaked", web_agent.name)
        ]
        assert len(listed[0]["PublicKeySHA256"]) == 64

        # web's agent owns the leaf: it gets a new one (a new key), and web is back.
        back_s = wait_for(lambda: round_trip(upstream) == b"ping", 30.0, "web back on a new leaf")
        print(f"web reached db again {back_s:.2f} s later, on a new leaf")
        assert f"Serial:      {serial}" not in web_agent.cli("ca", "leaf", "web").stdout


def cut_within(live: socket.socket, timeout_s: float) -> bool:
    """Whether `live` reaches EOF (or a reset) within `timeout_s`."""
    live.settimeout(timeout_s)
    try:
        return live.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_revoked_server_leaf_is_cut_by_sidecars_and_standalone_proxies(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked by serial on an agent that does not hold the leaf; both client proxies cut."""
    monkeypatch.setenv("MESHNODE_HTTP_TOKEN", _TOKEN)
    web_agent, db_agent = start_pair(cluster)
    upstream, standalone_port = free_port(), free_port()
    with app(_Echo) as db_port:
        register_db(db_agent, tmp_path, db_port)
        register_web(web_agent, tmp_path, upstream)
        # The CA is up once the sidecars talk; a standalone proxy started before exits.
        wait_for(lambda: round_trip(upstream) == b"ping", 30.0, "sidecar web -> db")
        argv = [MESHNODE, "connect", "proxy", "-service", "web", "-http-addr", web_agent.http]
        argv += ["-upstream", f"db:{standalone_port}"]
        log = (tmp_path / "standalone.log").open("wb")
        standalone = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        try:
            wait_for(lambda: round_trip(standalone_port) == b"ping", 30.0, "standalone -> db")
            shown = db_agent.cli("ca", "leaf", "db").stdout
            serial = next(
                line.split()[1] for line in shown.splitlines() if line.startswith("Serial:")
            )
            with (
                socket.create_connection(("127.0.0.1", upstream), timeout=5) as by_sidecar,
                socket.create_connection(("127.0.0.1", standalone_port), timeout=5) as by_cli,
            ):
                for live in (by_sidecar, by_cli):
                    live.sendall(b"hello")
                    assert live.recv(5) == b"hello"
                out = web_agent.cli("ca", "revoke", serial)
                assert f"Revoked {serial} (by serial)" in out.stdout  # web's agent has no key
                assert cut_within(by_sidecar, _CUT_S)
                assert cut_within(by_cli, _CUT_S)
            # db's agent owns the leaf: it adds the key to the entry and takes a new leaf.
            wait_for(
                lambda: (web_agent.api("/v1/connect/ca/revocations") or [{}])[0].get(
                    "PublicKeySHA256"
                ),
                10.0,
                "the owner's key in the entry",
            )
            wait_for(lambda: round_trip(upstream) == b"ping", 30.0, "sidecar back")
            wait_for(lambda: round_trip(standalone_port) == b"ping", 30.0, "standalone back")
        finally:
            standalone.terminate()
            standalone.wait(10)
