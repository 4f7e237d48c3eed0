"""One worker thread owns an engine and decodes every admitted request together (continuous batching).

llama.cpp contexts are not thread-safe, so every engine call happens on the worker. Between two
decode steps the worker admits waiting requests into free sequences and drops those whose client
left; each step then advances all of them at once. Tokens cross to the event loop with
`call_soon_threadsafe`. Requests wait in a bounded FIFO queue: over the bound, `Overloaded`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from .types import FinishReason, SamplingParams, StepResult, TokenEvent

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the scheduler needs of an engine: sequences it can add, step together and remove."""

    parallel: int

    @property
    def free(self) -> int: ...

    def add(self, prompt: list[int], params: SamplingParams) -> int: ...

    def remove(self, seq: int) -> None: ...

    def step(self) -> list[StepResult]: ...

    def interrupt(self) -> None:
        """End the step in progress early so waiting jobs are admitted sooner; a no-op where steps are short."""

    # Counters for /v1/stats; None from an engine that does not keep them (it is shown as unknown, not 0).
    @property
    def prompt_tokens_reused(self) -> int | None: ...

    @property
    def prompt_tokens_computed(self) -> int | None: ...

    @property
    def interrupted_steps(self) -> int | None: ...


class Overloaded(Exception):
    """The queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: int, reason: str | None = None) -> None:
        reason = reason or f"{queued} requests are already waiting for the student"
        super().__init__(f"{reason}; retry in {retry_after} s")
        self.retry_after = retry_after


class Closed(Overloaded):
    """The scheduler is shutting down or being replaced by a reload; a new one may take the request."""


@dataclass
class _Done:
    reason: FinishReason


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
        self.finish_reason: FinishReason | None = None
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
        if self._append(item):
            _wake([self])

    def _append(self, item: object) -> bool:
        """Buffer `item`; True when the event loop must be woken for it (see `_wake`)."""
        final = isinstance(item, (_Done, _Failed))
        with self._lock:
            self._buffer.append(item)
            if self._wake_pending or not (self.stream or final):
                return False
            self._wake_pending = True
            return True

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


def _wake(jobs: list[Job]) -> None:
    """Wake the event loop once for all of `jobs` (each wake-up is a write to the loop's self-pipe,
    made by the worker between two decode steps: one per step, not one per client)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        by_loop.setdefault(job._loop, []).append(job)
    for loop, woken in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_ready, woken)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            for job in woken:
                job.cancel()


def _set_ready(jobs: list[Job]) -> None:
    for job in jobs:
        job._ready.set()


class Scheduler:
    """Runs jobs on one engine, up to `engine.parallel` at once, first come first served, at most `max_queue` waiting."""

    def __init__(self, engine: Engine, max_queue: int, name: str = "student") -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.name = name
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: dict[int, Job] = {}  # the worker's own: sequence id -> job
        self._n_running = 0
        self._state = "open"  # then "draining" (finish what was admitted), then "aborting"
        self._avg_job_s = 1.0
        self._steps = 0
        self._stepped_sequences = 0
        self._max_batch = 0
        self._thread = threading.Thread(target=self._work, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Requests queued for a free sequence."""
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Requests being decoded now."""
        return self._n_running

    def stats(self) -> dict[str, int | float | None]:
        """How well batching works: sequences per decode step, prompt tokens reused vs computed."""
        engine = self.engine
        return {
            "parallel": engine.parallel,
            "running": self._n_running,
            "waiting": len(self._queue),
            "steps": self._steps,
            "mean_batch": self._stepped_sequences / self._steps if self._steps else None,
            "max_batch": self._max_batch,
            "prompt_tokens_reused": engine.prompt_tokens_reused,
            "prompt_tokens_computed": engine.prompt_tokens_computed,
            "interrupted_steps": engine.interrupted_steps,
        }

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved by its current length."""
        return max(1, math.ceil(len(self._queue) * self._avg_job_s / max(1, self.engine.parallel)))

    def submit(self, prompt: list[int], params: SamplingParams, stream: bool = True) -> Job:
        """Queue a job; raises `Overloaded` when `max_queue` jobs already wait (or the scheduler is closing).

        With `stream=False` the tokens are handed over in one piece when the answer is complete.
        """
        job = Job(prompt, params, asyncio.get_running_loop(), stream)
        with self._cond:
            if self._state != "open":
                raise Closed(len(self._queue), 1, f"student {self.name!r} is being replaced or shut down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(len(self._queue), self.retry_after())
            self._queue.append(job)
            self._cond.notify()
            if self._n_running and len(self._queue) <= self.engine.free:
                # It would be admitted at the next step boundary: bring that boundary forward.
                self.engine.interrupt()
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, let every admitted and queued job finish (up to `timeout`), then stop the worker.

        Jobs still unfinished at the timeout end as cancelled.
        """
        with self._cond:
            if self._state == "open":
                self._state = "draining"
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._state = "aborting"
                self._cond.notify()
            self._thread.join(10)

    # --- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._running and self._state == "open":
                    self._cond.wait()
                if self._state == "aborting" or (self._state == "draining" and not self._queue and not self._running):
                    self._abandon()
                    return
                admitted: list[Job] = []
                while self._queue and len(admitted) < self.engine.free:
                    admitted.append(self._queue.popleft())
            self._admit(admitted)
            self._drop_cancelled()
            if self._running:
                self._step()
            self._n_running = len(self._running)

    def _admit(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.cancelled:
                job._push(_Done("cancelled"))
                continue
            try:
                seq = self.engine.add(job.prompt, job.params)
            except Exception as exc:  # reported to the one client whose request failed
                log.exception("could not admit a request")
                job._push(_Failed(exc))
                continue
            job.started_at = time.monotonic()
            self._running[seq] = job
        self._n_running = len(self._running)

    def _drop_cancelled(self) -> None:
        for seq, job in list(self._running.items()):
            if job.cancelled:
                self._end(seq, _Done("cancelled"))

    def _step(self) -> None:
        self._steps += 1
        self._stepped_sequences += len(self._running)
        self._max_batch = max(self._max_batch, len(self._running))
        try:
            results = self.engine.step()
        except Exception as exc:
            log.exception("decode step failed")
            for seq in list(self._running):
                self._end(seq, _Failed(exc))
            return
        woken: list[Job] = []
        for result in results:
            job = self._running.get(result.seq)
            if job is None:
                continue
            if result.error is not None:
                self._end(result.seq, _Failed(result.error), woken)
                continue
            if result.event is not None and job._append(result.event):
                woken.append(job)
            if result.finish is not None:
                self._end(result.seq, _Done(result.finish), woken)
        if woken:
            _wake(woken)

    def _end(self, seq: int, outcome: "_Done | _Failed", woken: list[Job] | None = None) -> None:
        """End a running job; with `woken`, its wake-up joins the step's one (see `_wake`)."""
        job = self._running.pop(seq)
        self.engine.remove(seq)  # a no-op for a sequence the engine already ended
        if woken is None:
            job._push(outcome)
        elif job._append(outcome):
            woken.append(job)
        if job.started_at is not None:
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.monotonic() - job.started_at)

    def _abandon(self) -> None:
        """Cancel whatever is left (called with the lock held, at the end)."""
        for seq in list(self._running):
            self._end(seq, _Done("cancelled"))
        while self._queue:
            self._queue.popleft()._push(_Done("cancelled"))
        self._n_running = 0
