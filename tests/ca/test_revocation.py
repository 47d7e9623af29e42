"""Revocation records: codec, serial forms, checks by serial and by key, the replica's writes."""

from __future__ import annotations

import cbor2
import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from meshnode.ca.pem import cert_from_pem, serial_colon_hex
from meshnode.ca.revocation import (
    KIND,
    MalformedRevocation,
    Revocation,
    RevocationError,
    RevocationSet,
    decode_revocation,
    encode_revocation,
    expired_keys,
    parse_serial,
    revocation_of_cert,
    serial_key,
    spki_sha256,
)
from meshnode.ca.revocation_replica import RevocationReplica
from meshnode.store.state import LocalState
from tests.ca.conftest import NOW, Chain, issue_leaf

NOW_S = NOW.timestamp()


def _leaf(chain: Chain) -> x509.Certificate:
    return cert_from_pem(issue_leaf(chain.provider, chain.intermediate).cert_pem)


def _record(serial: int = 0x0A1B, key: bytes = b"\x01" * 32) -> Revocation:
    return Revocation(serial, key, NOW_S, NOW_S + 3600, "key leaked", "node-a")


@given(
    serial=st.integers(1, 2**160 - 1),
    key=st.sampled_from([b"", b"\x07" * 32]),
    reason=st.text(max_size=256),
    revoked_at_s=st.floats(0, 4e9),
)
def test_codec_round_trips(serial: int, key: bytes, reason: str, revoked_at_s: float) -> None:
    record = Revocation(serial, key, revoked_at_s, revoked_at_s + 1.5, reason, "n1")
    assert decode_revocation(record.key, encode_revocation(record)) == record


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"v": 2}, "format version"),
        ({"serial": "0a"}, "serial is not bytes"),
        ({"spki_sha256": b"short"}, "public key hash"),
        ({"revoked_at_s": float("nan")}, "revoked_at_s"),
        ({"revoked_at_s": True}, "revoked_at_s is not float"),
        ({"reason": "x" * 257}, "reason"),
        ({"by": ""}, "revoked_by"),
        ({"serial": b""}, "serial must be"),
    ],
)
def test_malformed_values_are_a_remote_error(value: dict[str, object], why: str) -> None:
    good = cbor2.loads(encode_revocation(_record()))
    with pytest.raises(MalformedRevocation, match=why):
        decode_revocation(serial_key(0x0A1B), cbor2.dumps({**good, **value}))


def test_a_value_under_another_serial_key_and_junk_are_refused() -> None:
    data = encode_revocation(_record(0x0A1B))
    with pytest.raises(MalformedRevocation, match="is not the serial"):
        decode_revocation("0a:1c", data)
    with pytest.raises(MalformedRevocation):
        decode_revocation("0a:1b", data + b"\x00")
    with pytest.raises(MalformedRevocation):
        decode_revocation("0a:1b", cbor2.dumps(cbor2.CBORTag(24, data)))


@pytest.mark.parametrize(
    ("text", "serial"),
    [("0a:1b:ff", 0x0A1BFF), ("0A1BFF", 0x0A1BFF), ("0x0a1bff", 0x0A1BFF), (" a:1b:ff ", 0xA1BFF)],
)
def test_serials_in_colon_hex_or_hex(text: str, serial: int) -> None:
    assert parse_serial(text) == serial


@pytest.mark.parametrize("text", ["", "0", "00:00", "zz", "0a::1b", "123:4", "ff" * 21])
def test_bad_serials_are_a_one_line_error(text: str) -> None:
    with pytest.raises(RevocationError):
        parse_serial(text)


def test_the_key_is_consuls_serial_number_form(chain: Chain) -> None:
    cert = _leaf(chain)
    assert serial_key(cert.serial_number) == serial_colon_hex(cert)
    assert parse_serial(serial_colon_hex(cert)) == cert.serial_number


