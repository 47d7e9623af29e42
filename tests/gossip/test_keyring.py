"""Keyring: AES-256-GCM under a primary key, decryption under any installed key."""

from __future__ import annotations

import base64
import random

import pytest

from meshnode.gossip.codec import decode_packet, encode_message, encode_packet
from meshnode.gossip.errors import AuthError, KeyringError
from meshnode.gossip.keyring import Keyring, decode_key, encode_key, generate_key
from meshnode.gossip.messages import Addr, Nack, Ping
from meshnode.gossip.wire import Wire

NONCE = b"\x00" * 12


K1, K2, K3 = (generate_key(random.Random(seed).randbytes) for seed in (1, 2, 3))


def test_encrypt_then_decrypt() -> None:
    ring = Keyring([K1])
    assert ring.decrypt(ring.encrypt(b"hello", NONCE, aad=b"a"), NONCE, aad=b"a") == b"hello"


def test_tampering_and_wrong_aad_fail_authentication() -> None:
    ring = Keyring([K1])
    sealed = bytearray(ring.encrypt(b"hello", NONCE))
    sealed[0] ^= 1
    with pytest.raises(AuthError):
        ring.decrypt(bytes(sealed), NONCE)
    with pytest.raises(AuthError):
        ring.decrypt(ring.encrypt(b"hello", NONCE, aad=b"a"), NONCE, aad=b"b")
    with pytest.raises(AuthError):
        ring.decrypt(b"short", NONCE)


def test_wrong_key_is_an_auth_error() -> None:
    with pytest.raises(AuthError, match="no installed key"):
        Keyring([K2]).decrypt(Keyring([K1]).encrypt(b"x", NONCE), NONCE)


def test_any_installed_key_decrypts() -> None:
    sender, receiver = Keyring([K2]), Keyring([K1, K3, K2])
    assert receiver.decrypt(sender.encrypt(b"x", NONCE), NONCE) == b"x"


def test_primary_first_then_install_order() -> None:
    ring = Keyring([K1, K2], primary=K3)
    assert ring.primary_key == K3
    assert ring.keys == (K3, K1, K2)
    ring.use(K2)
    assert ring.keys == (K2, K1, K3)


def test_install_is_idempotent_and_use_needs_install() -> None:
    ring = Keyring([K1])
    ring.install(K1)
    assert ring.keys == (K1,)
    with pytest.raises(KeyringError, match="install it first"):
        ring.use(K2)


def test_remove_refuses_the_primary_and_unknown_keys() -> None:
    ring = Keyring([K1, K2])
    with pytest.raises(KeyringError, match="primary"):
        ring.remove(K1)
    with pytest.raises(KeyringError, match="not installed"):
        ring.remove(K3)
    ring.remove(K2)
    assert ring.keys == (K1,)


@pytest.mark.parametrize("keys", [[], [b"short"], [b"x" * 16], [b"x" * 33]])
def test_bad_keyrings_are_refused(keys: list[bytes]) -> None:
    with pytest.raises(KeyringError):
        Keyring(keys)


def test_nonce_must_be_12_bytes() -> None:
    with pytest.raises(KeyringError, match="12 bytes"):
        Keyring([K1]).encrypt(b"x", b"\x00" * 8)


def test_rotation_between_two_wires() -> None:
    """serf's sequence: install the new key everywhere, use it, remove the old one.

    The receiver has not switched yet when the sender starts using the new key, and
    it keeps decoding because the key is installed.
    """
    sender_ring, receiver_ring = Keyring([K1]), Keyring([K1])
    sender, receiver = Wire(sender_ring), Wire(receiver_ring)
    packet = encode_packet([encode_message(Ping(1, "b", "a", Addr("10.0.0.1", 7946)))])
    now = 0.0

    def deliver() -> None:
        nonlocal now
        now += 1.0
        assert decode_packet(receiver.open(sender.seal(packet), now))

    deliver()
    sender_ring.install(K2)
    receiver_ring.install(K2)
    deliver()
    sender_ring.use(K2)  # the receiver still has K1 as primary
    deliver()
    # The receiver still sends under K1, which the sender still accepts.
    assert receiver_ring.primary_key == K1
    assert decode_packet(sender.open(receiver.seal(packet), now))
    receiver_ring.use(K2)
    sender_ring.remove(K1)
    receiver_ring.remove(K1)
    deliver()
    # A straggler still on K1 alone is now locked out.
    straggler = Wire(Keyring([K1]))
    with pytest.raises(AuthError):
        receiver.open(straggler.seal(encode_packet([encode_message(Nack(1))])), now)


def test_key_text_round_trip() -> None:
    assert decode_key(encode_key(K1)) == K1
    assert decode_key("  " + encode_key(K1) + "\n") == K1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not base64!", "not valid base64"),
        ("QUJD", "got 3 bytes"),
        (base64.b64encode(b"k" * 16).decode(), "32 bytes \\(AES-256\\)"),
        (base64.b64encode(b"k" * 33).decode(), "got 33 bytes"),
        ("", "got 0 bytes"),
        ("é" * 44, "not valid base64"),
        (base64.b64encode(b"k" * 32).decode()[:-1], "not valid base64"),
    ],
)
def test_bad_key_text_is_a_one_line_keyring_error(text: str, reason: str) -> None:
    with pytest.raises(KeyringError, match=reason) as info:
        decode_key(text)
    assert "\n" not in str(info.value)


def test_generate_key_uses_the_injected_source() -> None:
    assert generate_key(random.Random(7).randbytes) == generate_key(random.Random(7).randbytes)
    assert len(generate_key()) == 32
    with pytest.raises(KeyringError):
        generate_key(lambda n: b"\x00" * (n - 1))
