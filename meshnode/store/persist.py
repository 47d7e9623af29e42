"""The agent's durable state: SQLite (stdlib sqlite3) in ``<data_dir>/meshnode.db``.

- WAL journal with ``synchronous=FULL``: a write that returned is on disk, even
  if the process is killed -9 or the host loses power right after.
- The schema lives in `_MIGRATIONS`, applied in order; ``schema_version`` says
  how many have run, so an old data dir is upgraded in place at open.
- Calls are synchronous and sub-millisecond (tiny rows); the agent calls them
  directly from trio, without threads.
- The file shrinks after deletes: ``auto_vacuum=INCREMENTAL`` keeps freed
  pages on a list, and each store write hands back at most
  `RECLAIM_PAGES_PER_CALL` of them (`reclaim`), so no call stalls the event
  loop on a big delete; the replicator calls `reclaim` again until none are
  left. A database made before this is converted by one VACUUM at open.
  ``journal_size_limit`` truncates the WAL after checkpoints, so it shrinks too.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from ..gossip.store import Entry, Version
from .datadir import create_private_file

__all__ = [
    "DB_FILENAME",
    "KnownMember",
    "Persistence",
    "PersistenceError",
    "StoredKeyring",
    "has_stored_keyring",
]

DB_FILENAME = "meshnode.db"
# 512 pages of 4 KiB = 2 MiB handed back per call: ~5-15 ms with its fsync.
RECLAIM_PAGES_PER_CALL = 512
# The WAL is cut back to this after a checkpoint (it would otherwise keep its
# largest size forever).
_WAL_LIMIT_BYTES = 4 * 1024 * 1024
_AUTO_VACUUM_INCREMENTAL = 2

# One entry per schema version; never edit a released entry, append a new one.
_MIGRATIONS: tuple[str, ...] = (
    # 1: identity, keyring, known peers and a generic key/value table.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE keyring (
        key BLOB PRIMARY KEY,
        position INTEGER NOT NULL,
        is_primary INTEGER NOT NULL CHECK (is_primary IN (0, 1))
    );
    CREATE TABLE members (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        port INTEGER NOT NULL
    );
    """,
    # 2: the replicated store's entries (gossip/store.py); its Lamport clock is in meta.
    """
    CREATE TABLE entries (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        lamport TEXT NOT NULL,  -- a uint64 as decimal: SQLite integers are signed
        node TEXT NOT NULL,
        tombstone INTEGER NOT NULL CHECK (tombstone IN (0, 1)),
        tombstone_since REAL,
        PRIMARY KEY (kind, key)
    );
    """,
)

_NODE_ID_KEY = "node_id"
_STORE_CLOCK_KEY = "store_clock"


class PersistenceError(Exception):
    """The database cannot be used (unreadable, newer schema, corrupt)."""


class KnownMember(NamedTuple):
    """A peer to rejoin after a restart."""

    name: str
    host: str
    port: int


class StoredKeyring(NamedTuple):
    """The gossip keys in their install order, and the one used to encrypt."""

    keys: tuple[bytes, ...]
    primary: bytes


