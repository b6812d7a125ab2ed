"""SQLite persistence of the emulator: the schema and one-transaction-per-operation plumbing.

It holds no KMS rule (those are in models.py) and never decides what may be stored: the engine
chooses whether private material is written at all.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    usage TEXT NOT NULL,
    origin TEXT NOT NULL,
    protection TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    description TEXT NOT NULL,
    created INTEGER NOT NULL,
    state TEXT NOT NULL,
    has_material INTEGER NOT NULL DEFAULT 0,
    material_expire INTEGER,
    delete_date INTEGER,
    deletion_protection INTEGER NOT NULL DEFAULT 0,
    deletion_protection_description TEXT NOT NULL DEFAULT '',
    version_id TEXT NOT NULL,
    public_key BLOB,
    fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS keys_delete_date ON keys (delete_date);
CREATE INDEX IF NOT EXISTS keys_material_expire ON keys (material_expire);
CREATE TABLE IF NOT EXISTS private_material (key_id TEXT PRIMARY KEY, pkcs8 BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alias_name TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS aliases_key ON aliases (key_id);
CREATE TABLE IF NOT EXISTS tags (
    key_id TEXT NOT NULL,
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
);
CREATE TABLE IF NOT EXISTS import_tokens (
    token_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    wrapping_spec TEXT NOT NULL,
    wrapping_algorithm TEXT NOT NULL,
    wrapping_private BLOB NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS import_tokens_expires ON import_tokens (expires);
CREATE TABLE IF NOT EXISTS nonces (nonce_hash TEXT PRIMARY KEY, expires INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires);
"""


def create_owner_only(path: str) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite would create it 0644 less the
    umask, and gives its journal the database's mode). An existing file is left as it is."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        return  # it exists, or cannot be created: SQLite opens it or says why, as it would have
    try:
        os.fchmod(fd, 0o600)  # the umask can only narrow the mode; this makes it exact
    finally:
        os.close(fd)


#: Statements that can leave old copies of private material behind (delete, replace, update).
_TOUCHES_MATERIAL = re.compile(
    r"\s*(DELETE\s+FROM|INSERT\s+OR\s+REPLACE\s+INTO|REPLACE\s+INTO|UPDATE)\s+private_material\b", re.I
)


class NotAStateFile(ValueError):
    """An SQLite database of another program: refused before anything is written to it."""


def check_ours(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database that has tables but no schema version of ours, or another version; an
    empty one (a new or zero-byte file) is ours to set up. Reads only."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return
    if "meta" not in tables:
        raise NotAStateFile(f"{path}: not an emulator state file")
    found = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    if found is None:
        raise NotAStateFile(f"{path}: not an emulator state file")
    if found[0] != SCHEMA_VERSION:
        raise ValueError(f"{path}: emulator schema version {found[0]}, expected {SCHEMA_VERSION}")


def _read_only_copy(path: str) -> sqlite3.Connection:
    """An in-memory copy of the database at `path`, read with `mode=ro`, and `immutable=1` unless a
    journal holds transactions not yet in the file: then SQLite must read it, through its -shm file."""
    journals = (path + "-wal", path + "-journal")
    pending = any(os.path.exists(j) and os.path.getsize(j) > 0 for j in journals)
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro" + ("" if pending else "&immutable=1")
    source = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        check_ours(source, path)
        copy = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        source.backup(copy)
        return copy
    finally:
        source.close()


@dataclass
class Transaction:
    """An open transaction; `after_commit` callbacks run only once the commit succeeded (in-memory
    state that must change together with the database, never without it)."""

    conn: sqlite3.Connection
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    #: Set when a statement removed or replaced private material: its old pages must not linger.
    removed_material: bool = False

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        cursor = self.conn.execute(sql, params)
        if cursor.rowcount > 0 and _TOUCHES_MATERIAL.match(sql):
            self.removed_material = True
        return cursor

    def one(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, params).fetchall())


class Store:
    """One SQLite connection behind one lock: every operation is one serialised transaction."""

    def __init__(self, path: str | None, *, read_only: bool = False) -> None:
        """`read_only`: copy the file into memory without writing a byte to it or beside it; the
        engine may then change the copy (time's lazy effects), which is dropped on close."""
        if read_only and path:
            self._conn = _read_only_copy(path)
            path = None
        else:
            if path:
                create_owner_only(path)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction is one operation.
            self._conn = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
        try:
            if path:
                # Before any PRAGMA or CREATE: those would change another program's database.
                check_ours(self._conn, path)
            self._setup(path)
        except BaseException:
            # A file that is not our database (or not a database at all) must not leak the connection.
            self._conn.close()
            raise

    def _setup(self, path: str | None) -> None:
        self._conn.row_factory = sqlite3.Row
        # Deleted rows (material of a deleted or expired key) are overwritten, not left in free pages.
        self._conn.execute("PRAGMA secure_delete = ON")
        self._wal = bool(path)
        if path:
            # WAL with synchronous=NORMAL keeps every transaction atomic across a crash (a power cut
            # may lose the last few, never half of one) and spares an fsync per write. The log keeps
            # old pages until a checkpoint: a transaction that removed material is checkpointed and
            # the log truncated at once (see `transaction`). SQLite gives the log the database's mode.
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.Lock()
        with self.transaction() as tx:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            found = tx.one("SELECT value FROM meta WHERE name = 'schema_version'")
        if found is None or found["value"] != SCHEMA_VERSION:
            version = None if found is None else found["value"]
            raise ValueError(f"{path}: emulator schema version {version}, expected {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            tx = Transaction(self._conn)
            # IMMEDIATE: take the write lock up front so a second process on the same file waits
            # instead of failing half-way through an operation.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            if tx.removed_material and self._wal:
                # secure_delete zeroes the rows in the database; the log still holds the pages as
                # they were until it is checkpointed and truncated.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            for callback in tx.after_commit:
                callback()

    def use_nonce(self, nonce: str, now: int, expires: int) -> bool:
        """Record a request's signature nonce until `expires` (unix seconds); False when it is
        recorded already and not yet expired. Expired ones are purged first, so the table holds only
        the nonces of the last few minutes. Stored as SHA-256 hashes: a nonce may be long."""
        digest = hashlib.sha256(nonce.encode("utf-8")).hexdigest()
        with self.transaction() as tx:
            tx.execute("DELETE FROM nonces WHERE expires <= ?", (now,))
            if tx.one("SELECT 1 FROM nonces WHERE nonce_hash = ?", (digest,)) is not None:
                return False
            tx.execute("INSERT INTO nonces (nonce_hash, expires) VALUES (?, ?)", (digest, expires))
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()
