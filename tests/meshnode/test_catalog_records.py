"""Catalog records: round-trips, and every malformed value from the network refused."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.catalog.definitions import (
    CheckDefinition,
    ProxyDefinition,
    ServiceDefinition,
    Upstream,
)
from meshnode.catalog.records import (
    CheckRecord,
    MalformedRecord,
    ServiceRecord,
    decode_check,
    decode_service,
    encode_check,
    encode_service,
    record_key,
    split_key,
)
from meshnode.gossip.errors import RemoteProtocolError

_text = st.text(max_size=20)
_port = st.integers(min_value=0, max_value=65535)

services = st.builds(
    ServiceRecord,
    node=st.sampled_from(["n1", "node/with/slash", "ü"]),
    definition=st.builds(
        ServiceDefinition,
        name=_text,
        service_id=st.text(alphabet="abc:_-.", min_size=1, max_size=10),
        port=_port,
        address=_text,
        tags=st.lists(_text, max_size=4).map(tuple),
        meta=st.dictionaries(_text, _text, max_size=3),
        kind=st.sampled_from(["", "connect-proxy"]),
        weights_passing=st.integers(1, 100),
        weights_warning=st.integers(0, 100),
        connect_native=st.booleans(),
        proxy=st.none()
        | st.builds(
            ProxyDefinition,
            destination_service_name=_text,
            destination_service_id=_text,
            local_service_address=_text,
            local_service_port=_port,
            upstreams=st.lists(st.builds(Upstream, _text, _port, _text), max_size=3).map(tuple),
        ),
    ),
    source=st.sampled_from(["api", "config"]),
    sidecar_of=_text,
)

_seconds = st.floats(min_value=0, max_value=86400, allow_nan=False)
checks = st.builds(
    CheckRecord,
    node=st.sampled_from(["n1", "n2"]),
    check_id=st.text(alphabet="abc:_-.", min_size=1, max_size=10),
    status=st.sampled_from(["passing", "warning", "critical"]),
    definition=st.builds(
        CheckDefinition,
        kind=st.sampled_from(["tcp", "http", "ttl", "maintenance"]),
        name=_text,
        notes=_text,
        tcp=_text,
        http=_text,
        method=st.sampled_from(["GET", "POST"]),
        header=st.dictionaries(_text, st.lists(_text, max_size=2).map(tuple), max_size=2),
        body=_text,
        tls_skip_verify=st.booleans(),
        interval_s=_seconds,
        timeout_s=_seconds,
        ttl_s=_seconds,
        success_before_passing=st.integers(0, 10),
        failures_before_warning=st.integers(0, 10),
        failures_before_critical=st.integers(0, 10),
        deregister_critical_service_after_s=st.sampled_from([0.0, 60.0, 90.5]),
    ),
    output=_text,
    service_id=_text,
    service_name=_text,
)


@given(services)
def test_service_round_trip(record: ServiceRecord) -> None:
    key = record_key(record.node, record.service_id)
    assert split_key(key) == (record.node, record.service_id)
    assert decode_service(key, encode_service(record)) == record


@given(checks)
def test_check_round_trip(record: CheckRecord) -> None:
    decoded = decode_check(record_key(record.node, record.check_id), encode_check(record))
    assert decoded.definition == replace(record.definition, check_id=record.check_id)
    assert (decoded.status, decoded.output, decoded.service_id) == (
        record.status,
        record.output,
        record.service_id,
    )


WEB = ServiceRecord("n1", ServiceDefinition("web", "web1", port=80))


def _value(**changes: object) -> bytes:
    value = cbor2.loads(encode_service(WEB))
    value.update(changes)
    return bytes(cbor2.dumps(value, canonical=True))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not CBOR"),
        (b"\xff", "not CBOR"),
        (cbor2.dumps([1, 2]), "not a map"),
        (_value(v=2), "unsupported service record version 2"),
        (_value(port=70000), "service.port is not an integer"),
        (_value(port=True), "service.port is not an integer"),
        (_value(tags="a"), "service.tags is not a list"),
        (_value(tags=[1]), "other than text"),
        (_value(meta={"a": 1}), "other than text"),
        (_value(node="n2"), "does not match key"),
        (_value(extra=1), "canonical"),
        (encode_service(WEB) + b"\x00", "canonical"),
        (cbor2.dumps(dict(reversed(cbor2.loads(encode_service(WEB)).items()))), "canonical"),
        (bytes(cbor2.dumps(cbor2.CBORTag(1, 0))), "not a map"),
        (bytes(cbor2.dumps({1: 2})), "not CBOR"),  # integer keys: hash-flood guard
    ],
)
def test_malformed_service_values(raw: bytes, fragment: str) -> None:
    with pytest.raises(MalformedRecord, match=fragment) as caught:
        decode_service("n1/web1", raw)
    assert isinstance(caught.value, RemoteProtocolError)
    assert "\n" not in str(caught.value)


def test_malformed_check_values() -> None:
    good = CheckRecord("n1", "c1", "passing", CheckDefinition(kind="ttl", check_id="c1"))
    value = cbor2.loads(encode_check(good))
    for field, bad in [
        ("status", "ok"),
        ("type", "script"),
        ("interval", 1),
        ("header", []),
        ("dcsa", 60),  # an integer: not what we write
        ("dcsa", -1.0),
        ("dcsa", 0.0),  # we leave it out when unset, so 0.0 is a form we never write
    ]:
        raw = bytes(cbor2.dumps({**value, field: bad}, canonical=True))
        with pytest.raises(MalformedRecord):
            decode_check("n1/c1", raw)


def test_a_check_without_a_deregistration_limit_encodes_as_before() -> None:
    """Records without DeregisterCriticalServiceAfter stay byte-identical to older agents'."""
    plain = CheckRecord("n1", "c1", "passing", CheckDefinition(kind="ttl", check_id="c1"))
    assert "dcsa" not in cbor2.loads(encode_check(plain))
    limited = replace(
        plain, definition=replace(plain.definition, deregister_critical_service_after_s=60.0)
    )
    assert cbor2.loads(encode_check(limited))["dcsa"] == 60.0


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_malformed(raw: bytes) -> None:
    for decode in (decode_service, decode_check):
        with contextlib.suppress(MalformedRecord):
            decode("n1/web1", raw)
