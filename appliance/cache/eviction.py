"""Which stored entries go: those expired past the TTL, the least recently used past `max_entries`; and deleting them.

Plain SQL on the caller's connection, inside the caller's transaction. The (id, namespace) pairs returned
tell the caller what to drop from FAISS and from its pending hit counts.
"""

from __future__ import annotations

import sqlite3

from .schema import chunks


def expired(db: sqlite3.Connection, cutoff: float) -> list[tuple[int, str]]:
    """The entries created before `cutoff`, as (id, namespace)."""
    rows = db.execute("SELECT id, namespace FROM entries WHERE created_at < ?", (cutoff,)).fetchall()
    return [(int(r[0]), r[1]) for r in rows]


def least_recently_used(db: sqlite3.Connection, excess: int, below_id: int) -> list[tuple[int, str]]:
    """The `excess` least recently used entries with ids below `below_id` (the new ones), as (id, namespace)."""
    if excess <= 0:
        return []
    rows = db.execute(
        "SELECT id, namespace FROM entries WHERE id < ? ORDER BY coalesce(last_hit_at, created_at), id "
        "LIMIT ?", (below_id, excess)).fetchall()
    return [(int(r[0]), r[1]) for r in rows]


def delete_ids(db: sqlite3.Connection, ids: list[int]) -> None:
    """Delete entries by id, a bounded IN (...) list at a time."""
    for chunk in chunks(ids):
        db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk)
