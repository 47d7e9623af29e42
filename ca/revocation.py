"""Revoked leaves (store kind ``"revocation"``) and the pure checks made from them.

Rules that live here:

- One store entry per revoked leaf, keyed by its serial in colon hex
  (``0a:1b:...``, Consul's ``SerialNumber`` form). The value is strict CBOR:
  the serial, the SHA-256 of the leaf's SubjectPublicKeyInfo (empty when the
  revoking agent never saw the certificate), when and why it was revoked,
  who revoked it, and the leaf's notAfter.
- A peer leaf is refused when its serial OR its public key is revoked: a
  certificate re-issued for a stolen key is refused as well. Nothing is keyed
  on the certificate's fingerprint, which a re-issue changes.
- An entry is garbage-collected `GC_MARGIN_S` after the revoked leaf's
  notAfter: past that, the leaf fails every handshake on its dates alone, so
  the list only holds leaves that could still be used. A serial revoked with
  no certificate at hand gets the longest leaf life the CA allows as its
  notAfter; the leaf's owner fills in the real one (and the key) later.
- At most `MAX_ENTRIES` entries are used: a local revocation past it is
  refused, and of remote ones the earliest revoked are kept (the others are
  counted), so a flood cannot grow the per-handshake index without bound.
- Bad remote values are a `MalformedRevocation` (a `DecodeError`): skipped
  and counted, never raised out of a merge.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..gossip.errors import DecodeError
from .fields import load_v1_map
from .pem import colon_hex

__all__ = [
    "GC_MARGIN_S",
    "KIND",
    "MAX_ENTRIES",
    "MalformedRevocation",
    "Revocation",
    "RevocationError",
    "RevocationSet",
    "decode_revocation",
    "encode_revocation",
    "expired_keys",
    "parse_serial",
    "revocation_of_cert",
    "serial_key",
    "spki_sha256",
]

KIND = "revocation"
# Past notAfter a leaf fails on its dates; an hour more covers clock skew
# between the agent that collects the entry and a proxy that checks a peer.
GC_MARGIN_S = 3600.0
# Far more leaves than a cluster ever revokes within one leaf TTL (72 h),
# and 4,096 entries of ~200 bytes keep the index and its gossip small.
MAX_ENTRIES = 4096
# RFC 5280 4.1.2.2: a serial is at most 20 octets.
_SERIAL_MAX_BYTES = 20
_REASON_MAX_CHARS = 256
_BY_MAX_CHARS = 128  # a member name (gossip's NAME_MAX_CHARS)
_VALUE_MAX_BYTES = 1024
_SHA256_BYTES = 32
_HEX = re.compile(r"[0-9a-f]+")


class RevocationError(ValueError):
    """Local bad input (a serial that is not one, a reason too long): one line for the user."""


class MalformedRevocation(DecodeError):
    """A replicated revocation from the network cannot be read (a remote error)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked leaf."""

    serial: int
    spki_sha256: bytes  # b"": only the serial is known
    revoked_at_s: float  # wall clock
    not_after_s: float  # wall clock: the leaf's notAfter (or the longest it could be)
    reason: str
    revoked_by: str  # the member name of the agent that took the request

    @property
    def key(self) -> str:
        return serial_key(self.serial)


def serial_key(serial: int) -> str:
    """The store key of a serial: colon hex of its minimal big-endian bytes."""
    return colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


def parse_serial(text: str) -> int:
    """A serial given as colon hex (``0a:1b``) or plain hex (``0a1b``); `RevocationError`."""
    cleaned = text.strip().lower().removeprefix("0x")
    digits = cleaned.replace(":", "")
    if ":" in cleaned and any(len(part) not in (1, 2) for part in cleaned.split(":")):
        raise RevocationError(f"serial {text[:80]!r}: colon hex needs 1 or 2 digits per byte")
    if not digits or not _HEX.fullmatch(digits):
        raise RevocationError(f"serial {text[:80]!r} is not colon hex or hex")
    if ":" in cleaned:
        raw = bytes(int(part, 16) for part in cleaned.split(":"))
        serial = int.from_bytes(raw, "big")
    else:
        serial = int(digits, 16)
    if serial <= 0 or serial.bit_length() > 8 * _SERIAL_MAX_BYTES:
        raise RevocationError(f"serial {text[:80]!r} must be 1..{_SERIAL_MAX_BYTES} bytes, not 0")
    return serial


def spki_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the same for every cert of one key."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def revocation_of_cert(
    cert: x509.Certificate, *, now_wall_s: float, reason: str, revoked_by: str
) -> Revocation:
    """The revocation of a certificate at hand: serial, key and notAfter all known."""
    return _checked(
        Revocation(
            serial=cert.serial_number,
            spki_sha256=spki_sha256(cert),
            revoked_at_s=now_wall_s,
            not_after_s=cert.not_valid_after_utc.timestamp(),
            reason=reason,
            revoked_by=revoked_by,
        ),
        RevocationError,
    )


def _checked(record: Revocation, error: Callable[[str], Exception]) -> Revocation:
    if record.serial <= 0 or record.serial.bit_length() > 8 * _SERIAL_MAX_BYTES:
        raise error(f"serial must be 1..{_SERIAL_MAX_BYTES} bytes")
    if len(record.spki_sha256) not in (0, _SHA256_BYTES):
        raise error(f"public key hash must be empty or {_SHA256_BYTES} bytes")
    for name in ("revoked_at_s", "not_after_s"):
        value = getattr(record, name)
        if not math.isfinite(value) or value < 0:
            raise error(f"{name} is not a wall-clock time")
    if len(record.reason) > _REASON_MAX_CHARS:
        raise error(f"reason is over {_REASON_MAX_CHARS} characters")
    if not 0 < len(record.revoked_by) <= _BY_MAX_CHARS:
        raise error(f"revoked_by must be 1..{_BY_MAX_CHARS} characters")
    return record


def encode_revocation(record: Revocation) -> bytes:
    """The store value of `record` (canonical CBOR, format version 1)."""
    _checked(record, RevocationError)
    return cbor2.dumps(
        {
            "v": 1,
            "serial": record.serial.to_bytes((record.serial.bit_length() + 7) // 8, "big"),
            "spki_sha256": record.spki_sha256,
            "revoked_at_s": float(record.revoked_at_s),
            "not_after_s": float(record.not_after_s),
            "reason": record.reason,
            "by": record.revoked_by,
        },
        canonical=True,
    )


def _malformed(why: str) -> NoReturn:
    raise MalformedRevocation(f"malformed revocation: {why}")


def _refusal(why: str) -> MalformedRevocation:
    return MalformedRevocation(f"malformed revocation: {why}")


def _field(value: dict[str, Any], name: str, kind: type) -> Any:
    found = value.get(name)
    # `type(...) is`: a bool is an int, never a time.
    if type(found) is not kind and not (kind is float and type(found) is int):
        _malformed(f"{name} is not {kind.__name__}")
    return found


def decode_revocation(key: str, data: bytes) -> Revocation:
    """The revocation a replicated value holds; `MalformedRevocation` for any defect."""
    value = load_v1_map(data, max_bytes=_VALUE_MAX_BYTES, refuse=_refusal)
    raw_serial = _field(value, "serial", bytes)
    record = _checked(
        Revocation(
            serial=int.from_bytes(raw_serial, "big"),
            spki_sha256=_field(value, "spki_sha256", bytes),
            revoked_at_s=float(_field(value, "revoked_at_s", float)),
            not_after_s=float(_field(value, "not_after_s", float)),
            reason=_field(value, "reason", str),
            revoked_by=_field(value, "by", str),
        ),
        _refusal,
    )
    if record.key != key:
        _malformed(f"key {key[:80]!r} is not the serial {record.key!r}")
    return record


class RevocationSet:
    """Revoked serials and public keys, for a check per handshake (two dict look-ups)."""

    def __init__(self, records: Iterable[Revocation] = (), max_entries: int = MAX_ENTRIES):
        kept = sorted(records, key=lambda r: (r.revoked_at_s, r.serial))
        self.dropped_total = max(0, len(kept) - max_entries)
        self.records: tuple[Revocation, ...] = tuple(kept[:max_entries])
        self._by_serial = {r.serial: r for r in self.records}
        self._by_key = {r.spki_sha256: r for r in self.records if r.spki_sha256}

    def __len__(self) -> int:
        return len(self.records)

    def match(self, serial: int, spki_sha256: bytes) -> Revocation | None:
        """The revocation that covers a leaf with this serial or this key, if any."""
        found = self._by_serial.get(serial)
        if found is None and spki_sha256:
            found = self._by_key.get(spki_sha256)
        return found

    def refusal(self, serial: int, spki_sha256: bytes) -> str | None:
        """Why a leaf is refused (one line for the logs), or None: it is not revoked."""
        found = self.match(serial, spki_sha256)
        if found is None:
            return None
        how = "serial" if found.serial == serial else f"key of serial {found.key}"
        why = f": {found.reason}" if found.reason else ""
        return f"leaf {serial_key(serial)} is revoked (by {how}{why})"


def expired_keys(
    records: Iterable[Revocation], now_wall_s: float, margin_s: float = GC_MARGIN_S
) -> list[str]:
    """Keys of the entries whose leaf expired more than `margin_s` ago: safe to delete."""
    return sorted(r.key for r in records if r.not_after_s + margin_s < now_wall_s)
