"""The Prometheus text of /v1/agent/metrics, read back by prometheus-client's parser
(a parser we did not write); promtool reads a live agent's in
tests/integration/test_metrics_prometheus.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meshnode.api.metrics_format import CONSUL_EQUIVALENTS, CONTENT_TYPE, prometheus_text
from meshnode.api.testing import FakeAgent
from meshnode.http.testing import fetch


def _gauge(name: str, value: float) -> dict[str, Any]:
    return {"Name": f"meshnode.gossip.{name}", "Value": value, "Labels": {}}


def _counter(name: str, count: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"Name": f"meshnode.gossip.{name}", "Count": count, "Sum": count, "Labels": labels or {}}


def _json(gauges: list[dict[str, Any]], counters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Timestamp": "x", "Gauges": gauges, "Counters": counters, "Samples": []}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the parser finds: (family name, sorted labels) -> value.

    The parser names a counter family without `_total` (and its samples with
    it, even where the text has none), so families are the stable key."""
    return {
        (family.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if not line.startswith("#")}


def _types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


SAMPLE = _json(
    [
        _gauge("members.alive", 3),
        _gauge("members.suspect", 1),
        _gauge("members.failed", 2),
        _gauge("members.left", 0),
        _gauge("health_score", 2),
    ],
    [
        _counter("udp.sent_bytes", 61234),
        _counter("udp.recv_bytes", 5000),
        _counter("tcp.sent_bytes", 700),
        _counter("udp.rejected.DecodeError", 4),
        _counter("udp.rejected.AuthError", 5),
        _counter("tcp.rejected.AuthError", 6),
        _counter("ca.refused.rate_limited", 7),
        _counter("member.joined", 8),
        _counter("member.failed", 2),
        _counter("member.left", 1),
        _counter("member.flapped", 1),
        _counter("events.delivered", 10),
        _counter("events.filtered_out", 3),
    ],
)


def test_meshnode_names_follow_prometheus_conventions() -> None:
    text = prometheus_text(SAMPLE)
    samples = _samples(text)
    assert samples[("meshnode_gossip_members_alive", ())] == 3
    assert samples[("meshnode_gossip_health_score", ())] == 2
    assert samples[("meshnode_gossip_udp_sent_bytes", ())] == 61234
    assert samples[("meshnode_gossip_member_flapped", ())] == 1
    assert "meshnode_gossip_udp_sent_bytes_total 61234" in _lines(text)
    types = _types(text)
    assert types["meshnode_gossip_members_alive"] == "gauge"
    assert types["meshnode_gossip_udp_sent_bytes"] == "counter"


def test_error_kinds_and_refusal_codes_are_labels_of_one_family() -> None:
    text = prometheus_text(SAMPLE)
    samples = _samples(text)
    rejected = "meshnode_gossip_udp_rejected"
    assert samples[(rejected, (("kind", "DecodeError"),))] == 4
    assert samples[(rejected, (("kind", "AuthError"),))] == 5
    assert samples[("meshnode_gossip_tcp_rejected", (("kind", "AuthError"),))] == 6
    assert samples[("meshnode_gossip_ca_refused", (("code", "rate_limited"),))] == 7
    assert 'meshnode_gossip_udp_rejected_total{kind="DecodeError"} 4' in _lines(text)
    assert text.count("# TYPE meshnode_gossip_udp_rejected_total counter") == 1
    assert "DecodeError_total" not in text


def test_consul_names_where_the_meaning_is_the_same() -> None:
    text = prometheus_text(SAMPLE)
    samples = _samples(text)
    lan = (("network", "lan"),)
    # Spelled as Consul spells them: counters without `_total`.
    assert 'consul_memberlist_udp_sent{network="lan"} 61234' in _lines(text)
    assert 'consul_serf_member_flap{network="lan"} 1' in _lines(text)
    assert _types(text)["consul_serf_member_flap"] == "counter"
    assert samples[("consul_memberlist_udp_sent", lan)] == 61234
    assert samples[("consul_memberlist_udp_received", lan)] == 5000
    assert samples[("consul_memberlist_tcp_sent", lan)] == 700
    assert samples[("consul_memberlist_health_score", lan)] == 2
    instances = "consul_memberlist_node_instances"
    for state, value in (("alive", 3), ("suspect", 1), ("dead", 2), ("left", 0)):
        assert samples[(instances, (("network", "lan"), ("node_state", state)))] == value
    assert samples[("consul_serf_member_join", lan)] == 8
    assert samples[("consul_serf_member_failed", lan)] == 2
    assert samples[("consul_serf_member_left", lan)] == 1
    assert samples[("consul_serf_member_flap", lan)] == 1
    # serf counts every new user event; meshnode's filters come after it.
    assert samples[("consul_serf_events", lan)] == 13


def test_consul_names_are_given_before_their_first_increment() -> None:
    text = prometheus_text(_json([], []))
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {eq.name for eq in CONSUL_EQUIVALENTS} <= names
    assert _samples(text)[("consul_serf_member_flap", (("network", "lan"),))] == 0


def test_every_family_has_help_and_type_once_with_its_samples_together() -> None:
    lines = prometheus_text(SAMPLE).splitlines()
    seen: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in seen, name
            seen.append(name)
            assert lines[i + 1].startswith(f"# TYPE {name} ")
            assert len(line.split(" ", 3)[3]) > 10  # a real help text
        elif not line.startswith("#"):
            assert line.startswith(seen[-1])  # a sample of the family just opened


def test_label_values_and_names_that_could_break_the_text_are_escaped() -> None:
    evil = _json(
        [{"Name": "meshnode.gossip.x-y z", "Value": 1.5, "Labels": {"a b": 'q"\\\n'}}],
        [_counter('ca.refused.a"b\nc', 2)],
    )
    samples = _samples(prometheus_text(evil))
    assert samples[("meshnode_gossip_x_y_z", (("a_b", 'q"\\\n'),))] == 1.5
    assert samples[("meshnode_gossip_ca_refused", (("code", 'a"b\nc'),))] == 2


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.tuples(st.integers(0, 2**53), st.dictionaries(st.text(max_size=8), st.text())),
        max_size=8,
    )
)
def test_any_metric_names_and_labels_parse(metrics: dict[str, tuple[int, dict[str, str]]]) -> None:
    counters = [_counter(name, count, labels) for name, (count, labels) in metrics.items()]
    families = {
        f.name for f in text_string_to_metric_families(prometheus_text(_json([], counters)))
    }
    assert {eq.name for eq in CONSUL_EQUIVALENTS} <= families


@pytest.mark.parametrize(
    ("query", "content_type"),
    [("", "application/json"), ("?format=prometheus", CONTENT_TYPE)],
)
async def test_the_endpoint_answers_json_or_prometheus(
    api_port: int, fake_agent: FakeAgent, query: str, content_type: str
) -> None:
    reply = await fetch(api_port, "GET", f"/v1/agent/metrics{query}")
    assert reply.status == 200
    assert reply.headers["content-type"] == content_type
    if query:
        assert _types(reply.body.decode())  # parses


async def test_an_unknown_format_is_400_with_one_line(api_port: int) -> None:
    reply = await fetch(api_port, "GET", "/v1/agent/metrics?format=openmetrics")
    assert reply.status == 400
    assert reply.json() == {
        "error": "unknown metrics format 'openmetrics': use format=prometheus or leave it out"
    }
