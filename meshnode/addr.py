"""Parsing and printing of ``host:port`` addresses (IPv6 in brackets).

One parser for the CLI, the config files and the HTTP client, so that every
place accepts and rejects the same spellings with the same one-line message.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["AddressError", "format_host_port", "parse_host_port", "parse_ip"]

# RFC 1123 host names: labels of letters, digits and hyphens.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


class AddressError(ValueError):
    """A malformed address; the message is one line naming what is wrong."""


def parse_ip(text: str) -> str:
    """Return `text` as a normalised IP literal (brackets allowed around IPv6)."""
    raw = text.strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise AddressError(f"{text!r} is not an IP address") from None


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit():
        raise AddressError(f"{whole!r}: port {text!r} is not a number")
    port = int(text)
    if not 0 <= port <= 65535:
        raise AddressError(f"{whole!r}: port {port} is out of range (0-65535)")
    return port


def parse_host_port(
    text: str, *, default_port: int | None = None, require_ip: bool = True
) -> tuple[str, int]:
    """Split ``IP:PORT`` / ``[IPv6]:PORT`` (or ``HOST`` alone with `default_port`).

    With ``require_ip=False`` a DNS host name is accepted in place of the IP,
    as Consul accepts for ``-join``. IPv6 literals must be bracketed when a port
    follows; a bare IPv6 literal is accepted only when a default port exists.
    """
    raw = text.strip()
    if not raw:
        raise AddressError("empty address")
    host: str
    port_text: str | None
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise AddressError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise AddressError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif raw.count(":") > 1:
        try:
            host = str(ipaddress.IPv6Address(raw))
        except ValueError:
            raise AddressError(f"{text!r}: put an IPv6 address in brackets: [IP]:PORT") from None
        port_text = None
    else:
        host, sep, port_text_or_empty = raw.partition(":")
        port_text = port_text_or_empty if sep else None
        if not host:
            raise AddressError(f"{text!r}: missing host before ':'")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if require_ip:
                raise AddressError(f"{text!r}: {host!r} is not an IP address") from None
            if not _HOSTNAME.match(host):
                raise AddressError(
                    f"{text!r}: {host!r} is not an IP address or host name"
                ) from None
    if port_text is None:
        if default_port is None:
            raise AddressError(f"{text!r}: missing ':PORT'")
        return host, default_port
    return host, _parse_port(port_text, text)


def format_host_port(host: str, port: int) -> str:
    """The inverse of `parse_host_port`: brackets around IPv6 literals."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
