"""The SQLite file shrinks after deletes, a bounded slice per call, and old files convert."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from meshnode.gossip.store import Entry, Version
from meshnode.store.persist import DB_FILENAME, RECLAIM_PAGES_PER_CALL, Persistence

_VALUE_BYTES = 100_000


def _entries(count: int) -> list[Entry]:
    return [
        Entry("kv", f"k{i}", os.urandom(_VALUE_BYTES), Version(i + 1, "n1")) for i in range(count)
    ]


def _file_bytes(data_dir: Path) -> int:
    return (data_dir / DB_FILENAME).stat().st_size


def test_the_file_shrinks_after_deletes_a_bounded_slice_at_a_time(tmp_path: Path) -> None:
    with Persistence.open(tmp_path) as persist:
        persist.save_store(_entries(100), [], 100)
    full_bytes = _file_bytes(tmp_path)
    assert full_bytes > 9_000_000
    with Persistence.open(tmp_path) as persist:
        persist.save_store([], [("kv", f"k{i}") for i in range(95)], 100)
        freed_before = persist.free_pages()
        assert freed_before > RECLAIM_PAGES_PER_CALL  # the write handed back one slice only
        calls = 0
        while persist.reclaim() > 0:
            calls += 1
            assert calls < 100
        entries, _ = persist.load_store()
        assert sorted(e.key for e in entries) == [f"k{i}" for i in range(95, 100)]
    assert _file_bytes(tmp_path) < full_bytes // 10


def test_a_file_made_without_auto_vacuum_is_converted_once_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    with Persistence.open(tmp_path) as persist:
        persist.save_store(_entries(3), [], 3)
    db = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=0")
    db.execute("VACUUM")  # as every data dir made before this change
    assert db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    db.close()
    with Persistence.open(tmp_path) as persist:
        entries, clock = persist.load_store()
        assert len(entries) == 3 and clock == 3
        persist.save_store([], [("kv", "k0"), ("kv", "k1")], 3)
        assert persist.reclaim() == 0
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    db.close()
    assert _file_bytes(tmp_path) < 2 * _VALUE_BYTES
