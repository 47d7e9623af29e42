"""DNS wire format: the query parser and the record encoder.

Rules that live here:
- A query is parsed by hand and no compression pointer is ever followed. The
  question of a real query is never compressed (a pointer there is FORMERR),
  and names in other sections are only skipped, so a compression loop costs
  at most the packet's length.
- Records are encoded with names compressed only against the question name,
  which starts at offset 12 in every response. An encoded record therefore
  stays valid wherever it sits in the answer section, so answers are shuffled
  by reordering bytes, never by encoding again.
- SRV targets are never compressed (RFC 2782).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import RemoteQueryError

__all__ = [
    "CLASS_ANY",
    "CLASS_IN",
    "HEADER_BYTES",
    "MAX_UDP_PAYLOAD_BYTES",
    "MIN_UDP_PAYLOAD_BYTES",
    "Edns",
    "NameEncoder",
    "Query",
    "parse_query",
]

HEADER_BYTES = 12

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255

CLASS_IN = 1
CLASS_ANY = 255

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16  # extended: 1 in the OPT record's high byte, 0 in the header

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080

# RFC 1035's UDP limit without EDNS0.
MIN_UDP_PAYLOAD_BYTES = 512
# What we advertise and the most we send over UDP whatever the client asks:
# larger datagrams fragment, and fragments get lost or spoofed.
MAX_UDP_PAYLOAD_BYTES = 4096
MAX_NAME_BYTES = 255

_HEADER = struct.Struct("!6H")
_RR_FIXED = struct.Struct("!HHIH")


@dataclass(frozen=True, slots=True)
class Edns:
    """The client's OPT record: its UDP payload size, EDNS version and DO bit."""

    payload_bytes: int
    version: int
    dnssec_ok: bool


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed query: what the answer logic needs, plus bytes to echo."""

    query_id: int
    flags: int
    # Lowercased labels of the question name, without the root.
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int
    # The question section exactly as sent (the client's case is echoed).
    question: bytes
    # The cache key: the lowercased question (name, type, class).
    key: bytes
    edns: Edns | None


def _formerr(message: str, query_id: int, flags: int) -> RemoteQueryError:
    return RemoteQueryError(message, rcode=RCODE_FORMERR, query_id=query_id, flags=flags)


def _skip_name(data: bytes, pos: int) -> int:
    """The offset after the name at `pos`; a pointer ends it and is not followed."""
    end = len(data)
    while pos < end:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            return end + 1  # reserved label types: malformed
        pos += 1 + length
    return end + 1


def parse_query(data: bytes) -> Query:
    """Parse a query; RemoteQueryError says how to refuse a bad one."""
    if len(data) < HEADER_BYTES:
        raise RemoteQueryError("packet shorter than a DNS header", rcode=None)
    query_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & FLAG_QR:
        raise RemoteQueryError("a response, not a query", rcode=None)
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise RemoteQueryError(
            f"opcode {opcode} not implemented", rcode=RCODE_NOTIMP, query_id=query_id, flags=flags
        )
    if qdcount != 1:
        raise _formerr(f"{qdcount} questions (exactly 1 is answered)", query_id, flags)
    labels: list[bytes] = []
    pos = HEADER_BYTES
    end = len(data)
    while True:
        if pos >= end:
            raise _formerr("question name runs past the packet", query_id, flags)
        length = data[pos]
        if length == 0:
            break
        if length & 0xC0:
            raise _formerr("compressed or extended label in the question", query_id, flags)
        labels.append(data[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length
    name_end = pos
    if name_end + 1 - HEADER_BYTES > MAX_NAME_BYTES:
        raise _formerr("question name longer than 255 bytes", query_id, flags)
    question_end = name_end + 5
    if question_end > end:
        raise _formerr("question type and class missing", query_id, flags)
    qtype, qclass = struct.unpack_from("!HH", data, name_end + 1)
    edns: Edns | None = None
    pos = question_end
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            name_start = pos
            pos = _skip_name(data, pos)
            if pos + _RR_FIXED.size > end:
                raise _formerr("record runs past the packet", query_id, flags)
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
            pos += _RR_FIXED.size + rdlength
            if pos > end:
                raise _formerr("record data runs past the packet", query_id, flags)
            if rtype == TYPE_OPT:
                if section != 2 or edns is not None or data[name_start] != 0:
                    raise _formerr("misplaced or repeated OPT record", query_id, flags)
                edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000))
    # Bytes after the last record are ignored, as most servers do.
    return Query(
        query_id=query_id,
        flags=flags,
        labels=tuple(labels),
        qtype=qtype,
        qclass=qclass,
        question=data[HEADER_BYTES:question_end],
        key=data[HEADER_BYTES:name_end].lower() + data[name_end:question_end],
        edns=edns,
    )


def header(query_id: int, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    return _HEADER.pack(query_id, flags, qd, an, ns, ar)


def opt_record(ext_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, our UDP payload size, version 0, no options."""
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, MAX_UDP_PAYLOAD_BYTES, (ext_rcode & 0xFF) << 24, 0)


