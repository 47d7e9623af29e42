"""Service definitions: Consul's spellings, durations, and every refusal as one line."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.catalog.definitions import (
    CheckDefinition,
    DefinitionError,
    ProxyDefinition,
    SidecarDefinition,
    Upstream,
    parse_config_services,
    parse_file_definitions,
    parse_service,
)

FILE_STYLE = {
    "name": "web",
    "id": "web1",
    "port": 8080,
    "address": "10.0.0.5",
    "tags": ["v1", "primary", "v1"],
    "meta": {"version": "1.2"},
    "weights": {"passing": 10, "warning": 1},
    "enable_tag_override": True,
    "checks": [
        {"http": "http://localhost:8080/health", "interval": "10s", "timeout": "1s"},
        {"ttl": "30s", "name": "heartbeat", "id": "web1-ttl", "status": "passing"},
    ],
    "connect": {
        "sidecar_service": {
            "proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 9191}]}
        }
    },
}

API_STYLE = {
    "Name": "web",
    "ID": "web1",
    "Port": 8080,
    "Address": "10.0.0.5",
    "Tags": ["v1", "primary"],
    "Meta": {"version": "1.2"},
    "Weights": {"Passing": 10, "Warning": 1},
    "EnableTagOverride": True,
    "Checks": [
        {"HTTP": "http://localhost:8080/health", "Interval": "10s", "Timeout": "1s"},
        {"TTL": "30s", "Name": "heartbeat", "CheckID": "web1-ttl", "Status": "passing"},
    ],
    "Connect": {
        "SidecarService": {
            "Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}
        }
    },
}


def test_file_and_api_spellings_mean_the_same() -> None:
    from_file = parse_file_definitions({"service": FILE_STYLE})
    assert from_file == [parse_service(API_STYLE)]
    web = from_file[0]
    assert (web.name, web.service_id, web.port, web.address) == ("web", "web1", 8080, "10.0.0.5")
    assert web.tags == ("v1", "primary")  # duplicates dropped, order kept
    assert (web.weights_passing, web.weights_warning) == (10, 1)
    assert web.checks == (
        CheckDefinition(
            kind="http", http="http://localhost:8080/health", interval_s=10.0, timeout_s=1.0
        ),
        CheckDefinition(
            kind="ttl", check_id="web1-ttl", name="heartbeat", status="passing", ttl_s=30.0
        ),
    )
    assert web.sidecar == SidecarDefinition(upstreams=(Upstream("db", 9191),))


def test_py_consul_lower_case_and_defaults() -> None:
    web = parse_service({"name": "web", "checks": [{"tcp": "localhost:80", "interval": "500ms"}]})
    assert web.service_id == "web"
    assert web.checks[0].interval_s == 1.0  # raised to Consul's 1 s minimum
    assert web.checks[0].timeout_s == 10.0


def test_connect_proxy_kind() -> None:
    proxy = parse_service(
        {
            "Name": "web-proxy",
            "Kind": "connect-proxy",
            "Port": 21000,
            "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080},
        }
    )
    assert proxy.proxy == ProxyDefinition("web", local_service_port=8080)


def test_services_list_and_config_pairs() -> None:
    found = parse_file_definitions({"services": [{"name": "a"}, {"name": "b", "port": 1}]})
    assert [d.name for d in found] == ["a", "b"]
    with pytest.raises(DefinitionError, match=r"^/etc/m/web.json: field 'port' must be in"):
        parse_config_services([("/etc/m/web.json", {"name": "web", "port": 70000})])
    with pytest.raises(DefinitionError, match="'web' is defined twice"):
        parse_config_services([("a.json", {"name": "web"}), ("b.json", {"name": "web"})])


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "missing field 'name'"),
        ({"Name": 3}, "'Name' must be a string, not number"),
        ({"Name": "web_1"}, "is a DNS label"),
        ({"Name": "-web"}, "is a DNS label"),
        ({"Name": "w" * 64}, "1..63 letters"),
        ({"Name": "web", "ID": "a/b"}, "letters, digits or _.:-"),
        ({"Name": "web", "Port": 65536}, "'Port' must be in 0..65535, not 65536"),
        ({"Name": "web", "Port": True}, "'Port' must be an integer, not boolean"),
        ({"Name": "web", "Port": "80"}, "'Port' must be an integer, not string"),
        ({"Name": "web", "Color": "red"}, "unknown field 'Color'"),
        ({"Name": "web", "name": "web"}, "given twice"),
        ({"Name": "web", "Tags": "a,b"}, "'Tags' must be a list"),
        ({"Name": "web", "Tags": ["x"] * 65}, "at most 64"),
        ({"Name": "web", "Tags": [""]}, "item 0"),
        ({"Name": "web", "Meta": {f"k{i}": "v" for i in range(65)}}, "at most 64"),
        ({"Name": "web", "Meta": {"k" * 129: "v"}}, "1..128"),
        ({"Name": "web", "Meta": {"k": "v" * 513}}, "at most 512"),
        ({"Name": "web", "Meta": {"a b": "v"}}, "letters, digits, _ or -"),
        (
            {"Name": "web", "Check": {"Interval": "10s"}},
            "exactly one of tcp, http or ttl, not none",
        ),
        ({"Name": "web", "Check": {"TTL": "1s", "TCP": "h:1"}}, "not Check.TCP and Check.TTL"),
        ({"Name": "web", "Check": {"TCP": "h:1"}}, "needs an interval"),
        ({"Name": "web", "Check": {"TTL": "soon"}}, "invalid duration 'soon'"),
        ({"Name": "web", "Check": {"TTL": "25h"}}, "duration '25h' is more than 86400 s"),
        ({"Name": "web", "Check": {"TTL": 30}}, 'duration string such as "10s"'),
        ({"Name": "web", "Check": {"HTTP": "ftp://x", "Interval": "1s"}}, "http:// or https://"),
        ({"Name": "web", "Check": {"Args": ["true"], "Interval": "1s"}}, "only tcp, http and ttl"),
        (
            {"Name": "web", "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "soon"}},
            "'Check.DeregisterCriticalServiceAfter' is not valid",
        ),
        ({"Name": "web", "Check": {"TTL": "1s", "Status": "ok"}}, "'Check.Status' must be one of"),
        ({"Name": "web", "Checks": [{"TTL": "1s", "ID": "x"}, {"TTL": "2s", "ID": "x"}]}, "differ"),
        ({"Name": "web", "Kind": "mesh-gateway"}, "'Kind' must be"),
        ({"Name": "web", "Kind": "connect-proxy"}, "needs a 'Proxy'"),
        ({"Name": "web", "Proxy": {"DestinationServiceName": "x"}}, "only for a service of kind"),
        (
            {"Name": "web", "Connect": {"Native": True, "SidecarService": {}}},
            "'Connect.Native' cannot be combined with a sidecar_service",
        ),
        (
            {
                "Name": "p",
                "Kind": "connect-proxy",
                "Proxy": {"DestinationServiceName": "web"},
                "Connect": {"Native": True},
            },
            "cannot give a proxy its own sidecar or make it native",
        ),
        ({"Name": "web", "Connect": {"Native": "yes"}}, "'Connect.Native' must be true or false"),
        (
            {"Name": "web", "Connect": {"SidecarService": {"Proxy": {"Upstreams": [{}]}}}},
            "missing field 'Connect.SidecarService.Proxy.Upstreams[0].DestinationName'",
        ),
        ({"Name": "web", "Weights": {"Passing": 0}}, "'Weights.Passing' must be in 1..65535"),
        ({"Name": "web", "Address": "a b"}, "must not contain spaces"),
    ],
)
def test_refusals_are_one_line_naming_the_field(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_service(data)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "expected an object"),
        ({"service": {"name": "a"}, "extra": 1}, "unknown field 'extra'"),
        ({"services": {"name": "a"}}, "must be a list"),
        ({"service": {"port": 1}}, "missing field 'service.name'"),
    ],
)
def test_file_shape_refusals(data: object, fragment: str) -> None:
    with pytest.raises(DefinitionError, match=fragment):
        parse_file_definitions(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "Name",
                "ID",
                "Port",
                "Tags",
                "Meta",
                "Check",
                "Checks",
                "Connect",
                "Kind",
                "Proxy",
                "Weights",
            ]
        ),
        _json,
    )
)
def test_any_json_is_parsed_or_refused_with_definition_error(data: dict[str, Any]) -> None:
    try:
        parse_service(data)
    except DefinitionError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("spelling", [{"connect": {"native": True}}, {"Connect": {"Native": True}}])
def test_native_connect_is_accepted_with_no_sidecar(spelling: dict[str, Any]) -> None:
    found = parse_service({"name": "web", "port": 8443, **spelling})
    assert found.connect_native is True
    assert found.sidecar is None
    assert parse_service({"name": "web"}).connect_native is False
