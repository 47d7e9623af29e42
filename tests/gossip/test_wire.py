"""Wire envelope: sealing, mismatches, replays and stream framing, with `now` passed in."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.gossip.errors import AuthError, DecodeError, LabelError, ReplayError
from meshnode.gossip.keyring import Keyring, generate_key
from meshnode.gossip.wire import FrameReader, Wire

KEY = generate_key(random.Random(1).randbytes)
OTHER_KEY = generate_key(random.Random(2).randbytes)


def keyed(window_s: float = 120.0, max_entries: int = 200_000, seed: int = 0) -> Wire:
    return Wire(
        Keyring([KEY]),
        nonce_source=random.Random(seed).randbytes,
        replay_window_s=window_s,
        max_replay_entries=max_entries,
    )


def test_plain_envelope() -> None:
    wire = Wire(None)
    assert wire.overhead_bytes == 1
    sealed = wire.seal(b"payload")
    assert sealed == b"\x00payload"
    assert wire.open(sealed, 0.0) == b"payload"


def test_keyed_envelope_layout_and_overhead() -> None:
    sender, receiver = keyed(seed=1), keyed(seed=2)
    sealed = sender.seal(b"payload")
    assert sender.overhead_bytes == 29
    assert len(sealed) == len(b"payload") + sender.overhead_bytes
    assert sealed[0] == 0x01
    assert receiver.open(sealed, 0.0) == b"payload"


def test_nonces_come_from_the_injected_source() -> None:
    assert keyed(seed=5).seal(b"x") == keyed(seed=5).seal(b"x")
    assert keyed(seed=5).seal(b"x")[1:13] == random.Random(5).randbytes(12)


def test_keyed_wire_refuses_plaintext() -> None:
    with pytest.raises(AuthError, match="plaintext packet but encryption is enabled"):
        keyed().open(Wire(None).seal(b"x"), 0.0)


def test_plain_wire_refuses_ciphertext() -> None:
    with pytest.raises(AuthError, match="encrypted packet but this agent has no key"):
        Wire(None).open(keyed().seal(b"x"), 0.0)


def test_wrong_key_and_tampering_are_auth_errors() -> None:
    stranger = Wire(Keyring([OTHER_KEY]))
    with pytest.raises(AuthError):
        keyed().open(stranger.seal(b"x"), 0.0)
    sealed = bytearray(keyed(seed=1).seal(b"x"))
    sealed[1] ^= 0x80  # the nonce is authenticated too
    with pytest.raises(AuthError):
        keyed(seed=2).open(bytes(sealed), 0.0)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01" + b"\x00" * 27, b"\x02abc", b"\xff"])
def test_short_or_unknown_envelopes_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        keyed().open(data, 0.0)


def test_empty_plain_envelope_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        Wire(None).open(b"", 0.0)


def test_replay_within_the_window_is_refused() -> None:
    sender, receiver = keyed(seed=1), keyed(window_s=120.0, seed=2)
    sealed = sender.seal(b"x")
    assert receiver.open(sealed, 10.0) == b"x"
    with pytest.raises(ReplayError):
        receiver.open(sealed, 10.0)
    with pytest.raises(ReplayError):
        receiver.open(sealed, 130.0)  # exactly at the edge is still inside


def test_replay_after_the_window_is_accepted() -> None:
    """By design: a late replay carries stale incarnations, which SWIM ignores."""
    sender, receiver = keyed(seed=1), keyed(window_s=120.0, seed=2)
    sealed = sender.seal(b"x")
    receiver.open(sealed, 10.0)
    assert receiver.open(sealed, 130.001) == b"x"
    with pytest.raises(ReplayError):  # ...and it is remembered again from then on
        receiver.open(sealed, 131.0)


def test_unauthenticated_data_does_not_enter_the_replay_cache() -> None:
    receiver = keyed(max_entries=1, seed=2)
    sealed = keyed(seed=1).seal(b"x")
    receiver.open(sealed, 0.0)
    forged = Wire(Keyring([OTHER_KEY])).seal(b"y")
    with pytest.raises(AuthError):
        receiver.open(forged, 0.0)
    with pytest.raises(ReplayError):  # the forged packet did not evict the real nonce
        receiver.open(sealed, 0.0)


def test_replay_memory_is_bounded_by_evicting_the_oldest() -> None:
    sender, receiver = keyed(seed=1), keyed(max_entries=3, seed=2)
    sealed = [sender.seal(bytes([i])) for i in range(4)]
    for packet in sealed:
        receiver.open(packet, 0.0)
    assert receiver.open(sealed[0], 0.0) == b"\x00"  # evicted, so accepted again
    with pytest.raises(ReplayError):
        receiver.open(sealed[3], 0.0)


def test_frame_layout() -> None:
    wire = Wire(None)
    assert wire.frame(b"abc") == b"\x00\x00\x00\x04\x00abc"


def test_frames_split_across_feeds() -> None:
    sender = keyed(seed=1)
    payloads = [b"", b"a", b"b" * 1000, b"c" * 70_000]
    stream = b"".join(sender.frame(p) for p in payloads)
    reader = FrameReader(keyed(seed=2), max_frame_bytes=100_000)
    out: list[bytes] = []
    rng = random.Random(0)
    at = 0
    while at < len(stream):
        step = rng.randint(1, 7) if at < 64 else rng.randint(1, 9000)
        reader.feed(stream[at : at + step])
        at += step
        while (frame := reader.next_frame(now=1.0)) is not None:
            out.append(frame)
    assert out == payloads
    assert reader.next_frame(now=1.0) is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.lists(st.integers(1, 50), min_size=1))
def test_any_split_yields_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(Wire(None).frame(p) for p in payloads)
    reader = FrameReader(Wire(None), max_frame_bytes=1000)
    out: list[bytes] = []
    at = 0
    for step in itertools.cycle(cuts):
        if at >= len(stream):
            break
        reader.feed(stream[at : at + step])
        at += step
        while (frame := reader.next_frame(0.0)) is not None:
            out.append(frame)
    assert out == payloads


def test_oversize_declared_length_is_refused_before_buffering() -> None:
    reader = FrameReader(Wire(None), max_frame_bytes=1024)
    reader.feed(b"\xff\xff\xff\xff")  # declares 4 GiB; nothing else has arrived
    with pytest.raises(DecodeError, match="limit is 1024"):
        reader.next_frame(0.0)
    reader.feed(b"more")
    with pytest.raises(DecodeError):  # the stream is out of sync for good
        reader.next_frame(0.0)


def test_frame_at_the_limit_is_accepted() -> None:
    wire = Wire(None)
    reader = FrameReader(wire, max_frame_bytes=1 + 10)
    reader.feed(wire.frame(b"x" * 10))
    assert reader.next_frame(0.0) == b"x" * 10


def test_frame_reader_surfaces_open_errors() -> None:
    reader = FrameReader(keyed(seed=2), max_frame_bytes=1000)
    reader.feed(Wire(None).frame(b"x"))
    with pytest.raises(AuthError):
        reader.next_frame(0.0)
    frame = keyed(seed=1).frame(b"y")
    reader.feed(frame + frame)
    assert reader.next_frame(0.0) == b"y"
    with pytest.raises(ReplayError):
        reader.next_frame(0.0)
    reader.feed(b"\x00\x00\x00\x00")
    with pytest.raises(DecodeError):  # a zero-length frame has no envelope
        reader.next_frame(0.0)


# --- cluster labels (memberlist #246) -----------------------------------------------------------


def labelled(label: str, seed: int = 0, key: bytes = KEY) -> Wire:
    return Wire(Keyring([key]), nonce_source=random.Random(seed).randbytes, label=label)


def test_a_label_is_a_header_before_the_envelope_and_counted_in_the_overhead() -> None:
    sender, receiver = labelled("prod", 1), labelled("prod", 2)
    sealed = sender.seal(b"payload")
    assert sealed[:6] == b"\x02\x04prod" and sealed[6] == 0x01
    assert sender.overhead_bytes == 29 + 6
    assert len(sealed) == len(b"payload") + sender.overhead_bytes
    assert receiver.open(sealed, 0.0) == b"payload"
    plain = Wire(None, label="prod")
    assert (
        plain.seal(b"x") == b"\x02\x04prod\x00x" and plain.open(b"\x02\x04prod\x00x", 0.0) == b"x"
    )


def test_another_label_or_none_is_refused_before_decryption() -> None:
    prod, staging, unlabelled = labelled("prod", 1), labelled("staging", 2), keyed(seed=3)
    with pytest.raises(LabelError, match="'prod' is not ours \\('staging'\\)"):
        staging.open(prod.seal(b"x"), 0.0)
    with pytest.raises(LabelError, match="'none' is not ours \\('prod'\\)"):
        prod.open(unlabelled.seal(b"x"), 0.0)
    with pytest.raises(LabelError, match="'prod' is not ours \\('none'\\)"):
        unlabelled.open(prod.seal(b"x"), 0.0)


def test_the_label_is_authenticated_a_rewritten_header_fails() -> None:
    """An attacker on the path cannot move a packet to another label: the header is AAD."""
    prod, staging = labelled("prod", 1), labelled("stage", 2)
    sealed = prod.seal(b"x")
    rewritten = b"\x02\x05stage" + sealed[6:]
    with pytest.raises(AuthError):
        staging.open(rewritten, 0.0)
    stripped = sealed[6:]
    with pytest.raises(AuthError):
        keyed(seed=4).open(stripped, 0.0)


@pytest.mark.parametrize("data", [b"\x02", b"\x02\x00\x01", b"\x02\x09prod\x01"])
def test_truncated_or_empty_label_headers_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        labelled("prod").open(data, 0.0)


def test_frames_carry_the_label() -> None:
    prod, staging = labelled("prod", 1), labelled("staging", 2)
    reader = FrameReader(staging, max_frame_bytes=1 << 16)
    reader.feed(prod.frame(b"push/pull"))
    with pytest.raises(LabelError):
        reader.next_frame(0.0)


def test_a_label_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 255"):
        Wire(None, label="x" * 256)
