"""Security finding 2, with real agents: the gossip key and -signer do not make a signer.

n1 is the cluster's signer, n2 runs `db` behind its managed sidecar, and n3
is a rogue: it holds the gossip key and starts with ``-signer`` but nobody
approved it. This test process also speaks CA RPC as the rogue (with the
gossip key, from n3's address) to ask for what the agent itself would not.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from meshnode.agent.keys import decode_key
from meshnode.ca import (
    BuiltinProvider,
    RootCA,
    ServiceID,
    generate_key,
    key_to_pem,
    make_csr,
    validate_csr,
)
from meshnode.ca.records import (
    CONFIG_KEY,
    KIND,
    CAConfigRecord,
    RootRecord,
    encode_config,
    encode_root,
    root_key,
)
from meshnode.ca.rpc import Refusal, Reply, Request, RootKeyRequest, SignRequest, call
from meshnode.ca.spiffe import trust_domain_for
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.messages import Addr
from meshnode.gossip.store import Entry, Version
from meshnode.gossip.wire import Wire
from meshnode.store.persist import DB_FILENAME, Persistence
from meshnode.testutil import AgentProc, Cluster, wait_for
from tests.integration.test_proxy_agents import _Echo, app, register_db

pytestmark = pytest.mark.slow


def signers(agent: AgentProc) -> list[str]:
    return agent.cli("ca", "signers", check=False).stdout.split()


def ask_as_rogue(cluster: Cluster, rogue: AgentProc, target: AgentProc, request: Request) -> Reply:
    """One CA RPC to `target`, sealed with the gossip key, sent from the rogue's address."""
    wire = Wire(Keyring([decode_key(cluster.key)]))
    host, port = target.gossip.split(":")

    async def ask() -> Reply:
        return await call(
            Addr(host, int(port)), request, wire=wire, local_host=rogue.ip, timeout_s=5.0
        )

    return trio.run(ask)


def rogue_certificate(td: str) -> tuple[str, str]:
    """The best the rogue can make: its own root, intermediate and a leaf for web (chain, key)."""
    return rogue_leaf(BuiltinProvider().generate_root(td, now=datetime.now(UTC)), td)


def rogue_leaf(own_root: RootCA, td: str) -> tuple[str, str]:
    """An intermediate and a leaf for web under `own_root` (chain, key)."""
    provider = BuiltinProvider()
    now = datetime.now(UTC)
    key = generate_key()
    inter_pem = provider.sign_intermediate(
        own_root, key.public_key(), signer_node="n3", now=now, ttl_s=86400
    )
    sid = ServiceID(td, "dc1", "web")
    leaf_key = generate_key()
    csr = validate_csr(make_csr(leaf_key, sid.uri), expected=sid)
    leaf_pem = provider.sign_leaf(inter_pem, key_to_pem(key), csr, now=now, ttl_s=3600)
    return leaf_pem + inter_pem + own_root.cert_pem, key_to_pem(leaf_key)


