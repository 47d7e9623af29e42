"""TLS contexts of a proxy, built from in-memory PEM, and the peer's SPIFFE identity.

Rules that live here:

- TLS 1.3 only, both ways; a certificate is required from both peers and
  verified against the trust bundle (roots only: a peer sends its own
  intermediates, and OpenSSL then also enforces the roots' URI name
  constraints). No hostname check: the identity is the SPIFFE URI SAN, which
  the caller compares.
- Session resumption (TLS 1.3 tickets, one per handshake): a resumed
  handshake skips both signatures and all four chain verifies, and still
  runs a fresh ECDHE (``psk_dhe_ke``, forward secrecy kept). It is safe
  because a session never outlives its material: the server's ticket keys
  belong to its `SSLContext`, built anew per material generation, so a
  ticket from before a rotation fails over to a full handshake; the client
  keeps its sessions on the `TlsContexts` of one generation (per peer
  instance, at most `_SESSIONS_MAX`). The peer's certificate is in the
  session, so the caller's SPIFFE ID and intention checks run on every
  connection; a resumed session whose certificate has expired since is
  refused (`verified_peer`).
- Stateful tickets on the server (``OP_NO_TICKET``): a TLS 1.3 ticket is
  then only an ID into the server context's own session cache, so issuing
  one costs no serialization and resuming one no decryption and no parse
  of the client's certificate (a resumed handshake measured 174 us on the
  server, 331 us with OpenSSL's default self-contained tickets). OpenSSL
  drops a session from that cache when a connection using it is freed
  without a close_notify sent (it takes that for a broken connection), so
  a connection ends with `close_tls`, never a plain close (a client marks
  its shared session unresumable the same way).
- Tickets only for clients that have none, and only while the cache holds
  fewer than `_SERVER_SESSIONS_MAX` sessions: each keeps the client's chain
  (about 12 KB measured), and a client that never resumes (``openssl
  s_client``, another TLS stack) would otherwise fill the cache with
  OpenSSL's default 20,480 of them. The server peeks at the ClientHello
  (`offers_resumption`) and issues no ticket when it carries a
  ``pre_shared_key``; a meshnode client keeps one session per peer for
  half its lifetime, and a client whose offer was refused (a rotation) or
  whose session is past half its lifetime drops it, so its next dial, a
  full handshake without an offer, brings a new ticket.
- No ALPN is set: the proxy is L4, and forcing ``h2`` breaks HTTP/1 apps.
- ``load_cert_chain`` only reads files, so the chain and key are written to a
  private directory (0700, files 0600) that is removed before returning.
  Roots go in through ``cadata``, with no file.
- Contexts are cached per material generation: building one parses PEM and
  checks the key (about a millisecond), a handshake only references it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..ca.spiffe import AgentID, ServiceID, SpiffeError, parse_spiffe_id
from .sources import CertSource, TlsMaterial

__all__ = [
    "ContextCache",
    "PeerError",
    "TlsContexts",
    "build_contexts",
    "close_tls",
    "offers_resumption",
    "peer_service",
    "peer_uri",
    "verified_peer",
]

# Sessions kept per client context: one per peer instance dialled recently; an
# entry is a few hundred bytes, and a proxy dials few instances.
_SESSIONS_MAX = 256
# Sessions a server context keeps before it stops issuing tickets: enough for
# every client proxy of a large service twice over (a rotation's overlap), at
# about 12 KB each; expired ones are flushed by OpenSSL every 256 handshakes.
_SERVER_SESSIONS_MAX = 1024


class PeerError(Exception):
    """A TLS peer is not who it must be (a remote error: logged, counted, dropped)."""


@dataclass(frozen=True, slots=True)
class TlsContexts:
    """The server and client contexts of one material generation."""

    material: TlsMaterial
    server: ssl.SSLContext
    client: ssl.SSLContext
    # (address, port) of a peer -> the newest session with a ticket from it.
    sessions: dict[tuple[str, int], ssl.SSLSession] = field(default_factory=dict)

    def session_for(self, peer: tuple[str, int]) -> ssl.SSLSession | None:
        """A session to resume with `peer`, or None (a full handshake)."""
        return self.sessions.get(peer)

    def tickets_for(self, hello: bytes | None) -> int:
        """How many tickets the server issues to a client whose ClientHello starts `hello`."""
        if hello and offers_resumption(hello):
            return 0  # it resumes: it has a session, and a new one would only fill the cache
        if self.server.session_stats()["number"] >= _SERVER_SESSIONS_MAX:
            return 0
        return 1

    def remember(self, peer: tuple[str, int], tls: ssl.SSLSocket, now_s: float) -> None:
        """Keep the session of a full handshake for the next dials of `peer`.

        Called when a connection ends: TLS 1.3 tickets arrive after the
        handshake, with the first bytes the client reads. Reading a session
        costs as much as a fifth of a handshake (CPython copies it through
        DER, peer certificate included), and our servers issue no ticket on
        a resumption, so the session of a full handshake is kept and offered
        by every dial until half its lifetime (`now_s`: wall clock) has
        passed; then, or when the offer was refused, it is dropped and the
        next dial is a full handshake that brings a new one. RFC 8446 asks
        clients not to reuse a ticket so that connections cannot be linked;
        between two proxies that show each other their certificates there is
        nothing to unlink, and the server's ticket key accepts it.
        """
        if tls.context is not self.client:
            return  # dialled with another generation's context
        sessions = self.sessions
        if tls.session_reused:
            kept = sessions.get(peer)
            if kept is not None and now_s >= kept.time + kept.timeout / 2:
                del sessions[peer]
            return
        sessions.pop(peer, None)  # offered and refused, or none offered
        try:
            session = tls.session
        except (OSError, ValueError):
            return
        if session is None or not session.has_ticket:
            return
        if len(sessions) >= _SESSIONS_MAX:
            del sessions[next(iter(sessions))]  # the least recently stored
        sessions[peer] = session


def _load_chain(ctx: ssl.SSLContext, material: TlsMaterial) -> None:
    with tempfile.TemporaryDirectory(prefix="meshnode-tls-") as directory:
        os.chmod(directory, 0o700)
        cert_path = os.path.join(directory, "chain.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, text in ((cert_path, material.cert_chain_pem), (key_path, material.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text)
        ctx.load_cert_chain(cert_path, key_path)


def _context(purpose: int, material: TlsMaterial) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    # A TCP FIN from the peer is its half-close (see pump.py): without this
    # option OpenSSL 3 turns it into a fatal error and the other direction,
    # still open, could no longer be written.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.load_verify_locations(cadata=material.roots_pem)
    _load_chain(ctx, material)
    return ctx


def build_contexts(material: TlsMaterial) -> TlsContexts:
    """Server and client contexts for `material`; `ssl.SSLError`/`ValueError` if it is bad."""
    server = _context(ssl.PROTOCOL_TLS_SERVER, material)
    # Stateful tickets: an ID into this context's session cache (see above).
    server.options |= ssl.OP_NO_TICKET
    # One ticket per handshake: the client keeps only the newest.
    server.num_tickets = 1
    client = _context(ssl.PROTOCOL_TLS_CLIENT, material)
    return TlsContexts(material, server, client)


def close_tls(tls: ssl.SSLSocket | None) -> None:
    """Close a TLS socket so that its session stays resumable.

    OpenSSL takes a connection freed without a close_notify sent for a
    broken one: a server removes its session from the cache, a client marks
    the session it shares with `TlsContexts.sessions` (offered without a
    copy, see openssl.py) as not resumable. One ``SSL_shutdown`` marks the
    close_notify sent even when the write itself fails (our FIN went first,
    the usual end of a spliced connection), so resumption survives ragged
    EOFs; a close_notify that does go out is a clean EOF for the peer.
    """
    if tls is None:
        return
    if tls.gettimeout() == 0.0:  # a blocking socket could wait on a full send buffer
        with contextlib.suppress(OSError, ValueError):
            tls.unwrap()
    with contextlib.suppress(OSError):
        tls.close()


class ContextCache:
    """The contexts of a `CertSource`'s current material, rebuilt once per generation."""

    def __init__(self, source: CertSource) -> None:
        self.source = source
        self._built: TlsContexts | None = None

    def current(self) -> TlsContexts | None:
        """Contexts for a new handshake; None while the source has no material."""
        material = self.source.current()
        if material is None:
            return None
        built = self._built
        if built is None or built.material.generation != material.generation:
            built = self._built = build_contexts(material)
        return built

    def remember(self, peer: tuple[str, int], tls: ssl.SSLSocket, now_s: float) -> None:
        """Keep `tls`'s session for resumption if its generation is still the current one."""
        if self._built is not None:
            self._built.remember(peer, tls, now_s)


