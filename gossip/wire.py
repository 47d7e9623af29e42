"""Wire envelope: between a codec payload and the network, sans-IO.

Rules that live here:

- Every datagram and every stream frame starts with one envelope byte:
  `0x00` plaintext (dev clusters only), `0x01` AES-256-GCM. Encrypted data is
  `0x01 | nonce(12) | ciphertext | tag(16)` under the keyring's primary key,
  with the envelope byte as associated data.
- A cluster label (memberlist #246) puts `0x02 | length(1) | label` before
  that envelope, and the whole label header joins the associated data: a
  label cannot be stripped or swapped without failing authentication. Data
  whose label is not ours (a labelled cluster hearing an unlabelled one, or
  the other way round) is refused with `LabelError` before any decryption,
  so two clusters that share a key by accident never merge. Without a label
  the bytes are exactly as before.
- A keyed agent refuses plaintext and a plain agent refuses ciphertext: mixed
  clusters fail loudly instead of half-working.
- An exact replay (same nonce) of an authenticated packet within
  `replay_window_s` is refused. Later replays are accepted: by then the
  messages they carry are stale, and SWIM's incarnation numbers (and the
  store's versions) make stale news harmless. Memory is bounded by
  `max_replay_entries`, evicting the oldest nonces first.
- TCP streams carry frames: a 4-byte big-endian length, then one sealed
  payload. `FrameReader` refuses a declared length over its limit before it
  buffers any of it.
- No clock and no socket here: the caller passes `now` (monotonic seconds).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import replace

from .config import GossipConfig
from .errors import AuthError, DecodeError, LabelError, ReplayError
from .keyring import NONCE_BYTES, TAG_BYTES, Keyring

ENVELOPE_PLAIN = 0x00
ENVELOPE_AES_GCM = 0x01
ENVELOPE_LABEL = 0x02
LABEL_MAX_BYTES = 255  # one length byte
_AAD = bytes((ENVELOPE_AES_GCM,))
FRAME_HEADER_BYTES = 4


class Wire:
    """Seals outgoing payloads and opens incoming ones, remembering recent nonces."""

    def __init__(
        self,
        keyring: Keyring | None,
        *,
        nonce_source: Callable[[int], bytes] = os.urandom,
        replay_window_s: float = 120.0,
        max_replay_entries: int = 200_000,
        label: str = "",
    ) -> None:
        raw_label = label.encode("utf-8")
        if len(raw_label) > LABEL_MAX_BYTES:
            raise ValueError(f"a cluster label is at most {LABEL_MAX_BYTES} bytes")
        self.label = label
        self._label = raw_label
        self._label_header = (
            bytes((ENVELOPE_LABEL, len(raw_label))) + raw_label if raw_label else b""
        )
        self._aad = _AAD + self._label_header
        self._keyring = keyring
        self._nonce_source = nonce_source
        self._replay_window_s = replay_window_s
        self._max_replay_entries = max_replay_entries
        # Nonces seen, with the time first seen: the dict answers "seen?", the deque
        # (in arrival order) says which to forget first.
        self._seen: dict[bytes, float] = {}
        self._seen_order: collections.deque[tuple[float, bytes]] = collections.deque()

    @property
    def overhead_bytes(self) -> int:
        """What `seal` adds to a payload, so the core packs messages under the MTU."""
        label_bytes = len(self._label_header)
        if self._keyring is None:
            return label_bytes + 1
        return label_bytes + 1 + NONCE_BYTES + TAG_BYTES

    def packing(self, config: GossipConfig) -> GossipConfig:
        """`config` with room for our label header in every packet the core packs."""
        extra_bytes = len(self._label_header)
        return replace(config, envelope_overhead_bytes=config.envelope_overhead_bytes + extra_bytes)

    def seal(self, plaintext: bytes) -> bytes:
        """The envelope for one datagram or frame payload."""
        if self._keyring is None:
            return self._label_header + bytes((ENVELOPE_PLAIN,)) + plaintext
        nonce = self._nonce_source(NONCE_BYTES)
        sealed = self._keyring.encrypt(plaintext, nonce, aad=self._aad)
        return self._label_header + _AAD + nonce + sealed

    def _strip_label(self, data: bytes) -> bytes:
        """`data` after its label header, which must carry our label (or none if we have none)."""
        label = b""
        if data[0] == ENVELOPE_LABEL:
            if len(data) < 2 or data[1] == 0 or len(data) < 2 + data[1] + 1:
                raise DecodeError("label header truncated or empty")
            label = data[2 : 2 + data[1]]
            data = data[2 + data[1] :]
        if label != self._label:
            theirs = label.decode("utf-8", "replace")[:64] if label else "none"
            ours = self.label[:64] if self._label else "none"
            raise LabelError(f"cluster label {theirs!r} is not ours ({ours!r})")
        return data

    def open(self, data: bytes, now: float) -> bytes:
        """The payload inside `data`, or a `RemoteProtocolError` saying why not."""
        if not data:
            raise DecodeError("empty envelope")
        data = self._strip_label(data)
        envelope = data[0]
        if envelope == ENVELOPE_PLAIN:
            if self._keyring is not None:
                raise AuthError("plaintext packet but encryption is enabled")
            return data[1:]
        if envelope != ENVELOPE_AES_GCM:
            raise DecodeError(f"unknown envelope type {envelope}")
        if self._keyring is None:
            raise AuthError("encrypted packet but this agent has no key")
        if len(data) < 1 + NONCE_BYTES + TAG_BYTES:
            raise DecodeError(f"encrypted envelope truncated to {len(data)} bytes")
        nonce = data[1 : 1 + NONCE_BYTES]
        # Authenticate before touching the replay cache, so forged nonces cannot
        # fill it or evict real ones.
        plaintext = self._keyring.decrypt(data[1 + NONCE_BYTES :], nonce, aad=self._aad)
        self._check_replay(nonce, now)
        return plaintext

    def _check_replay(self, nonce: bytes, now: float) -> None:
        horizon = now - self._replay_window_s
        order, seen = self._seen_order, self._seen
        while order and order[0][0] < horizon:
            _, old = order.popleft()
            del seen[old]
        if nonce in seen:
            raise ReplayError(f"nonce seen {now - seen[nonce]:.3f} s ago")
        seen[nonce] = now
        order.append((now, nonce))
        if len(order) > self._max_replay_entries:
            _, old = order.popleft()
            del seen[old]

    def frame(self, payload: bytes) -> bytes:
        """One stream frame: 4-byte big-endian length, then the sealed payload."""
        sealed = self.seal(payload)
        return len(sealed).to_bytes(FRAME_HEADER_BYTES, "big") + sealed


class FrameReader:
    """Reassembles frames from a byte stream fed in arbitrary pieces.

    After any error the stream is out of sync or untrusted: drop the connection.
    """

    def __init__(self, wire: Wire, *, max_frame_bytes: int) -> None:
        self._wire = wire
        self._max_frame_bytes = max_frame_bytes  # limit on the declared (sealed) length
        self._buffer = bytearray()
        self._broken: DecodeError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def next_frame(self, now: float) -> bytes | None:
        """The next opened payload, or None until more bytes arrive."""
        if self._broken is not None:
            raise self._broken
        if len(self._buffer) < FRAME_HEADER_BYTES:
            return None
        declared_bytes = int.from_bytes(self._buffer[:FRAME_HEADER_BYTES], "big")
        if declared_bytes > self._max_frame_bytes:
            self._broken = DecodeError(
                f"frame declares {declared_bytes} bytes, limit is {self._max_frame_bytes}"
            )
            self._buffer.clear()
            raise self._broken
        end = FRAME_HEADER_BYTES + declared_bytes
        if len(self._buffer) < end:
            return None
        sealed = bytes(self._buffer[FRAME_HEADER_BYTES:end])
        del self._buffer[:end]
        return self._wire.open(sealed, now)