def name_labels(name: str) -> tuple[bytes, ...]:
    """`web.node.mesh.` -> (b"web", b"node", b"mesh"); lowercased."""
    return tuple(label.encode("ascii").lower() for label in name.rstrip(".").split(".") if label)


def encode_name_plain(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


class NameEncoder:
    """Encodes records with names compressed against the question name only.

    Each suffix of the question name sits at a fixed offset in every response
    (the question starts right after the 12-byte header), so a pointer to it
    stays valid however the records after the question are ordered.
    """

    def __init__(self, question_labels: tuple[bytes, ...]) -> None:
        self._suffixes: dict[tuple[bytes, ...], int] = {}
        offset = HEADER_BYTES
        for i in range(len(question_labels)):
            self._suffixes.setdefault(question_labels[i:], offset)
            offset += 1 + len(question_labels[i])

    def name(self, labels: tuple[bytes, ...]) -> bytes:
        for i in range(len(labels)):
            pointer = self._suffixes.get(labels[i:])
            if pointer is not None:
                return encode_name_plain(labels[:i])[:-1] + struct.pack("!H", 0xC000 | pointer)
        return encode_name_plain(labels)

    def record(self, owner: tuple[bytes, ...], rtype: int, ttl_s: int, rdata: bytes) -> bytes:
        return self.name(owner) + _RR_FIXED.pack(rtype, CLASS_IN, ttl_s, len(rdata)) + rdata

    def address(
        self,
        owner: tuple[bytes, ...],
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        ttl_s: int,
    ) -> bytes:
        rtype = TYPE_A if ip.version == 4 else TYPE_AAAA
        return self.record(owner, rtype, ttl_s, ip.packed)

    def srv(
        self,
        owner: tuple[bytes, ...],
        ttl_s: int,
        priority: int,
        weight: int,
        port: int,
        target: tuple[bytes, ...],
    ) -> bytes:
        rdata = struct.pack("!HHH", priority, weight, port) + encode_name_plain(target)
        return self.record(owner, TYPE_SRV, ttl_s, rdata)

    def pointer(
        self, owner: tuple[bytes, ...], rtype: int, ttl_s: int, target: tuple[bytes, ...]
    ) -> bytes:
        """A record whose data is one name (PTR, CNAME), compressed when it can be."""
        return self.record(owner, rtype, ttl_s, self.name(target))

    def txt(self, owner: tuple[bytes, ...], ttl_s: int, text: bytes) -> bytes:
        chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [b""]
        return self.record(owner, TYPE_TXT, ttl_s, b"".join(bytes((len(c),)) + c for c in chunks))

    def soa(self, apex: tuple[bytes, ...], serial: int, minimum_ttl_s: int) -> bytes:
        # The refresh/retry/expire figures matter only to secondaries, which
        # this zone never has; they are the usual RFC 1912 values.
        rdata = (
            self.name((b"ns", *apex))
            + self.name((b"hostmaster", *apex))
            + struct.pack("!5I", serial & 0xFFFFFFFF, 3600, 600, 86400, minimum_ttl_s)
        )
        return self.record(apex, TYPE_SOA, minimum_ttl_s, rdata)