def peer_uri(cert: Mapping[str, Any] | None) -> str:
    """The single URI SAN of a verified peer certificate (``getpeercert()``); `PeerError`."""
    if not cert:
        raise PeerError("peer sent no certificate")
    san = cert.get("subjectAltName", ())
    uris = [v for k, v in san if k == "URI"] if isinstance(san, tuple) else []
    if len(uris) != 1:
        raise PeerError(f"peer certificate has {len(uris)} URI SANs, want exactly one")
    uri = uris[0]
    if not isinstance(uri, str):
        raise PeerError("peer certificate URI SAN is not text")
    return uri


def peer_service(uri: str, trust_domain: str) -> ServiceID:
    """The service ID `uri` spells, in `trust_domain`; `PeerError` for anything else."""
    try:
        found: ServiceID | AgentID = parse_spiffe_id(uri)
    except SpiffeError as exc:
        raise PeerError(str(exc)) from None
    if not isinstance(found, ServiceID):
        raise PeerError(f"peer {uri[:100]!r} is an agent, not a service")
    if found.trust_domain != trust_domain:
        raise PeerError(
            f"peer {uri[:100]!r} is in trust domain {found.trust_domain!r}, not {trust_domain!r}"
        )
    return found


# notAfter text -> seconds: strptime costs about 20 us, and the same few
# certificates come back in every resumed session.
_seconds = functools.lru_cache(maxsize=64)(ssl.cert_time_to_seconds)


