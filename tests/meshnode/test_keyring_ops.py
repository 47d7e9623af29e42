"""The keyring query protocol: round trips, hostile payloads, the tally."""

from __future__ import annotations

import cbor2
import pytest

from meshnode.agent import keyring_ops as ko
from meshnode.gossip.keyring import Keyring

K1, K2 = bytes(32), bytes(range(32))


def test_query_and_reply_round_trip() -> None:
    q = ko.KeyringQuery(b"q" * 16, "install", K2, "n1", "127.0.0.1", 7946)
    assert ko.decode_query(q.encode()) == q
    r = ko.KeyringReply(b"q" * 16, "n2", "", (K1, K2), K1)
    assert ko.decode_reply(r.encode()) == r


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff",  # not CBOR
        cbor2.dumps({"a": 1}),  # not an array
        cbor2.dumps([b"q" * 16, "install"]),  # too short
        cbor2.dumps([b"q" * 15, "install", K1, "n1", "127.0.0.1", 7946]),  # short id
        cbor2.dumps([b"q" * 16, "format-disk", K1, "n1", "127.0.0.1", 7946]),  # unknown op
        cbor2.dumps([b"q" * 16, "use", K1, "n1", "127.0.0.1", 70000]),  # bad port
        cbor2.dumps([b"q" * 16, "use", K1, "n1", "127.0.0.1", True]),  # bool is not a port
    ],
)
def test_malformed_queries_are_typed_errors(body: bytes) -> None:
    with pytest.raises(ko.KeyringQueryError):
        ko.decode_query(bytes([ko.CHANNEL_KEYRING_QUERY]) + body)


def test_malformed_reply_is_a_typed_error() -> None:
    bad = cbor2.dumps([b"q" * 16, "n2", "", ["not-bytes"], K1])
    with pytest.raises(ko.KeyringQueryError):
        ko.decode_reply(bytes([ko.CHANNEL_KEYRING_REPLY]) + bad)


def test_apply_operation_reports_refusals_as_text() -> None:
    ring = Keyring([K1])
    assert ko.apply_operation(ring, "install", K2) == ""
    assert ko.apply_operation(ring, "use", K2) == ""
    assert ring.primary_key == K2
    assert ko.apply_operation(ring, "remove", K2) != ""  # the primary cannot go
    assert ko.apply_operation(ring, "remove", K1) == ""
    assert ring.keys == (K2,)


def test_seen_queries_apply_once_and_stay_bounded() -> None:
    seen = ko.SeenQueries(max_entries=3)
    assert seen.first_time(b"a") and not seen.first_time(b"a")
    for qid in (b"b", b"c", b"d"):
        seen.first_time(qid)
    assert seen.first_time(b"a")  # evicted, so bounded memory


def test_tally_counts_keys_and_errors() -> None:
    t = ko.Tally()
    t.add(ko.KeyringReply(b"q", "n1", "", (K1, K2), K2))
    t.add(ko.KeyringReply(b"q", "n2", "key not installed", (K1,), K1))
    counts = t.keys_count()
    assert sorted(counts.values()) == [1, 2]
    assert t.errors() == {"n2": "key not installed"}
