"""Keyring: the AES-256-GCM keys a cluster shares, rotated as serf does.

Rules that live here:

- Every key is 32 bytes (AES-256). A keyring always holds at least one key, and
  exactly one of them is the primary: it encrypts everything we send.
- Incoming data is tried under every installed key, primary first, so a cluster
  rotates without a flag day: `install` the new key everywhere, `use` it
  everywhere, then `remove` the old one. The primary can never be removed.
- Keys travel through config and the CLI as standard base64 (`encode_key`,
  `decode_key`). Error messages never echo key material.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import AuthError, KeyringError

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's native nonce size: no extra hashing of the IV
TAG_BYTES = 16  # full-length GCM tag


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes) else type(key).__name__
        raise KeyringError(f"a key must be {KEY_BYTES} bytes (AES-256), got {size}")
    return key


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise KeyringError(f"a nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")


class Keyring:
    """Installed keys with one primary; decrypts under any of them."""

    def __init__(self, keys: Sequence[bytes], primary: bytes | None = None) -> None:
        # key -> cipher; dict order is install order, the primary is tracked apart.
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self.install(key)
        if primary is not None:
            self.install(primary)  # serf's NewKeyring installs the primary it is given
        if not self._ciphers:
            raise KeyringError("a keyring needs at least one key")
        self._primary = primary if primary is not None else next(iter(self._ciphers))

    @property
    def primary_key(self) -> bytes:
        return self._primary

    @property
    def keys(self) -> tuple[bytes, ...]:
        """All installed keys, primary first, then in install order."""
        return (self._primary, *(k for k in self._ciphers if k != self._primary))

    def install(self, key: bytes) -> None:
        """Accept data under `key` too; installing twice is a no-op."""
        if key not in self._ciphers:
            self._ciphers[key] = AESGCM(_check_key(key))

    def use(self, key: bytes) -> None:
        """Encrypt under `key` from now on; it must be installed first."""
        if key not in self._ciphers:
            raise KeyringError("cannot use a key that is not installed; install it first")
        self._primary = key

    def remove(self, key: bytes) -> None:
        """Stop accepting `key`. Refused for the primary: we would have nothing to send with."""
        if key == self._primary:
            raise KeyringError("cannot remove the primary key; use another key first")
        if key not in self._ciphers:
            raise KeyringError("cannot remove a key that is not installed")
        del self._ciphers[key]

    def encrypt(self, plaintext: bytes, nonce: bytes, *, aad: bytes = b"") -> bytes:
        """Ciphertext and 16-byte tag under the primary key (the nonce is not included)."""
        _check_nonce(nonce)
        return self._ciphers[self._primary].encrypt(nonce, plaintext, aad)

    def decrypt(self, ciphertext: bytes, nonce: bytes, *, aad: bytes = b"") -> bytes:
        """The plaintext under the first key that authenticates it, else `AuthError`."""
        _check_nonce(nonce)
        if len(ciphertext) < TAG_BYTES:
            raise AuthError("ciphertext shorter than its authentication tag")
        for key in self.keys:
            try:
                return self._ciphers[key].decrypt(nonce, ciphertext, aad)
            except InvalidTag:
                continue
        raise AuthError(f"no installed key authenticates it (tried {len(self._ciphers)})")


def generate_key(urandom: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh random key; `urandom` is injectable so tests are reproducible."""
    return _check_key(urandom(KEY_BYTES))


def encode_key(key: bytes) -> str:
    """Standard base64, the form serf and Consul print and accept."""
    return base64.b64encode(_check_key(key)).decode("ascii")


def decode_key(text: str) -> bytes:
    """The key in `text`, or a one-line `KeyringError` that does not repeat it."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError("key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"key must decode to {KEY_BYTES} bytes (AES-256), got {len(key)} bytes")
    return key
