"""Query bytes -> response bytes, from a cache of encoded answers (sans-IO).

Rules that live here:
- The hot path is: compare the catalog index with the cache's, find the
  cache key in the raw bytes, look it up, then copy the client's ID and
  question into a pre-encoded response whose answer records are in a random
  order. Nothing is parsed or encoded on a hit.
- The cache key is (lowercased question, RD bit, size mode). The size mode is
  the byte budget (512, the EDNS0 size clamped to 512..4096, or 65535 over
  TCP) plus a flag for "the client sent OPT"; everything else in a response
  follows from those. A hit is possible only for bytes that a full parse
  accepted before with the same key, so the quick key extraction needs no
  validation of its own.
- Few answers (<= 4): every order is pre-encoded and one is picked per query.
  More: the encoded records are shuffled per query and joined.
- A response that does not fit its budget carries as many whole answers as
  fit (a random subset), no authority or additional records, and the TC bit
  (unless truncation is disabled, as Consul's enable_truncate=false).
- Names outside our zones come back as `Forward`: the driver asks the
  recursors, and sends `Forward.servfail` when they all fail.
"""

from __future__ import annotations

import itertools
import logging
import random
import struct
from dataclasses import dataclass

from . import wire
from .answer import Answerer, Reply
from .catalog_view import DnsCatalog
from .config import DnsConfig
from .errors import RemoteQueryError

__all__ = ["DnsStats", "Forward", "Responder"]

log = logging.getLogger("meshnode.dns")

_EDNS_MODE = 0x10000  # or-ed into the size mode when the client sent OPT
_TCP_BUDGET_BYTES = 0xFFFF  # a TCP message's length prefix is 16 bits
# Pre-encode every order up to this many answers (4! = 24 bodies per entry).
_PERMUTE_MAX = 4
_COUNTS = struct.Struct("!5H")


@dataclass(slots=True)
class DnsStats:
    """Counters for the agent's metrics: what came in and what was refused."""

    udp_queries: int = 0
    tcp_queries: int = 0
    cache_misses: int = 0
    dropped: int = 0
    formerr: int = 0
    notimp: int = 0
    refused: int = 0
    servfail: int = 0
    forwarded: int = 0
    forward_failures: int = 0
    internal_errors: int = 0
    udp_send_failures: int = 0
    tcp_refused: int = 0
    tcp_timeouts: int = 0
    tcp_oversized: int = 0


@dataclass(frozen=True, slots=True)
class Forward:
    """A question for the recursors: send `query` upstream; `servfail` if none answers."""

    query: bytes
    servfail: bytes


def _size_mode(tcp: bool, edns_payload_bytes: int | None) -> int:
    if tcp:
        budget = _TCP_BUDGET_BYTES
    elif edns_payload_bytes is None:
        budget = wire.MIN_UDP_PAYLOAD_BYTES
    else:
        budget = min(
            max(edns_payload_bytes, wire.MIN_UDP_PAYLOAD_BYTES), wire.MAX_UDP_PAYLOAD_BYTES
        )
    return budget if edns_payload_bytes is None else budget | _EDNS_MODE


class _Entry:
    """One cached response, ready to be stamped with a client's ID and question."""

    __slots__ = (
        "answers",
        "bodies",
        "budget",
        "fits",
        "flags",
        "head",
        "opt",
        "rng",
        "tail",
        "truncate",
    )

    def __init__(
        self,
        flags: int,
        reply: Reply,
        opt: bytes,
        budget: int,
        question_bytes: int,
        truncate: bool,
        rng: random.Random,
    ) -> None:
        self.flags = flags
        self.answers = tuple(reply.answers)
        self.tail = b"".join(reply.authority) + b"".join(reply.additional) + opt
        self.opt = opt
        self.budget = budget
        self.truncate = truncate
        self.rng = rng
        arcount = len(reply.additional) + (1 if opt else 0)
        self.head = _COUNTS.pack(flags, 1, len(self.answers), len(reply.authority), arcount)
        size = wire.HEADER_BYTES + question_bytes + sum(map(len, self.answers)) + len(self.tail)
        self.fits = size <= budget
        self.bodies: tuple[bytes, ...] | None = None
        if self.fits and len(self.answers) <= _PERMUTE_MAX:
            orders = itertools.permutations(self.answers)
            self.bodies = tuple(b"".join(order) + self.tail for order in orders)

    def render(self, query_id: bytes, question: bytes) -> bytes:
        """The response for a client: a fresh order, truncated when it does not fit."""
        answers = list(self.answers)
        self.rng.shuffle(answers)
        if self.fits:
            return query_id + self.head + question + b"".join(answers) + self.tail
        room = self.budget - wire.HEADER_BYTES - len(question) - len(self.opt)
        kept: list[bytes] = []
        for record in answers:
            room -= len(record)
            if room < 0:
                break
            kept.append(record)
        flags = self.flags | (wire.FLAG_TC if self.truncate else 0)
        head = _COUNTS.pack(flags, 1, len(kept), 0, 1 if self.opt else 0)
        return query_id + head + question + b"".join(kept) + self.opt