def test_checks_by_serial_and_by_public_key(chain: Chain) -> None:
    cert = _leaf(chain)
    revoked = RevocationSet(
        [revocation_of_cert(cert, now_wall_s=NOW_S, reason="stolen", revoked_by="a")]
    )
    key = spki_sha256(cert)
    assert revoked.refusal(cert.serial_number, key) is not None
    # Another certificate for the same key (a re-issue): refused by the key.
    why = revoked.refusal(cert.serial_number + 1, key)
    assert why is not None and "key of serial" in why and "stolen" in why
    # Same serial, another key: refused by the serial.
    assert revoked.refusal(cert.serial_number, b"\x02" * 32) is not None
    assert revoked.refusal(cert.serial_number + 1, b"\x02" * 32) is None
    # A serial-only revocation never matches an unknown key by accident.
    serial_only = RevocationSet([_record(7, b"")])
    assert serial_only.refusal(8, b"") is None
    assert serial_only.refusal(7, b"\x03" * 32) is not None


def test_the_set_is_bounded_and_keeps_the_first_revoked() -> None:
    records = [Revocation(s, b"", NOW_S + s, NOW_S + 3600, "", "a") for s in range(10, 0, -1)]
    revoked = RevocationSet(records, max_entries=4)
    assert len(revoked) == 4 and revoked.dropped_total == 6
    assert {r.serial for r in revoked.records} == {1, 2, 3, 4}


def test_entries_expire_after_not_after_plus_margin() -> None:
    record = _record()
    assert expired_keys([record], record.not_after_s + 3599) == []
    assert expired_keys([record], record.not_after_s + 3601) == [record.key]


def test_replica_revoke_complete_and_collect(chain: Chain) -> None:
    clock = [NOW_S]
    state = LocalState("node-a", wall_clock=lambda: clock[0])
    replica = RevocationReplica(state, wall_clock=lambda: clock[0], max_entries=2)
    cert = _leaf(chain)
    key = spki_sha256(cert)
    before = replica.generation
    # Revoked by serial alone: the key is not known yet.
    record = replica.revoke(
        cert.serial_number, cert=None, reason="leaked", unknown_not_after_s=NOW_S + 9e5
    )
    assert record.spki_sha256 == b"" and record.revoked_by == "node-a"
    assert replica.generation > before
    assert replica.refusal(cert.serial_number, key) is not None
    assert replica.refusal(cert.serial_number + 1, key) is None
    # The owner completes it: now a re-issue of the same key is refused too.
    assert replica.complete(cert) is True
    assert replica.complete(cert) is False
    assert replica.refusal(cert.serial_number + 1, key) is not None
    stored = replica.current().match(cert.serial_number, b"")
    assert stored is not None and stored.reason == "leaked"
    assert stored.not_after_s == cert.not_valid_after_utc.timestamp()
    # A second revocation keeps what the first knew.
    again = replica.revoke(
        cert.serial_number, cert=None, reason="other", unknown_not_after_s=NOW_S + 1
    )
    assert again.spki_sha256 == key and again.reason == "leaked"
    # The bound refuses a new serial, not an update of a known one.
    replica.revoke(5, cert=None, reason="", unknown_not_after_s=NOW_S + 10)
    with pytest.raises(RevocationError, match="full"):
        replica.revoke(6, cert=None, reason="", unknown_not_after_s=NOW_S + 10)
    with pytest.raises(RevocationError, match="serial is"):
        replica.revoke(9, cert=cert, reason="", unknown_not_after_s=NOW_S + 10)
    # Collection: serial 5 expired (plus the margin), the leaf not yet.
    clock[0] = NOW_S + 10 + 3601
    assert replica.collect() == 1
    assert [e.key for e in state.store.items(KIND)] == [serial_key(cert.serial_number)]
    assert replica.refusal(5, b"") is None and len(replica.current()) == 1


def test_a_malformed_remote_entry_is_skipped_and_counted() -> None:
    state = LocalState("node-a")
    replica = RevocationReplica(state)
    state.put(KIND, "0a:1b", b"\xff\xff")
    state.put(KIND, "07", encode_revocation(_record(7)))
    assert replica.malformed_total == 1  # decoded once, when it changed
    assert len(replica.current()) == 1