def verified_peer(tls: ssl.SSLSocket, trust_domain: str, now_s: float) -> ServiceID:
    """The service ID of a handshaken peer; `PeerError` if it is not one of `trust_domain`.

    A resumed session carries the certificate verified at its full
    handshake, possibly hours ago: that certificate must still be valid at
    `now_s` (wall clock, like the certificate's dates).
    """
    cert = tls.getpeercert()
    found = peer_service(peer_uri(cert), trust_domain)
    if tls.session_reused:
        not_after = cert.get("notAfter") if cert else None
        if not isinstance(not_after, str) or _seconds(not_after) <= now_s:
            raise PeerError("resumed session of an expired certificate")
    return found


# TLS record and handshake constants of a ClientHello (RFC 8446 4.1.2, 4.2).
_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_PRE_SHARED_KEY = 41


def offers_resumption(data: bytes) -> bool | None:
    """Whether the ClientHello at the start of `data` offers a session; None: cannot tell.

    `data` is what a server peeked from its socket before the handshake;
    None (too short, not a ClientHello) makes the caller issue a ticket as
    usual, so a wrong guess costs CPU, never security.
    """
    try:
        if data[0] != _HANDSHAKE_RECORD or data[5] != _CLIENT_HELLO:
            return None
        end = 9 + int.from_bytes(data[6:9], "big")
        if end > 5 + int.from_bytes(data[3:5], "big") or end > len(data):
            return None  # split over records or segments
        at = 9 + 2 + 32  # legacy_version, random
        at += 1 + data[at]  # legacy_session_id
        at += 2 + int.from_bytes(data[at : at + 2], "big")  # cipher_suites
        at += 1 + data[at]  # legacy_compression_methods
        extensions_end = at + 2 + int.from_bytes(data[at : at + 2], "big")
        at += 2
        if extensions_end > end:
            return None
        while at + 4 <= extensions_end:
            kind = int.from_bytes(data[at : at + 2], "big")
            if kind == _PRE_SHARED_KEY:
                return True
            at += 4 + int.from_bytes(data[at + 2 : at + 4], "big")
    except IndexError:
        return None
    return False
