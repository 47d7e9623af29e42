"""A sidecar registered at an agent's start has its leaf within seconds (issue 16).

The new agent's service is in its config file: it is registered before the
agent has joined, so the first CSR meets either no CA at all ("the cluster
has no CA yet") or a signer that has not yet seen the registration ("does not
own service"). The leaf manager retries the first leaf every 100 ms doubling
to 1 s and at once when the CA arrives, instead of failing to the caller's
1 s, 2 s, 4 s back-off.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from meshnode.testutil import Cluster, wait_for
from tests.integration.test_proxy_agents import _Echo, app, free_port, round_trip

pytestmark = pytest.mark.slow

# The bound from registration. The agent registers its config services
# just before its HTTP API opens, so the bound is timed from the API answering
# (the process's exec adds the interpreter's start, which is printed too).
_LEAF_BOUND_S = 2.0


def _config(path: Path, definition: dict[str, object]) -> str:
    path.write_text(json.dumps({"services": [definition]}))
    return str(path)


def test_a_service_registered_at_start_has_its_leaf_within_two_seconds(
    cluster: Cluster, tmp_path: Path
) -> None:
    upstream = free_port()
    with app(_Echo) as db_port:
        web = {
            "name": "web",
            "id": "web",
            "port": free_port(),
            "connect": {
                "sidecar_service": {
                    "proxy": {
                        "upstreams": [{"destination_name": "db", "local_bind_port": upstream}]
                    }
                }
            },
        }
        db = {"name": "db", "id": "db", "port": db_port, "connect": {"sidecar_service": {}}}
        first = cluster.agent(1).start(
            "-signer",
            "-signer-token",
            "t-signers",
            "-config-file",
            _config(tmp_path / "web.json", web),
        )
        wait_for(lambda: (first.api("/v1/agent/connect/ca/roots") or {}).get("Roots"), 30.0, "a CA")
        second = cluster.agent(2)
        started = time.monotonic()
        second.start("-config-file", _config(tmp_path / "db.json", db), "-join", first.gossip)
        up_s = time.monotonic() - started
        asked = time.monotonic()
        leaf = second.api("/v1/agent/connect/ca/leaf/db")  # the first call already answers
        leaf_s = time.monotonic() - started
        asked_s = time.monotonic() - asked
        assert leaf is not None and leaf["Service"] == "db"
        wait_for(lambda: round_trip(upstream, timeout_s=1.0) == b"ping", 10.0, "web -> db")
        traffic_s = time.monotonic() - started
        print(
            f"agent up {up_s:.2f} s after start; leaf {leaf_s:.2f} s after start"
            f" ({asked_s:.2f} s asking);"
            f" first round trip {traffic_s:.2f} s after start"
        )
        assert asked_s < _LEAF_BOUND_S
        assert "no leaf for the proxy yet" not in second.log_text()