class Persistence:
    """One open database; use `Persistence.open(data_dir)` and `close()` when done."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Persistence:
        """Open the database at `path`, creating its directory and schema if needed.

        `path` is the database file (``data_dir / DB_FILENAME``); an existing
        directory is taken as the data dir and its ``meshnode.db`` is opened.
        """
        path = Path(path)
        if path.is_dir():
            path = path / DB_FILENAME
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            create_private_file(path)  # SQLite's -wal and -shm copy its mode
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (`_transaction`).
            db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise PersistenceError(f"cannot open {path}: {exc}") from None
        store = cls(db, path)
        try:
            store._use_incremental_vacuum()
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            store._migrate()
        except sqlite3.Error as exc:
            db.close()
            raise PersistenceError(f"cannot use {path}: {exc}") from None
        except PersistenceError:
            db.close()
            raise
        return store

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Persistence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two agents pointed at the
        # same data dir fail fast instead of interleaving.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _use_incremental_vacuum(self) -> None:
        """Turn on incremental auto-vacuum; an existing file needs one VACUUM for it."""
        (mode,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if int(mode) == _AUTO_VACUUM_INCREMENTAL:
            return
        self._db.execute(f"PRAGMA auto_vacuum={_AUTO_VACUUM_INCREMENTAL}")
        has_tables = self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
        if has_tables is not None:
            self._db.execute("VACUUM")  # once: later opens see the mode already set

    def free_pages(self) -> int:
        """Pages freed by deletes and not yet handed back to the file system."""
        (count,) = self._db.execute("PRAGMA freelist_count").fetchone()
        return int(count)

    def reclaim(self, max_pages: int = RECLAIM_PAGES_PER_CALL) -> int:
        """Shrink the file by up to `max_pages` free pages; how many remain free (-1: failed)."""
        try:
            if self.free_pages() == 0:
                return 0
            # executescript steps the pragma to the end; execute() frees one page only.
            self._db.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
            return self.free_pages()
        except sqlite3.Error:
            return -1  # best effort: the data is safe, the file stays larger for now

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(_MIGRATIONS):
                raise PersistenceError(
                    f"{self.path} has schema version {version}, newer than this meshnode"
                    f" understands ({len(_MIGRATIONS)}); upgrade meshnode"
                )
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (len(_MIGRATIONS),))
            else:
                db.execute("UPDATE schema_version SET version = ?", (len(_MIGRATIONS),))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    # -- meta ------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- identity --------------------------------------------------------

    def node_id(self) -> str:
        """This node's UUID: created on first call, the same forever after."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (_NODE_ID_KEY, str(uuid.uuid4())),
            )
            row = db.execute("SELECT value FROM meta WHERE key = ?", (_NODE_ID_KEY,)).fetchone()
        return str(row[0])

    # -- keyring ---------------------------------------------------------

    def save_keyring(self, keys: Iterable[bytes], primary: bytes) -> None:
        """Replace the stored keyring; `primary` must be one of `keys`."""
        ordered = list(dict.fromkeys(bytes(k) for k in keys))
        if bytes(primary) not in ordered:
            raise ValueError("the primary key must be one of the keys")
        with self._transaction() as db:
            db.execute("DELETE FROM keyring")
            db.executemany(
                "INSERT INTO keyring (key, position, is_primary) VALUES (?, ?, ?)",
                [(k, i, int(k == primary)) for i, k in enumerate(ordered)],
            )

    def load_keyring(self) -> StoredKeyring | None:
        """The stored keyring, or None when none was ever saved."""
        rows = self._db.execute("SELECT key, is_primary FROM keyring ORDER BY position").fetchall()
        if not rows:
            return None
        primary = next((bytes(k) for k, p in rows if p), None)
        if primary is None:
            raise PersistenceError(f"{self.path}: the stored keyring has no primary key")
        return StoredKeyring(keys=tuple(bytes(k) for k, _ in rows), primary=primary)

    # -- known members ---------------------------------------------------

    def save_members(self, members: Iterable[tuple[str, str, int]]) -> None:
        """Replace the set of known peers (name, host, port)."""
        rows = {name: (name, host, int(port)) for name, host, port in members}
        with self._transaction() as db:
            db.execute("DELETE FROM members")
            db.executemany("INSERT INTO members (name, host, port) VALUES (?, ?, ?)", rows.values())

    def load_members(self) -> list[KnownMember]:
        rows = self._db.execute("SELECT name, host, port FROM members ORDER BY name").fetchall()
        return [KnownMember(str(n), str(h), int(p)) for n, h, p in rows]

    # -- replicated store ------------------------------------------------

    def save_store(
        self,
        upserts: Iterable[Entry],
        deletes: Iterable[tuple[str, str]],
        clock: int,
    ) -> None:
        """Write store rows and the Lamport clock in ONE transaction (durable on return).

        Lamport times (rows and clock) are stored as decimal text: they are
        uint64, SQLite integers are signed 64-bit.
        """
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO entries (kind, key, value, lamport, node, tombstone, tombstone_since)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value,"
                " lamport = excluded.lamport, node = excluded.node,"
                " tombstone = excluded.tombstone, tombstone_since = excluded.tombstone_since",
                [
                    (
                        e.kind,
                        e.key,
                        e.value,
                        str(e.version.lamport),
                        e.version.node,
                        int(e.tombstone),
                        e.tombstone_since_s,
                    )
                    for e in upserts
                ],
            )
            db.executemany("DELETE FROM entries WHERE kind = ? AND key = ?", list(deletes))
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_STORE_CLOCK_KEY, str(clock)),
            )
        self.reclaim()

    def load_store(self) -> tuple[list[Entry], int]:
        """Every stored entry (ordered by version, so indexes follow write order) and the clock."""
        rows = self._db.execute(
            "SELECT kind, key, value, lamport, node, tombstone, tombstone_since FROM entries"
        ).fetchall()
        try:
            entries = [
                Entry(
                    str(kind),
                    str(key),
                    bytes(value),
                    Version(int(lamport), str(node)),
                    bool(tomb),
                    None if since is None else float(since),
                )
                for kind, key, value, lamport, node, tomb, since in rows
            ]
        except (TypeError, ValueError) as exc:
            raise PersistenceError(f"{self.path}: a stored store entry is corrupt: {exc}") from None
        entries.sort(key=lambda e: e.version)
        clock = self.get_meta(_STORE_CLOCK_KEY)
        return entries, int(clock) if clock is not None else 0


def has_stored_keyring(data_dir: Path) -> bool:
    """True when `data_dir` holds a database with a keyring (read only, never creates)."""
    path = Path(data_dir) / DB_FILENAME
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        return db.execute("SELECT 1 FROM keyring WHERE is_primary = 1").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        db.close()