class Responder:
    """Turns query bytes into response bytes; the only state is the answer cache.

    `respond(data, tcp)` returns the response, a `Forward` for the recursors,
    or None when the packet must be dropped. It never raises on remote input.
    """

    def __init__(
        self,
        catalog: DnsCatalog,
        config: DnsConfig,
        rng: random.Random,
        stats: DnsStats | None = None,
    ) -> None:
        self._catalog_index = catalog.index
        self._config = config
        self._rng = rng
        self._random = rng.random
        self.stats = stats if stats is not None else DnsStats()
        self._answerer = Answerer(catalog, config)
        self._cache: dict[tuple[bytes, int, int], _Entry] = {}
        # UDP only: the query's bytes after its ID -> every finished response
        # minus the ID. Filled from `_cache` entries that have `bodies`, so a
        # repeated query costs one slice, one look-up and one concatenation.
        self._exact: dict[bytes, tuple[bytes, ...]] = {}
        self._index = catalog.index()
        self._recursion = bool(config.recursor_addrs)

    def respond(self, data: bytes, tcp: bool = False) -> bytes | Forward | None:
        index = self._catalog_index()
        if index != self._index:
            self._cache.clear()
            self._exact.clear()
            self._index = index
        if not tcp:
            finished = self._exact.get(data[2:])
            if finished is not None:
                return data[:2] + finished[int(self._random() * len(finished))]
        # Hot path: one question, no answer or authority records, QR and
        # opcode 0, then either nothing or exactly one OPT record (version 0).
        if data[4:10] == b"\x00\x01\x00\x00\x00\x00" and not data[2] & 0xF8:
            name_end = data.find(0, 12)
            if name_end < 0:
                return self._respond_slow(data, tcp)
            question_end = name_end + 5
            size = len(data)
            mode = -1
            if data[10:12] == b"\x00\x00":
                if size == question_end:
                    mode = _TCP_BUDGET_BYTES if tcp else wire.MIN_UDP_PAYLOAD_BYTES
            elif (
                data[10:12] == b"\x00\x01"
                and data[question_end : question_end + 3] == b"\x00\x00\x29"
                and size >= question_end + 11
                and data[question_end + 6] == 0
                and size
                == question_end + 11 + (data[question_end + 9] << 8 | data[question_end + 10])
            ):
                mode = _size_mode(tcp, data[question_end + 3] << 8 | data[question_end + 4])
            if mode >= 0:
                key = (data[12:name_end].lower() + data[name_end:question_end], data[2] & 1, mode)
                entry = self._cache.get(key)
                if entry is not None:
                    if entry.bodies is not None and not tcp:
                        return self._remember(data, entry, data[12:question_end])
                    return entry.render(data[:2], data[12:question_end])
        return self._respond_slow(data, tcp)

    def _respond_slow(self, data: bytes, tcp: bool) -> bytes | Forward | None:
        """Parse, answer, cache: every first query for a key comes through here."""
        stats = self.stats
        stats.cache_misses += 1
        try:
            query = wire.parse_query(data)
        except RemoteQueryError as exc:
            if exc.rcode is None:
                stats.dropped += 1
                return None
            if exc.rcode == wire.RCODE_NOTIMP:
                stats.notimp += 1
            else:
                stats.formerr += 1
            flags = wire.FLAG_QR | (exc.flags & (0x7800 | wire.FLAG_RD)) | exc.rcode
            return wire.header(exc.query_id, flags, 0, 0, 0, 0)
        edns = query.edns
        opt = b"" if edns is None else wire.opt_record()
        base_flags = wire.FLAG_QR | (query.flags & wire.FLAG_RD)
        if self._recursion:
            base_flags |= wire.FLAG_RA
        if edns is not None and edns.version != 0:
            stats.formerr += 1
            return (
                wire.header(query.query_id, base_flags, 1, 0, 0, 1)
                + query.question
                + wire.opt_record(wire.RCODE_BADVERS >> 4)
            )
        mode = _size_mode(tcp, None if edns is None else edns.payload_bytes)
        try:
            reply = self._answerer.answer(query, self._index)
        except Exception:
            # Our bug or the catalog adapter's: the client gets SERVFAIL, the
            # agent lives on. Logged on the 1st, 2nd, 4th, 8th... occurrence.
            stats.internal_errors += 1
            stats.servfail += 1
            if stats.internal_errors & (stats.internal_errors - 1) == 0:
                log.exception("DNS answer failed for %r", query.labels)
            return self._error(query, base_flags, wire.RCODE_SERVFAIL, opt)
        if reply is None:
            if self._recursion:
                stats.forwarded += 1
                # Built now, while the parsed query is at hand; sent only on failure.
                return Forward(data, self._error(query, base_flags, wire.RCODE_SERVFAIL, opt))
            reply = Reply(rcode=wire.RCODE_REFUSED, authoritative=False)
        if reply.rcode == wire.RCODE_REFUSED:
            stats.refused += 1
        flags = base_flags | reply.rcode | (wire.FLAG_AA if reply.authoritative else 0)
        entry = _Entry(
            flags,
            reply,
            opt,
            mode & 0xFFFF,
            len(query.question),
            self._config.enable_truncate,
            self._rng,
        )
        if len(self._cache) >= self._config.cache_entries_max:
            self._cache.clear()
        self._cache[(query.key, (query.flags >> 8) & 1, mode)] = entry
        if entry.bodies is not None and not tcp:
            return self._remember(data, entry, query.question)
        return entry.render(data[:2], query.question)

    def _remember(self, data: bytes, entry: _Entry, question: bytes) -> bytes:
        """Answer from `entry` and keep the finished responses under the exact query bytes."""
        assert entry.bodies is not None
        if len(self._exact) >= self._config.cache_entries_max:
            self._exact.clear()
        prefix = entry.head + question
        finished = tuple(prefix + body for body in entry.bodies)
        self._exact[data[2:]] = finished
        return data[:2] + finished[int(self._random() * len(finished))]

    def _error(self, query: wire.Query, flags: int, rcode: int, opt: bytes) -> bytes:
        head = wire.header(query.query_id, flags | rcode, 1, 0, 0, 1 if opt else 0)
        return head + query.question + opt

    def forward_failed(self) -> None:
        """Count a recursion that got no usable answer (the driver sent SERVFAIL)."""
        self.stats.forward_failures += 1
        self.stats.servfail += 1
