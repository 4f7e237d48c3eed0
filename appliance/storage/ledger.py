"""The answer ledger: every answer's route, tokens, spend and what the teacher would have charged, in SQLite.

`athanor report` reads it (with the teacher's spend ledger) to show money saved, the teacher's share and
the return on distillation. Rows are handed to one writer thread and committed in small batches, so the
answer path never waits for a disk; a crash loses at most the rows of the last `FLUSH_S` seconds, and
SQLite's WAL keeps the file itself consistent. A disk that cannot take a row is reported to the storage
health, and the daemon goes on answering.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Iterator

from ..errors import AthanorError
from .health import StorageHealth

LEDGER_FILE = "answers.sqlite3"
FLUSH_S = 1.0
_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    ts REAL NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL, saved_usd REAL NOT NULL, degraded INTEGER NOT NULL)"""


@dataclass(frozen=True)
class AnswerRow:
    ts: float
    route: str
    """cache, student or teacher."""
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    """What the teacher charged for this answer (teacher route only)."""
    saved_usd: float
    """What the teacher would have charged for an answer the cache or the student gave."""
    degraded: bool


class AnswerLedger:
    def __init__(self, path: Path, health: StorageHealth | None = None) -> None:
        self.path = Path(path)
        self._health = health
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute("CREATE INDEX IF NOT EXISTS answers_ts ON answers (ts)")
            db.close()
        except (OSError, sqlite3.Error) as exc:
            raise AthanorError(f"cannot open the answer ledger {self.path}: {exc}; make the state folder "
                               "writable (or move it with ATHANOR_HOME / STATE_DIRECTORY)") from None
        self._rows: queue.SimpleQueue[AnswerRow | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="answer-ledger", daemon=True)
        self._writer.start()

    def add(self, row: AnswerRow) -> None:
        """Queue one answer for the writer; returns at once."""
        self._rows.put(row)

    def _write_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: consistent after a crash, fsync per checkpoint
        try:
            while True:
                first = self._rows.get()
                batch, stop = ([first] if first is not None else []), first is None
                deadline = time.monotonic() + FLUSH_S
                while not stop and time.monotonic() < deadline:
                    try:
                        row = self._rows.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if row is None:
                        stop = True
                    else:
                        batch.append(row)
                if batch:
                    self._commit(db, batch)
                if stop:
                    return
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, batch: list[AnswerRow]) -> None:
        try:
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [astuple(r) for r in batch])
        except (OSError, sqlite3.Error) as exc:
            if self._health is not None:
                self._health.failed("answer_ledger", exc)
            return
        if self._health is not None:
            self._health.wrote("answer_ledger")

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._rows.put(None)
        self._writer.join(timeout=30)


def read_rows(path: Path, since: float | None = None) -> Iterator[AnswerRow]:
    """The ledger's answers in time order (from `since`, a Unix time); none when there is no ledger yet."""
    if not Path(path).is_file():
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = "SELECT * FROM answers" + (" WHERE ts >= ?" if since is not None else "") + " ORDER BY ts"
        for values in db.execute(query, (since,) if since is not None else ()):
            ts, route, model, prompt, completion, cost, saved, degraded = values
            yield AnswerRow(ts, route, model, prompt, completion, cost, saved, bool(degraded))
    finally:
        db.close()
