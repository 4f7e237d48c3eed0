"""The cache's SQLite file: opening it, its append-only migrations, transactions, and telling corruption from other failures."""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

_SQL_CHUNK = 500  # ids per IN (...) list, well under SQLite's variable limit
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def connect(path: Path) -> sqlite3.Connection:
    """The cache's connection: autocommit (transactions are explicit), WAL, fsync on every commit."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # an acknowledged put survives power loss, not just kill -9
    return db


# --- schema: append-only named migrations (never edit or reorder one that has shipped) ------------

def _m001_entries(db: sqlite3.Connection) -> None:
    # AUTOINCREMENT: a rowid is never reused, so a stale FAISS id can never point at a newer row.
    db.execute("""
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            model_version TEXT NOT NULL,
            params_key TEXT NOT NULL,
            prompt TEXT NOT NULL,
            answer TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            embedding BLOB NOT NULL,
            created_at REAL NOT NULL,
            last_hit_at REAL,
            hits INTEGER NOT NULL DEFAULT 0
        )""")
    db.execute("CREATE INDEX entries_by_namespace ON entries(namespace)")
    db.execute("CREATE INDEX entries_by_created ON entries(created_at)")
    db.execute("CREATE INDEX entries_by_model ON entries(model_version)")
    db.execute("CREATE INDEX entries_by_lru ON entries(coalesce(last_hit_at, created_at))")


def _m002_settings(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


_MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("m001_entries", _m001_entries),
    ("m002_settings", _m002_settings),
)


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded in the `migrations` table; return their names."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = {row[0] for row in db.execute("SELECT name FROM migrations")}
    done = []
    for name, step in _MIGRATIONS:
        if name in applied:
            continue
        with transaction(db):
            step(db)
            db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        done.append(name)
    return done


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (disk full) may leave the transaction open; every later BEGIN
        # would then fail too, long after the space is back.
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def chunks(items: Sequence[Any], size: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    """`items` in slices of `size`: one IN (...) list or one embedding batch each."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- corruption -------------------------------------------------------------------------------------

class CorruptDatabase(Exception):
    """Integrity check failed; carries the first problem reported."""


def quick_check(db: sqlite3.Connection) -> None:
    """Raise CorruptDatabase unless SQLite's quick_check finds the file sound."""
    problem = db.execute("PRAGMA quick_check").fetchone()[0]
    if problem != "ok":
        raise CorruptDatabase(problem)


def is_corruption(exc: BaseException) -> bool:
    """Whether a database error means the file itself is damaged (and so may be moved aside)."""
    # Locked or unreadable files are not corrupt: moving them aside would throw a good cache away.
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def database_token(db: sqlite3.Connection) -> str:
    """A random token made when the file is first opened and kept in its settings: what is saved beside a
    database (the IVF layouts) names it, so that a file deleted and made anew is not mistaken for the old."""
    row = db.execute("SELECT value FROM settings WHERE key = 'index_token'").fetchone()
    if row is not None:
        return str(row[0])
    token = uuid.uuid4().hex
    with transaction(db):
        db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES ('index_token', ?)", (token,))
    return str(db.execute("SELECT value FROM settings WHERE key = 'index_token'").fetchone()[0])
