"""Recovering from a corrupt cache file: move it aside, then copy the rows that can still be read into a fresh one."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from .schema import transaction

# Under the store's name: the daemon's log lines name their logger, and these are the cache's.
log = logging.getLogger("appliance.cache.store")

_COLUMNS = ("id, namespace, model_version, params_key, prompt, answer, meta, embedding, "
            "created_at, last_hit_at, hits")


def move_aside(path: Path, now: float) -> Path:
    """Rename `path` (and its -wal and -shm files) to `<name>.corrupt-<stamp>[-n]`; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    return aside


def salvage(source: Path, db: sqlite3.Connection, embedder_name: str, dim: int, cutoff: float) -> int:
    """Copy the rows that can still be read from the corrupt file `source` into `db`; best effort, never raises.

    Rows created before `cutoff`, or whose vectors are not `dim` float32s, are left behind; so is
    everything when the file names an embedder other than `embedder_name`. Returns how many were copied.
    """
    saved = 0
    try:
        old = sqlite3.connect(str(source), isolation_level=None)
    except sqlite3.Error:
        return 0
    try:
        try:
            same_model = dict(old.execute("SELECT key, value FROM settings").fetchall()).get("embedder")
        except sqlite3.Error:
            same_model = None
        if same_model is not None and same_model != embedder_name:
            return 0
        select = f"SELECT {_COLUMNS} FROM entries"
        max_id = _readable_max_id(old)
        last = 0
        while max_id is None or last < max_id:
            rows: list[tuple[Any, ...]] = []
            try:
                # Iterate rather than fetchall: the rows before a damaged page are still good.
                for row in old.execute(f"{select} WHERE id > ? ORDER BY id LIMIT 500", (last,)):
                    rows.append(row)
                if not rows:
                    break
                last = rows[-1][0]
            except sqlite3.Error:
                if rows:
                    last = rows[-1][0]
                # A damaged page: fetch the next ids one by one, each through its own b-tree path.
                for entry_id in range(last + 1, last + 501):
                    try:
                        rows.extend(old.execute(f"{select} WHERE id = ?", (entry_id,)).fetchall())
                    except sqlite3.Error:
                        pass
                last += 500
                if max_id is None and not rows:
                    break
            keep = [r for r in rows if isinstance(r[7], bytes) and len(r[7]) == dim * 4
                    and isinstance(r[8], float) and r[8] >= cutoff]
            with transaction(db):
                db.executemany(f"INSERT OR IGNORE INTO entries ({_COLUMNS}) VALUES "
                               f"({','.join('?' * 11)})", keep)
            saved += len(keep)
    except sqlite3.Error as exc:
        log.warning("cache salvage stopped early: %s", exc)
    finally:
        old.close()
    return saved


def _readable_max_id(db: sqlite3.Connection) -> int | None:
    for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'entries'", "SELECT max(id) FROM entries"):
        try:
            row = db.execute(query).fetchone()
        except sqlite3.Error:
            continue
        if row and row[0] is not None:
            return int(row[0])
    return None
