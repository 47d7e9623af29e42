"""The sans-IO anti-entropy round: two stores end identical, through real sealed step bytes."""

from __future__ import annotations

import random

import pytest

from meshnode.gossip.anti_entropy import (
    Initiator,
    Responder,
    StepReader,
    UnexpectedStoreMessage,
    encode_step,
)
from meshnode.gossip.keyring import Keyring
from meshnode.gossip.store import Store
from meshnode.gossip.store_codec import StoreMessage, encode_digest, encode_want
from meshnode.gossip.wire import Wire

SEED = 20261122


def _carry(wire: Wire, messages: list[bytes], *, pieces: int = 3) -> list[StoreMessage]:
    """Move one step through a byte stream cut into pieces, as TCP may deliver it."""
    data = encode_step(wire, messages)
    reader = StepReader(wire)
    cut = sorted(random.Random(SEED).sample(range(1, len(data)), min(pieces, len(data) - 1)))
    step = None
    for a, b in zip([0, *cut], [*cut, len(data)], strict=True):
        assert step is None, "a step is whole only after its last byte"
        reader.feed(data[a:b])
        step = reader.next_step(0.0)
    assert step is not None
    return step


def _round(a: Store, b: Store, wire: Wire) -> int:
    """One full round, A initiating; returns how many steps crossed the stream."""
    ini, resp = Initiator(a), Responder(b)
    bv = resp.on_digest(_carry(wire, ini.opening()))
    push = ini.on_bucket_versions(_carry(wire, bv))
    for entry in resp.on_push(_carry(wire, push)):
        b.merge(entry)
    answer = resp.answer()
    assert (answer is not None) == ini.expects_entries
    if answer is None:
        return 3
    for entry in ini.on_entries(_carry(wire, answer)):
        a.merge(entry)
    return 4


@pytest.mark.parametrize("encrypt", [False, True])
def test_one_round_makes_replicas_identical(encrypt: bool) -> None:
    keyring = Keyring([bytes(range(32))]) if encrypt else None
    wire = Wire(keyring, nonce_source=random.Random(SEED).randbytes)
    a, b = Store("a"), Store("b")
    for i in range(40):
        a.put("kv", f"a/{i}", b"x" * i)
        b.put("kv", f"b/{i}", b"y" * i)
    a.put("kv", "both", b"from a")
    b.put("kv", "both", b"from b")
    b.delete("kv", "a/3", 1000.0)  # B deletes a key it never had: the tombstone must win
    assert _round(a, b, wire) == 4
    assert a.digest() == b.digest()
    assert a.get("kv", "a/3") is None and b.get("kv", "a/3") is None
    # In step: the next round finds nothing to send beyond the (empty) versions.
    assert _round(a, b, wire) == 3


def test_one_sided_difference_needs_no_fourth_step() -> None:
    wire = Wire(None)
    a, b = Store("a"), Store("b")
    a.put("intention", "web->db", b"allow")
    assert _round(a, b, wire) == 3
    assert b.get("intention", "web->db") is not None
    assert a.digest() == b.digest()


def test_wrong_messages_are_refused() -> None:
    wire = Wire(None)
    store = Store("a")
    with pytest.raises(UnexpectedStoreMessage):
        Responder(store).on_digest(_carry(wire, encode_want([("kv", "k")])))
    with pytest.raises(UnexpectedStoreMessage):
        Initiator(store).on_bucket_versions(_carry(wire, [encode_digest(store.digest())]))
    with pytest.raises(UnexpectedStoreMessage):
        Initiator(store).on_entries([])
    reader = StepReader(wire, max_step_frames=1)
    reader.feed(encode_step(wire, [b"", b""]))
    with pytest.raises(UnexpectedStoreMessage):
        reader.next_step(0.0)
