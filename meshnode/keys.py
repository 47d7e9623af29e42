"""Gossip encryption keys as users see them: base64 text of 32 random bytes.

AES-256-GCM needs exactly 32 bytes; the CLI, the config loader and the HTTP API
all check a key here before it reaches the keyring, so a typo is reported as
one line naming the problem instead of a failure deep in the gossip layer.
"""

from __future__ import annotations

import base64
import binascii
import os

__all__ = ["KEY_BYTES", "KeyFormatError", "decode_key", "generate_key"]

# AES-256-GCM (DESIGN.md): 256-bit keys only.
KEY_BYTES = 32


class KeyFormatError(ValueError):
    """The text is not the base64 encoding of a 32-byte key."""


def generate_key() -> str:
    """A new random key, base64-encoded (what `meshnode keygen` prints)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def decode_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 key; `KeyFormatError` with one line otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(
            "the key is not valid base64 (make one with `meshnode keygen`)"
        ) from None
    if len(raw) != KEY_BYTES:
        raise KeyFormatError(
            f"the key decodes to {len(raw)} bytes, {KEY_BYTES} are needed "
            "(make one with `meshnode keygen`)"
        )
    return raw
