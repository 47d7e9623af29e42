"""Address parsing (IPv4, bracketed IPv6, host names) and key decoding, as tables."""

from __future__ import annotations

import pytest

from meshnode.addr import AddressError, format_host_port, parse_host_port
from meshnode.agent.keys import KeyFormatError, decode_key, generate_key


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("10.0.0.1:7946", {}, ("10.0.0.1", 7946)),
        ("[::1]:80", {}, ("::1", 80)),
        ("[fd00:0::1]:80", {}, ("fd00::1", 80)),
        ("10.0.0.1", {"default_port": 7946}, ("10.0.0.1", 7946)),
        ("[::1]", {"default_port": 1}, ("::1", 1)),
        ("fd00::2", {"default_port": 1}, ("fd00::2", 1)),
        ("node-1.example.com:8", {"require_ip": False}, ("node-1.example.com", 8)),
        (" 10.0.0.1:0 ", {}, ("10.0.0.1", 0)),
    ],
)
def test_parse_ok(text: str, kwargs: dict[str, object], expected: tuple[str, int]) -> None:
    assert parse_host_port(text, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty address"),
        ("10.0.0.1", "missing ':PORT'"),
        ("10.0.0.1:65536", "out of range"),
        ("10.0.0.1:-1", "is not a number"),
        ("host.example:1", "is not an IP address"),
        ("[::1", "missing ']'"),
        ("[::1]80", "expected ':PORT' after ']'"),
        ("[nope]:1", "is not an IPv6 address"),
        (":80", "missing host"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("[", r"\[")):
        parse_host_port(text)


def test_format_round_trip() -> None:
    for host, port in [("10.0.0.1", 1), ("::1", 2)]:
        assert parse_host_port(format_host_port(host, port)) == (host, port)


def test_keys() -> None:
    assert len(decode_key(generate_key())) == 32
    with pytest.raises(KeyFormatError, match="got 16 bytes"):
        decode_key("AAAAAAAAAAAAAAAAAAAAAA==")
    with pytest.raises(KeyFormatError, match="not valid base64"):
        decode_key("not base64!")
