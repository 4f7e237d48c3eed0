"""One worker thread owns an engine; requests wait in a bounded FIFO queue and stream tokens back to asyncio.

llama.cpp contexts are not thread-safe, so every engine call happens on the worker. Tokens
cross to the event loop with `call_soon_threadsafe`; a client that leaves sets its job's
cancel flag, which the engine checks between tokens, so the slot frees at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Protocol

from .types import SamplingParams, TokenEvent

log = logging.getLogger(__name__)


class Engine(Protocol):
    def generate(
        self, prompt: list[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[TokenEvent]: ...


class Overloaded(Exception):
    """The queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"{queued} requests are already waiting for the student; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Done:
    reason: str


@dataclass
class _Failed:
    error: BaseException


class Job:
    """A request's place in the queue and its stream of tokens.

    The worker appends to a buffer and wakes the event loop only when no wake-up is pending
    (and, for a client that does not stream, only at the end): waking the loop costs CPU that
    the decode threads need, so tokens that arrive while the loop is busy travel together.
    """

    def __init__(
        self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop, stream: bool = True
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.stream = stream
        self.finish_reason: str | None = None
        self.enqueued_at = time.monotonic()
        self.started_at: float | None = None
        self._loop = loop
        self._ready = asyncio.Event()
        self._buffer: list[object] = []
        self._lock = threading.Lock()
        self._wake_pending = False
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop generating for this job (the client left); safe from any thread."""
        self._cancel.set()

    def _push(self, item: object) -> None:
        final = isinstance(item, (_Done, _Failed))
        with self._lock:
            self._buffer.append(item)
            if self._wake_pending or not (self.stream or final):
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.cancel()

    def _take(self) -> list[object]:
        with self._lock:
            items, self._buffer = self._buffer, []
            self._wake_pending = False
            self._ready.clear()
        return items

    async def tokens(self) -> AsyncIterator[TokenEvent]:
        """Tokens as the worker produces them; sets `finish_reason` at the end, re-raises engine errors."""
        while True:
            await self._ready.wait()
            for item in self._take():
                if isinstance(item, _Done):
                    self.finish_reason = item.reason
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item  # type: ignore[misc]


class Scheduler:
    """Runs jobs on one engine, first come first served, at most `max_queue` waiting."""

    def __init__(self, engine: Engine, max_queue: int, name: str = "student") -> None:
        self.engine = engine
        self.max_queue = max_queue
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._avg_job_s = 1.0
        self._thread = threading.Thread(target=self._work, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, prompt: list[int], params: SamplingParams, stream: bool = True) -> Job:
        """Queue a job; raises `Overloaded` when `max_queue` jobs already wait.

        With `stream=False` the tokens are handed over in one piece when the answer is complete.
        """
        with self._lock:
            if self._waiting >= self.max_queue:
                raise Overloaded(self._waiting, max(1, math.ceil(self._waiting * self._avg_job_s)))
            self._waiting += 1
        job = Job(prompt, params, asyncio.get_running_loop(), stream)
        self._jobs.put(job)
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Let the current job finish (up to `timeout`), drop the rest, stop the worker."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job._push(_Done("cancelled"))
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._waiting -= 1
            if job.cancelled:
                job._push(_Done("cancelled"))
                continue
            self._busy.set()
            job.started_at = time.monotonic()
            try:
                generator = self.engine.generate(job.prompt, job.params, job._cancel.is_set)
                while True:
                    try:
                        job._push(next(generator))
                    except StopIteration as finished:
                        job._push(_Done(finished.value or "stop"))
                        break
            except Exception as exc:  # reported to the one client whose request failed
                log.exception("generation failed")
                job._push(_Failed(exc))
            finally:
                self._busy.clear()
                took = time.monotonic() - job.started_at
                self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * took
