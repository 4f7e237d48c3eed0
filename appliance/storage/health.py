"""Which of the daemon's stores can still be written, for /healthz and /v1/stats.

A full disk must not stop answers: the cache, the distillation log and the spend ledger report a
failed write here and the request is served anyway. A store counts as failing from its last
failed write until its next successful one, so the health turns back to ok once space is freed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

STORES = ("cache", "distill_log", "spend_ledger", "answer_ledger")


@dataclass
class _StoreState:
    writes: int = 0
    write_failures: int = 0
    failing: bool = False
    last_error: str | None = None
    last_failure_at: float | None = None


class StorageHealth:
    """Thread-safe counters of writes and failed writes per store (stores write from worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stores: dict[str, _StoreState] = {}

    def wrote(self, store: str) -> None:
        """A write to `store` reached the disk."""
        with self._lock:
            state = self._stores.setdefault(store, _StoreState())
            state.writes += 1
            state.failing = False

    def failed(self, store: str, error: BaseException | str) -> None:
        """A write to `store` did not reach the disk (and its data may be lost)."""
        with self._lock:
            state = self._stores.setdefault(store, _StoreState())
            state.write_failures += 1
            state.failing = True
            state.last_error = describe(error)
            state.last_failure_at = self._clock()

    @property
    def ok(self) -> bool:
        with self._lock:
            return not any(state.failing for state in self._stores.values())

    def snapshot(self) -> dict[str, Any]:
        """{"ok": bool, "stores": {name: {writes, write_failures, failing, last_error, last_failure_at}}}."""
        with self._lock:
            stores = {name: dict(vars(state)) for name, state in sorted(self._stores.items())}
        return {"ok": not any(s["failing"] for s in stores.values()), "stores": stores}


def describe(error: BaseException | str) -> str:
    """One line naming the failure, with the fix for the common one (a full disk)."""
    if isinstance(error, str):
        return error
    text = str(error) or type(error).__name__
    errno = getattr(error, "errno", None)
    if errno == 28 or "disk is full" in text or "No space left" in text:
        return f"{text}; the state folder's disk is full: free space there (the daemon resumes writing by itself)"
    return text
