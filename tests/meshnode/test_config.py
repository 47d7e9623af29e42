"""load_config: files, flags, --dev, and one-line errors that name the problem."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from meshnode.agent.keys import generate_key
from meshnode.config import AgentConfig, ConfigError, load_config
from meshnode.store.persist import Persistence

KEY = generate_key()


def no_keyring(path: Path) -> bool:
    return False


def load(flags: dict[str, Any], files: list[Path] | None = None) -> AgentConfig:
    return load_config(flags, files or [], has_stored_keyring=no_keyring)


def write(tmp_path: Path, data: Any, name: str = "agent.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_dev_defaults() -> None:
    config = load({"dev": True})
    assert config.dev
    assert config.bind == ("127.0.0.1", 7946)
    assert config.http == ("127.0.0.1", 8500)
    assert config.data_dir is None
    assert config.encrypt_key is None
    assert config.node_name  # the host name
    assert config.datacenter == "dc1"


def test_full_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "node_name": "web-1",
            "bind_addr": "10.0.0.5",
            "advertise_addr": "192.0.2.5",
            "addresses": {"http": "0.0.0.0"},
            "ports": {"serf_lan": 8301, "http": 8600},
            "data_dir": str(tmp_path / "data"),
            "start_join": ["10.0.0.1", "[fd00::1]:8301", "node2.example.com"],
            "retry_join": ["10.0.0.2:7000"],
            "retry_interval": "1m30s",
            "encrypt": KEY,
            "datacenter": "Paris-1",
            "log_level": "WARN",
            "node_meta": {"role": "web"},
        },
    )
    config = load({}, [path])
    assert config == AgentConfig(
        node_name="web-1",
        bind=("10.0.0.5", 8301),
        advertise=("192.0.2.5", 8301),
        http=("0.0.0.0", 8600),
        data_dir=tmp_path / "data",
        join=("10.0.0.1:7946", "[fd00::1]:8301", "node2.example.com:7946"),
        retry_join=("10.0.0.2:7000",),
        retry_join_interval_s=90.0,
        encrypt_key=KEY,
        dev=False,
        log_level="warning",
        tags={"role": "web"},
        datacenter="paris-1",
    )


def test_flags_override_files_and_lists_merge(tmp_path: Path) -> None:
    first = write(tmp_path, {"node_name": "a", "start_join": ["10.0.0.1"]}, "1.json")
    second = write(tmp_path, {"node_name": "b", "node_meta": {"x": "1"}}, "2.json")
    config = load(
        {
            "node": "c",
            "bind": "[::1]:9000",
            "http_addr": "127.0.0.1:9500",
            "join": ["10.0.0.2"],
            "tag": ["y=2", "x=3"],
            "dev": True,
            "log_level": "debug",
            "advertise": "192.0.2.1",
        },
        [first, second],
    )
    assert config.node_name == "c"
    assert config.bind == ("::1", 9000)
    assert config.advertise == ("192.0.2.1", 9000)
    assert config.http == ("127.0.0.1", 9500)
    assert config.join == ("10.0.0.1:7946", "10.0.0.2:7946")
    assert config.tags == {"x": "3", "y": "2"}
    assert config.log_level == "debug"


def test_dev_respects_an_explicit_bind() -> None:
    assert load({"dev": True, "bind": "0.0.0.0:7000"}).bind == ("0.0.0.0", 7000)
    assert load({"dev": True, "bind": "127.0.0.2"}).bind == ("127.0.0.2", 7946)


def test_without_dev_a_data_dir_and_a_key_are_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a data directory is required"):
        load({"encrypt": KEY})
    with pytest.raises(ConfigError, match="an encryption key is required"):
        load({"data_dir": str(tmp_path)})
    config = load({"data_dir": str(tmp_path), "encrypt": KEY})
    assert config.data_dir == tmp_path
    assert config.bind == ("0.0.0.0", 7946)


def test_a_stored_keyring_replaces_the_key_on_restart(tmp_path: Path) -> None:
    with Persistence.open(tmp_path) as store:
        store.save_keyring([b"k" * 32], b"k" * 32)
    config = load_config({"data_dir": str(tmp_path)})
    assert config.encrypt_key is None
    with pytest.raises(ConfigError, match="an encryption key is required"):
        load_config({"data_dir": str(tmp_path / "fresh")})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "must hold a JSON object, not a list"),
        ({"bogus": 1}, "field 'bogus': unknown field"),
        ({"node_name": 5}, "field 'node_name': must be a string, not a int"),
        ({"node_name": "bad name"}, "field 'node_name': 'bad name' is not a valid node name"),
        ({"node_name": "x" * 129}, "is not a valid node name"),
        ({"bind_addr": "10.0.0.300"}, "field 'bind_addr': '10.0.0.300' is not an IP address"),
        ({"ports": {"serf_lan": "7946"}}, "field 'ports.serf_lan': must be an integer port"),
        ({"ports": {"http": 70000}}, "field 'ports.http': port 70000 is out of range"),
        ({"ports": {"grpc": 8502}}, "field 'ports.grpc': unknown field"),
        ({"ports": 5}, "field 'ports': must be an object"),
        ({"addresses": {"http": "localhost"}}, "field 'addresses.http': 'localhost' is not an IP"),
        ({"start_join": "10.0.0.1"}, "field 'start_join': must be a list of strings"),
        ({"retry_join": ["10.0.0.1:x"]}, "field 'retry_join': '10.0.0.1:x': port 'x' is not"),
        ({"retry_interval": "soon"}, "field 'retry_interval': 'soon' is not a duration"),
        ({"encrypt": "abc"}, "field 'encrypt': key is not valid base64"),
        ({"log_level": "loud"}, "field 'log_level': unknown log level 'loud'"),
        ({"node_meta": {"a b": "x"}}, "tag key 'a b' must be"),
        ({"datacenter": "dc 1"}, "field 'datacenter'"),
        ({"datacenter": "d" * 64}, "field 'datacenter': 'ddd"),  # not one DNS label
        ({"data_dir": True}, "field 'data_dir': must be a string, not a boolean"),
    ],
)
def test_bad_config_file_names_file_and_field(tmp_path: Path, content: Any, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load({"dev": True}, [path])
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"config file {path}: ")
    assert message in text


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.json: no such file"):
        load({"dev": True}, [tmp_path / "nope.json"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"bind": "1.2.3.4:99999"}, "--bind: '1.2.3.4:99999': port 99999 is out of range"),
        ({"bind": "example.com:1"}, "--bind: 'example.com:1': 'example.com' is not an IP"),
        ({"bind": "fe80::zz:7946"}, "--bind: 'fe80::zz:7946': put an IPv6 address in brackets"),
        ({"http_addr": "[::1"}, "--http-addr: '[::1': missing ']'"),
        ({"node": "no/slash"}, "--node: 'no/slash' is not a valid node name"),
        ({"encrypt": "c2hvcnQ="}, "--encrypt: key must decode to 32 bytes (AES-256), got 5 bytes"),
        ({"tag": ["novalue"]}, "--tag: 'novalue' is not KEY=VALUE"),
        ({"join": ["host:"]}, "--join: 'host:': port '' is not a number"),
        ({"advertise": "0.0.0.0"}, "advertise address must be a routable IP"),
        ({"retry_interval": "0s"}, "--retry-interval: '0s' must be a positive duration"),
    ],
)
def test_bad_flags_name_the_flag(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"dev": True, **flags})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_services_tokens_handlers_and_config_dir(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, {"service": {"name": "web", "port": 80}}, "10-web.json")
    write(conf, {"services": [{"name": "db"}, {"name": "cache"}]}, "20-db.json")
    write(conf, {"acl": {"tokens": {"agent": "s3cret"}}}, "30-acl.json")
    write(conf, "not json at all", "notes.txt")  # only *.json is read, as Consul
    config = load_config(
        {"dev": True, "event_handler": ["logger hi"]},
        [],
        config_dirs=[conf],
        has_stored_keyring=no_keyring,
    )
    assert [svc["name"] for _, svc in config.services] == ["web", "db", "cache"]
    assert "10-web.json" in config.services[0][0] and "services[1]" in config.services[2][0]
    assert config.api_token == "s3cret"
    assert config.event_handlers == ("logger hi",)
    # The flag wins over the file, and reload reads the directory again.
    assert load_config({"dev": True, "api_token": "t2"}, config_dirs=[conf]).api_token == "t2"
    write(conf, {"service": {"name": "queue"}}, "40-queue.json")
    from meshnode.config import reload_config

    again = reload_config(config)
    assert [svc["name"] for _, svc in again.services] == ["web", "db", "cache", "queue"]
    assert again.event_handlers == ("logger hi",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"services": {"name": "x"}}, "field 'services': must be a list"),
        ({"service": ["x"]}, "field 'service': must be an object"),
        ({"acl": {"tokens": {"agent": ""}}}, "field 'acl': a token must be"),
        ({"acl": {"default_policy": "deny"}}, "field 'acl.default_policy': unknown field"),
        ({"event_handlers": "x"}, "field 'event_handlers': must be a list of strings"),
    ],
)
def test_bad_service_acl_and_handler_fields(tmp_path: Path, content: Any, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load({"dev": True}, [path])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config dir .*: no such directory"):
        load_config({"dev": True}, config_dirs=[tmp_path / "nope"])


def test_dns_settings_from_files_and_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "addresses": {"dns": "127.0.0.9"},
            "ports": {"dns": 8653},
            "domain": "corp",
            "recursors": ["1.1.1.1"],
            "dns_config": {
                "only_passing": True,
                "node_ttl": "30s",
                "service_ttl": {"*": "5s", "Web": "30s"},
                "recursor_timeout": "1s",
            },
        },
    )
    dns = load({"dev": True}, [path]).dns
    assert dns is not None
    assert (dns.host, dns.port, dns.domain, dns.recursors) == (
        "127.0.0.9",
        8653,
        "corp.",
        ("1.1.1.1",),
    )
    assert (dns.only_passing, dns.node_ttl_s, dns.service_ttl_s) == (True, 30, 5)
    assert load({"dev": True}, [path]).dns_service_ttls == {"web": 30}
    flagged = load({"dev": True, "dns_addr": "127.0.0.7:9600", "recursor": ["9.9.9.9"]}, [path])
    assert flagged.dns is not None and (flagged.dns.host, flagged.dns.port) == ("127.0.0.7", 9600)
    assert flagged.dns.recursors == ("1.1.1.1", "9.9.9.9")
    assert load({"dev": True, "dns_port": -1}).dns is None
    assert load({"dev": True}).dns is not None  # on by default, 127.0.0.1:8600


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"domain": "a..b"}, "bad DNS domain"),
        ({"dns_config": {"only_passing": "yes"}}, "'dns_config.only_passing': must be true"),
        ({"dns_config": {"service_ttl": {"web": "soon"}}}, "is not a duration"),
        ({"dns_config": {"bogus": 1}}, "'dns_config.bogus': unknown field"),
        ({"recursors": ["not an ip"]}, "recursor"),
    ],
)
def test_bad_dns_settings(tmp_path: Path, content: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"dev": True}, [write(tmp_path, content)])
    assert message in str(info.value)


async def test_tombstone_ttl_from_a_file_and_a_flag_reaches_the_store(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"tombstone_ttl": "24h"}))
    assert load({"dev": True}, [path]).tombstone_ttl_s == 24 * 3600
    config = load({"dev": True, "tombstone_ttl": "2h", "bind": "127.0.0.1:0"}, [path])
    assert config.tombstone_ttl_s == 2 * 3600
    from meshnode.agent.core import Agent
    from meshnode.agent.inputs import system_clock

    agent = Agent(config, tmp_path / "data", rng=random.Random(0), clock=system_clock())
    try:
        assert agent.replicator.store.limits.tombstone_max_age_s == 2 * 3600
        assert agent.replicator.config.tombstone_gc_interval_s == 600  # min(10 min, TTL / 4)
    finally:
        agent.close()
    assert load({"dev": True}).tombstone_ttl_s == 72 * 3600


@pytest.mark.parametrize("value", ["30s", "20y", "soon"])
def test_a_bad_tombstone_ttl_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"dev": True, "tombstone_ttl": value})
    assert str(caught.value).startswith("--tombstone-ttl: ")
    assert "\n" not in str(caught.value)


def test_cluster_label_from_a_file_and_the_flag(tmp_path: Path) -> None:
    assert load({"dev": True}).cluster_label == ""
    path = write(tmp_path, {"gossip": {"cluster_label": "prod-eu"}})
    assert load({"dev": True}, [path]).cluster_label == "prod-eu"
    assert load({"dev": True, "cluster_label": "staging"}, [path]).cluster_label == "staging"


@pytest.mark.parametrize(
    ("content", "flags", "message"),
    [
        (
            {"gossip": {"cluster_label": "has space"}},
            {},
            "'gossip.cluster_label': 'has space' is not a cluster label",
        ),
        ({"gossip": {"cluster_label": 7}}, {}, "'gossip.cluster_label': must be a string"),
        ({"gossip": {"label": "x"}}, {}, "'gossip.label': unknown field"),
        ({}, {"cluster_label": "x" * 129}, "--cluster-label: 'xxx"),
    ],
)
def test_a_bad_cluster_label_is_a_one_line_error(
    tmp_path: Path, content: Any, flags: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load({"dev": True, **flags}, [write(tmp_path, content)])
    assert "\n" not in str(info.value)