def round_trip_as(
    tmp_path: Path, sidecar: tuple[str, int], bundle: str, chain_pem: str, key_pem: str
) -> bytes:
    """What the sidecar echoes to a TLS client presenting `chain_pem` (b"" when refused)."""
    (tmp_path / "client-cert.pem").write_text(chain_pem)
    (tmp_path / "client-key.pem").write_text(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # peers are SPIFFE URIs, not host names
    context.load_verify_locations(cadata=bundle)
    context.load_cert_chain(tmp_path / "client-cert.pem", tmp_path / "client-key.pem")
    try:
        with (
            socket.create_connection(sidecar, timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"ping")
            return tls.recv(16)
    except (OSError, ssl.SSLError):
        return b""


def test_a_rogue_with_the_gossip_key_and_signer_gets_no_ca_key_and_no_leaf(
    cluster: Cluster, tmp_path: Path
) -> None:
    n1 = cluster.agent(1).start("-signer")
    wait_for(lambda: signers(n1) == ["n1"], 20.0, "n1 bootstraps the CA")
    n2 = cluster.agent(2).start()
    n2.cli("join", n1.gossip)
    rogue = cluster.agent(3).start("-signer")
    rogue.cli("join", n1.gossip)

    def pending() -> bool:
        rows = n1.api("/v1/connect/ca/signers?all") or []
        return any(r["Node"] == "n3" and r["Status"] == "pending" for r in rows)

    wait_for(pending, 15.0, "the rogue's signer request reaches n1")
    listed = n1.cli("ca", "signers", "--all").stdout
    assert "n3" in listed and "pending" in listed

    with app(_Echo) as port:
        register_db(n2, tmp_path, port)
        wait_for(lambda: n2.api("/v1/catalog/service/db-sidecar-proxy"), 15.0, "db sidecar")
        sidecar = n2.api("/v1/catalog/service/db-sidecar-proxy")[0]
        wait_for(lambda: n2.api("/v1/agent/connect/ca/leaf/db") is not None, 15.0, "db's leaf")
        roots = n1.api("/v1/agent/connect/ca/roots")
        active = roots["ActiveRootID"]
        bundle = "".join(r["RootCert"] for r in roots["Roots"])

        # The rogue asks for the root key and for db's leaf: refused, and logged.
        reply = ask_as_rogue(cluster, rogue, n1, RootKeyRequest("n3", active))
        assert isinstance(reply, Refusal) and reply.code == "forbidden", reply
        td = roots["TrustDomain"]
        csr = make_csr(generate_key(), ServiceID(td, "dc1", "db").uri)
        reply = ask_as_rogue(cluster, rogue, n1, SignRequest("n3", "db", csr))
        assert isinstance(reply, Refusal) and reply.code == "not_owner", reply
        reply = ask_as_rogue(cluster, rogue, n1, SignRequest("n2", "db", csr))
        assert isinstance(reply, Refusal) and reply.code == "forbidden", reply
        log = n1.log_text()
        assert "refused a CA request" in log and "node=n3" in log
        denied = rogue.cli("ca", "leaf", "db", check=False)
        assert denied.returncode == 1 and "not registered on this agent" in denied.stderr

        # Nothing it can make gets through db's sidecar; a leaf of this CA does.
        public = (sidecar["ServiceAddress"] or n2.ip, sidecar["ServicePort"])
        assert round_trip_as(tmp_path, public, bundle, *rogue_certificate(td)) == b""
        leaf = n2.api("/v1/agent/connect/ca/leaf/db")
        assert round_trip_as(tmp_path, public, bundle, leaf["CertPEM"], leaf["PrivateKeyPEM"]) == (
            b"ping"
        )

    # It never became a signer: no key, no intermediate, not elected anywhere.
    assert all(signers(a) == ["n1"] for a in (n1, n2, rogue))
    assert not list((rogue.data_dir / "ca").glob("root-*.key"))
    assert "root key fetched" not in rogue.log_text()
    assert "intermediate issued" not in rogue.log_text()
    assert len(roots["Roots"][0]["IntermediateCerts"]) == 1  # n1's alone

    # The documented way in: an operator approves it on a signer, checking its key.
    rows = {r["Node"]: r for r in n1.api("/v1/connect/ca/signers?all")}
    out = n1.cli("ca", "signers", "approve", "n3", "--fingerprint", rows["n3"]["Fingerprint"])
    assert f"Approved n3 (key {rows['n3']['Fingerprint']})" in out.stdout
    wait_for(lambda: "root key fetched" in rogue.log_text(), 15.0, "n3 fetches the root key")
    wait_for(lambda: sorted(signers(n2)) == ["n1", "n3"], 15.0, "n3 elected")
    assert f"fingerprint={rows['n3']['Fingerprint']}" in rogue.log_text()  # what it logged


def plant_rogue_ca(data_dir: Path) -> tuple[RootCA, str]:
    """A data dir whose store holds the rogue's own root and config, newer than any write.

    What a holder of the gossip key can run: an agent whose store was
    written by hand. Its root, trust domain; the records spread on join.
    """
    cluster_id = str(uuid.uuid4())
    td = trust_domain_for(cluster_id)
    root = BuiltinProvider().generate_root(td, now=datetime.now(UTC))
    config = CAConfigRecord(cluster_id, td, ca_signers=64, updated_by="n3")
    record = RootRecord(root.id, cluster_id, root.cert_pem, 99, time.time(), "n3")
    lamport = 10**9  # newer than anything the cluster wrote: it wins every merge
    entries = [
        Entry(KIND, CONFIG_KEY, encode_config(config), Version(lamport, "n3")),
        Entry(KIND, root_key(root.id), encode_root(record), Version(lamport + 1, "n3")),
    ]
    data_dir.mkdir(mode=0o700, parents=True)
    with Persistence.open(data_dir / DB_FILENAME) as db:
        db.save_store(entries, [], lamport + 2)
    return root, td


def test_a_rogue_that_writes_its_own_root_and_config_changes_no_trust_bundle(
    cluster: Cluster, tmp_path: Path
) -> None:
    n1 = cluster.agent(1).start("-signer")
    wait_for(lambda: signers(n1) == ["n1"], 20.0, "n1 bootstraps the CA")
    real = n1.api("/v1/agent/connect/ca/roots")
    # n2 is given the root's fingerprint: pinned at once, no first-use window.
    n2 = cluster.agent(2).start("-ca-root-fingerprint", real["ActiveRootID"].upper())
    n2.cli("join", n1.gossip)
    wait_for(lambda: "pinned the CA root" in n2.log_text(), 15.0, "n2 pins the root")
    # n1 trusted its own root on first use; it pins it once the window is over.
    wait_for(lambda: "pinned the CA root" in n1.log_text(), 45.0, "n1 pins the root")
    pin = (n2.data_dir / "ca" / "anchor.pin").read_text()
    assert (
        real["ActiveRootID"] in pin
        and (n2.data_dir / "ca" / "anchor.pin").stat().st_mode & (0o777) == 0o600
    )

    rogue_root, rogue_td = plant_rogue_ca(cluster.agent(3).data_dir)
    with app(_Echo) as port:
        register_db(n2, tmp_path, port)
        wait_for(lambda: n2.api("/v1/agent/connect/ca/leaf/db") is not None, 15.0, "db's leaf")
        sidecar = n2.api("/v1/catalog/service/db-sidecar-proxy")[0]
        public = (sidecar["ServiceAddress"] or n2.ip, sidecar["ServicePort"])

        rogue = cluster.agents[2].start("-join", n1.gossip)
        # Its config reaches both (skipped there), and n1 writes the real one back.
        for agent in (n1, n2):
            wait_for(
                lambda a=agent: (
                    "skipped a replicated CA record" in a.log_text()  # type: ignore[misc]
                    and "key=config" in a.log_text()
                ),
                20.0,
                f"the rogue's config reaches {agent.name}",
            )
        wait_for(lambda: "config re-signed" in n1.log_text(), 15.0, "n1 writes the config back")
        assert rogue.api("/v1/agent/connect/ca/roots") is not None

        for agent in (n1, n2):
            roots = agent.api("/v1/agent/connect/ca/roots")
            assert roots["ActiveRootID"] == real["ActiveRootID"], agent.name
            assert roots["TrustDomain"] == real["TrustDomain"] != rogue_td
            assert [r["ID"] for r in roots["Roots"]] == [real["ActiveRootID"]]
            assert rogue_root.id not in json.dumps(roots)
        config = n2.api("/v1/connect/ca/configuration")
        assert config["Config"]["CASigners"] == 3  # not the rogue's 64

        # A leaf for db under the rogue's root gets no echo; a leaf of the CA does.
        bundle = "".join(r["RootCert"] for r in real["Roots"])
        assert round_trip_as(tmp_path, public, bundle, *rogue_leaf(rogue_root, rogue_td)) == b""
        leaf = n2.api("/v1/agent/connect/ca/leaf/db")
        assert round_trip_as(tmp_path, public, bundle, leaf["CertPEM"], leaf["PrivateKeyPEM"]) == (
            b"ping"
        )
