"""The CA across five real agents, three of them signer-eligible, driven by the real CLI.

Leaves are fetched with `meshnode ca leaf --out` and checked by OpenSSL
(`openssl verify -partial_chain -CAfile roots -untrusted chain`). The
agents run with `-ca-reissue-jitter 2s` so that re-issue after a rotation
is observable in seconds instead of the default 30 s window.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from meshnode.testutil import AgentProc, Cluster, wait_for

pytestmark = pytest.mark.slow

JITTER_S = 2.0


def verify(directory: Path, roots: Path | None = None) -> None:
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-partial_chain",
            "-CAfile",
            str(roots or directory / "roots.pem"),
            "-untrusted",
            str(directory / "chain.pem"),
            str(directory / "cert.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def register(agent: AgentProc, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"service": {"name": name, "port": 8080}}))
    agent.cli("services", "register", str(path))


def chains_to(agent: AgentProc, service: str, root: Path, tmp_path: Path) -> bool:
    """Whether the agent's current leaf for `service` verifies against `root` alone."""
    leaf = agent.api(f"/v1/agent/connect/ca/leaf/{service}")
    if leaf is None:
        return False
    blocks = leaf["CertPEM"].split("-----END CERTIFICATE-----")
    pems = [b.strip() + "\n-----END CERTIFICATE-----\n" for b in blocks if b.strip()]
    directory = tmp_path / f"check-{agent.name}-{service}"
    directory.mkdir(exist_ok=True)
    (directory / "cert.pem").write_text(pems[0])
    (directory / "chain.pem").write_text("".join(pems[1:]))
    try:
        verify(directory, root)
    except AssertionError:
        return False
    return True


def visible(agents: list[AgentProc], service: str) -> None:
    """Wait until every agent's catalog has `service` (so signers know its owner)."""
    for a in agents:
        wait_for(lambda a=a: a.api(f"/v1/catalog/service/{service}"), 5.0, f"{service} on {a.name}")  # type: ignore[misc]


def signers(agent: AgentProc) -> list[str]:
    return agent.cli("ca", "signers", check=False).stdout.split()


def test_leaves_signers_failover_ownership_and_rotation(cluster: Cluster, tmp_path: Path) -> None:
    jitter = ["-ca-reissue-jitter", f"{JITTER_S:g}s"]
    # The signer token approves n2 and n3 once n1 has made the CA (docs/ca.md, "Signers").
    signer = ["-signer", "-signer-token", "t-signers"]
    agents = [cluster.agent(i).start(*(signer if i <= 3 else []), *jitter) for i in range(1, 6)]
    for a in agents[1:]:
        a.cli("join", agents[0].gossip)
    wait_for(lambda: all(len(signers(a)) == 3 for a in agents), 20.0, "3 signers everywhere")
    elected = signers(agents[4])
    assert sorted(elected) == ["n1", "n2", "n3"]
    assert all(signers(a) == elected for a in agents)

    # A leaf on every agent for a service registered there, verified by OpenSSL.
    latencies_ms = []
    for i, a in enumerate(agents, start=1):
        register(a, tmp_path, f"svc{i}")
        visible(agents, f"svc{i}")
        start = time.monotonic()
        wait_for(
            lambda a=a, i=i: a.api(f"/v1/agent/connect/ca/leaf/svc{i}") is not None,  # type: ignore[misc]
            10.0,
            f"leaf of svc{i}",
        )
        latencies_ms.append((time.monotonic() - start) * 1000)
        a.cli("ca", "leaf", f"svc{i}", "--out", str(tmp_path / f"svc{i}"))
        verify(tmp_path / f"svc{i}")
        assert (tmp_path / f"svc{i}" / "key.pem").stat().st_mode & 0o777 == 0o600
    shown = ", ".join(f"{ms:.0f}" for ms in latencies_ms)
    print(f"first leaf per agent (key, CSR, RPC, signing): {shown} ms")

    # No leaf for a service registered on another node, with the reason.
    denied = agents[4].cli("ca", "leaf", "svc1", check=False)
    assert denied.returncode == 1
    assert "not registered on this agent" in denied.stderr

    # kill -9 the best signer: leaves keep coming from the next one at once.
    best = next(a for a in agents if a.name == elected[0])
    asker = next(a for a in agents if a.name not in elected)
    register(asker, tmp_path, "late")
    visible(agents, "late")
    best.kill9()
    killed_at = time.monotonic()
    wait_for(
        lambda: asker.api("/v1/agent/connect/ca/leaf/late") is not None, 10.0, "leaf after kill"
    )
    print(f"leaf issued {time.monotonic() - killed_at:.2f} s after kill -9 of {best.name}")
    asker.cli("ca", "leaf", "late", "--out", str(tmp_path / "late"))
    verify(tmp_path / "late")
    alive = [a for a in agents if a is not best]
    wait_for(lambda: best.name not in signers(alive[0]), 20.0, "failed signer out of the set")
    print(f"signer set without {best.name} after {time.monotonic() - killed_at:.1f} s")

    # Rotation from a node that is not eligible (forwarded to a signer).
    n4 = agents[3]
    before = tmp_path / "svc4"
    old_serial = n4.api("/v1/agent/connect/ca/leaf/svc4")["SerialNumber"]
    old_root = n4.api("/v1/agent/connect/ca/roots")["ActiveRootID"]
    out = n4.cli("ca", "rotate")
    assert "Rotated" in out.stdout
    rotated_at = time.monotonic()
    new_root = n4.api("/v1/agent/connect/ca/roots")["ActiveRootID"]
    assert new_root != old_root

    def reissued() -> bool:
        leaf = n4.api("/v1/agent/connect/ca/leaf/svc4")
        return leaf is not None and leaf["SerialNumber"] != old_serial

    took_s = wait_for(reissued, JITTER_S + 8.0, "svc4 re-issued under the new root")
    print(f"old leaf re-issued {took_s:.2f} s after the rotation (jitter window {JITTER_S} s)")
    assert time.monotonic() - rotated_at < JITTER_S + 8.0
    after = tmp_path / "svc4-after"
    n4.cli("ca", "leaf", "svc4", "--out", str(after))
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(n4.cli("ca", "roots", "--pem").stdout)
    assert bundle.read_text().count("BEGIN CERTIFICATE") == 2  # both roots are trusted
    verify(before, bundle)  # issued before the rotation
    verify(after, bundle)  # issued after
    # The new leaf chains to the new root alone; the old one only to the old root.
    new_only = tmp_path / "new-root.pem"
    roots = n4.api("/v1/agent/connect/ca/roots")["Roots"]
    new_only.write_text(next(r["RootCert"] for r in roots if r["ID"] == new_root))
    verify(after, new_only)
    # Every other agent's leaf is re-issued under the new root within the window too.
    for a in alive:
        name = "svc" + a.name[1:]
        wait_for(
            lambda a=a, name=name: chains_to(a, name, new_only, tmp_path),  # type: ignore[misc]
            JITTER_S + 8.0,
            f"{name} on {a.name} under the new root",
        )
