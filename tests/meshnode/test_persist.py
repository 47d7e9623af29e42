"""Persistence: identity, keyring and members survive reopen and kill -9."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshnode.gossip.store import Entry, Version
from meshnode.store.persist import (
    DB_FILENAME,
    KnownMember,
    Persistence,
    PersistenceError,
    StoredKeyring,
    has_stored_keyring,
)

K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 32


def test_node_id_is_created_once_and_stable(tmp_path: Path) -> None:
    with Persistence.open(tmp_path) as store:
        first = store.node_id()
        assert store.node_id() == first
    with Persistence.open(tmp_path / DB_FILENAME) as store:
        assert store.node_id() == first
    assert len(first) == 36


def test_creates_the_data_dir_in_wal_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    with Persistence.open(data_dir / DB_FILENAME) as store:
        assert store.schema_version() == 2
    assert (data_dir / DB_FILENAME).is_file()
    db = sqlite3.connect(data_dir / DB_FILENAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_keyring_round_trip(tmp_path: Path) -> None:
    with Persistence.open(tmp_path) as store:
        assert store.load_keyring() is None
        store.save_keyring([K1, K2], K2)
        assert store.load_keyring() == StoredKeyring((K1, K2), K2)
        store.save_keyring([K2, K3, K2], K3)
    with Persistence.open(tmp_path) as store:
        keys, primary = store.load_keyring() or ((), b"")
        assert (keys, primary) == ((K2, K3), K3)
        with pytest.raises(ValueError, match="primary key must be one of the keys"):
            store.save_keyring([K1], K2)
    assert has_stored_keyring(tmp_path)
    assert not has_stored_keyring(tmp_path / "elsewhere")


def test_members_round_trip(tmp_path: Path) -> None:
    with Persistence.open(tmp_path) as store:
        store.save_members([("b", "10.0.0.2", 7946), ("a", "::1", 7000)])
    with Persistence.open(tmp_path) as store:
        assert store.load_members() == [
            KnownMember("a", "::1", 7000),
            KnownMember("b", "10.0.0.2", 7946),
        ]
        store.save_members([])
        assert store.load_members() == []


def test_meta_round_trip(tmp_path: Path) -> None:
    with Persistence.open(tmp_path) as store:
        assert store.get_meta("x") is None
        store.set_meta("x", "1")
        store.set_meta("x", "2")
    with Persistence.open(tmp_path) as store:
        assert store.get_meta("x") == "2"


def test_second_connection_sees_committed_writes(tmp_path: Path) -> None:
    writer = Persistence.open(tmp_path)
    reader = Persistence.open(tmp_path)
    try:
        node_id = writer.node_id()
        writer.save_keyring([K1], K1)
        assert reader.node_id() == node_id
        assert reader.load_keyring() == StoredKeyring((K1,), K1)
    finally:
        writer.close()
        reader.close()


def test_writes_survive_kill_9(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from meshnode.store.persist import Persistence
        store = Persistence.open(Path({str(tmp_path)!r}))
        print(store.node_id(), flush=True)
        store.save_keyring([b"1" * 32, b"2" * 32], b"2" * 32)
        store.save_members([("peer", "10.0.0.9", 7946)])
        print("saved", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        node_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "saved"
        proc.kill()  # SIGKILL: no close(), no checkpoint
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with Persistence.open(tmp_path) as store:
        assert store.node_id() == node_id
        assert store.load_keyring() == StoredKeyring((K1, K2), K2)
        assert store.load_members() == [KnownMember("peer", "10.0.0.9", 7946)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Persistence.open(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(PersistenceError, match="schema version 99, newer than this meshnode"):
        Persistence.open(tmp_path)


def test_garbage_file_is_a_persistence_error(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PersistenceError, match="cannot use"):
        Persistence.open(tmp_path)
    assert not has_stored_keyring(tmp_path)


def test_store_rows_and_clock_round_trip(tmp_path: Path) -> None:
    big = 2**64 - 1  # a uint64 that SQLite's signed integers cannot hold
    live = Entry("kv", "a", b"\x00bytes", Version(big, "n1"))
    dead = Entry("kv", "b", b"", Version(3, "n2"), True, 1_700_000_000.5)
    with Persistence.open(tmp_path) as store:
        assert store.load_store() == ([], 0)
        store.save_store([live, dead], [], big)
        store.save_store([], [("kv", "nothing")], big)
    with Persistence.open(tmp_path) as store:
        assert store.load_store() == ([dead, live], big)
        store.save_store([], [("kv", "b")], 7)
        assert store.load_store() == ([live], 7)
