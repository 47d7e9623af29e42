"""Gossip encryption keys as users see them: base64 text of 32 random bytes.

AES-256-GCM needs exactly 32 bytes; the CLI, the config loader and the HTTP API
all check a key here before it reaches the keyring, so a typo is reported as
one line naming the problem instead of a failure deep in the gossip layer.
"""

from __future__ import annotations

from ..gossip import keyring as _keyring
from ..gossip.errors import KeyringError

__all__ = ["KEY_BYTES", "KeyFormatError", "decode_key", "generate_key"]

KEY_BYTES = _keyring.KEY_BYTES


class KeyFormatError(ValueError):
    """The text is not the base64 encoding of a 32-byte key."""


def generate_key() -> str:
    """A new random key, base64-encoded (what `meshnode keygen` prints)."""
    return _keyring.encode_key(_keyring.generate_key())


def decode_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 key; `KeyFormatError` with one line otherwise.

    The gossip keyring owns the parsing; this adds the hint a CLI user needs.
    """
    try:
        return _keyring.decode_key(text)
    except KeyringError as exc:
        raise KeyFormatError(f"{exc} (make one with `meshnode keygen`)") from None
