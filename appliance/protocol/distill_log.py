"""The distillation log: every teacher answer the daemon served, one JSON line each, for retraining.

Crash safety: a record is written with one `write` of a whole line, flushed and fsynced before
`append` returns, so an acknowledged record survives `kill -9`; a line torn by a crash mid-write
can only be the last one, and `read_records` skips it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .log_entry import LogEntry


class DistillLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._repair_tail()

    def _repair_tail(self) -> None:
        """A crash may have left half a line; end it so the next record starts on its own line."""
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("rb") as handle:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                os.write(self._fd, b"\n")
                os.fsync(self._fd)

    def append(self, record: LogEntry | dict[str, Any]) -> None:
        """Write one record durably (returns after fsync)."""
        if isinstance(record, LogEntry):
            record = record.to_json()
        line = json.dumps({"ts": time.time(), **record}, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode()
        with self._lock:
            start = os.fstat(self._fd).st_size
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(28, f"short write to {self.path}: {written} of {len(data)} bytes (disk full?)")
                os.fsync(self._fd)
            except OSError:
                # Cut a partial line off, or the next record would be glued to it and lost with it.
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
                raise

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record in the log; torn or corrupt lines are skipped."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                continue
            record = _parse(raw)
            if record is not None:
                yield record


def read_records_newest_first(path: Path, block: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """The log's complete records from the last to the first, reading the file backwards in blocks, so that a
    reader that wants only the newest stops without reading a long log whole. A torn last line is skipped."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        tail = b""
        past_last_newline = False
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + tail
            lines = data.split(b"\n")
            if not past_last_newline:
                if len(lines) == 1:
                    tail = data  # no newline yet: all of it is after the last one
                    continue
                lines.pop()  # after the last newline: empty, or a line torn by a crash
                past_last_newline = True
            # The first piece may be the end of a line that starts in an earlier block.
            tail = lines.pop(0) if position > 0 else b""
            for raw in reversed(lines):
                record = _parse(raw)
                if record is not None:
                    yield record


def read_entries(path: Path) -> Iterator[LogEntry]:
    """Every distillation-log entry in `path`, typed; lines that hold no conversation are skipped."""
    for data in read_records(path):
        entry = LogEntry.from_json(data)
        if entry is not None:
            yield entry


def read_entries_newest_first(path: Path) -> Iterator[LogEntry]:
    """`read_entries` from the last entry to the first (see `read_records_newest_first`)."""
    for data in read_records_newest_first(path):
        entry = LogEntry.from_json(data)
        if entry is not None:
            yield entry
