"""What keeps the teacher polite and affordable: rate limits, retries with backoff, and a daily spend cap."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, TypeVar

from ..errors import AthanorError
from ..storage.health import StorageHealth
from .base import BudgetExceeded, TeacherChunk, TeacherError
from .pricing import Price

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
Settle = Callable[[int, int], Awaitable[float]]
"""Records what a streamed answer cost, from its final usage (input, output tokens); returns the USD."""


class _Bucket:
    """A token bucket holding up to `capacity`, refilled at `capacity` per minute; the level may go negative."""

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        # Capped at the capacity so a request bigger than a whole minute's budget goes once the bucket is full.
        need = min(amount, self.capacity)
        return max(0.0, (need - self.level) / self.rate)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits shared by every call to one teacher."""

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if requests_per_minute <= 0 or tokens_per_minute <= 0:
            raise ValueError("rate limits must be positive")
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(float(requests_per_minute), now)
        self._tokens = _Bucket(float(tokens_per_minute), now)

    def reserve(self, tokens: int) -> float:
        """Book one request of `tokens` now and return how long the caller must wait before sending it."""
        now = self._clock()
        self._requests.refill(now)
        self._tokens.refill(now)
        wait = max(self._requests.wait_for(1), self._tokens.wait_for(tokens))
        # Booking at once (the level may go negative) keeps concurrent callers in order without a lock:
        # the next caller sees this booking and waits behind it.
        self._requests.level -= 1
        self._tokens.level -= tokens
        return wait

    async def acquire(self, tokens: int) -> None:
        """Wait until a request slot and `tokens` of the per-minute token budget are free, and take them."""
        wait = self.reserve(max(0, tokens))
        if wait <= 0:
            return
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            self.refund(max(0, tokens), requests=1)
            raise

    def refund(self, tokens: int, requests: int = 0) -> None:
        """Give back booked budget (a cancelled wait, or an answer that used fewer tokens than reserved)."""
        self._tokens.level = min(self._tokens.capacity, self._tokens.level + tokens)
        self._requests.level = min(self._requests.capacity, self._requests.level + requests)


class RetryableError(TeacherError):
    """A failure worth retrying (429, 5xx, timeout, lost connection); `retry_after` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 20.0, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff: a uniform draw in [0, min(cap, base * 2**attempt))."""
    growth: float = base * 2**attempt  # typeshed types int ** int as Any (a negative exponent gives a float)
    return rng() * min(cap, growth)


def retry_delays(
    max_retries: int, base: float = 0.5, cap: float = 20.0, rng: Callable[[], float] = random.random
) -> list[float]:
    """The sleeps before each of `max_retries` retries when the server gives no Retry-After."""
    return [backoff_delay(attempt, base, cap, rng) for attempt in range(max_retries)]


def _retry_delay(exc: RetryableError, attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """The server's hint when it gave one (capped), else full-jitter backoff."""
    if exc.retry_after is not None and math.isfinite(exc.retry_after):
        return min(cap, max(0.0, exc.retry_after))
    return backoff_delay(attempt, base, cap, rng)


def _exhausted(exc: RetryableError, attempt: int) -> TeacherError:
    tries = "attempt" if attempt == 0 else "attempts"
    return TeacherError(f"teacher failed after {attempt + 1} {tries}; last error: {exc}")


async def with_retries(
    call: Callable[[], Awaitable[T]],
    max_retries: int,
    sleep: Sleep = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    base: float = 0.5,
    cap: float = 20.0,
) -> T:
    """Await `call()`, retrying `RetryableError` up to `max_retries` times; then raise `TeacherError` naming the last failure.

    Other exceptions (a refused key, garbage) pass through at once: retrying them only costs money.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except RetryableError as exc:
            if attempt >= max_retries:
                raise _exhausted(exc, attempt) from exc
            delay = _retry_delay(exc, attempt, base, cap, rng)
            log.warning("teacher attempt %d failed (%s); retrying in %.2f s", attempt + 1, exc, delay)
            await sleep(delay)
            attempt += 1


def utc_day(timestamp: float) -> str:
    """The UTC date of a Unix time, as YYYY-MM-DD."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).date().isoformat()


class SpendLedger:
    """Teacher spend per UTC day, in a small SQLite file that survives crashes; enforces the daily cap."""

    def __init__(self, path: Path, daily_budget_usd: float, clock: Clock = time.time,
                 health: StorageHealth | None = None, label: str = "teacher budget",
                 fix: str = "raise [teacher].daily_budget_usd") -> None:
        self.path = Path(path)
        self.daily_budget_usd = daily_budget_usd
        self.label = label
        self.fix = fix
        self._clock = clock
        self._lock = threading.Lock()
        self._health = health
        # Spend that could not be written (disk full), per day: still counted against the cap,
        # and written with the next record that succeeds.
        self._unwritten: dict[str, float] = {}
        # Estimated cost of calls under way: counted against the cap until they settle, so that
        # concurrent calls cannot each pass the check before any of them has recorded its cost.
        self._in_flight = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared under the lock; the daemon records from worker threads.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL syncs the WAL on every commit: a recorded spend is on disk before record() returns.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS spend (day TEXT PRIMARY KEY, usd REAL NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise AthanorError(
                f"cannot open the teacher spend ledger {self.path}: {exc}; "
                "make the state folder writable (or move it with ATHANOR_HOME / STATE_DIRECTORY)"
            ) from None

    def today(self) -> str:
        return utc_day(self._clock())

    def spent_today(self) -> float:
        """USD spent since 00:00 UTC."""
        with self._lock:
            return self._spent_locked()

    def _spent_locked(self) -> float:
        day = self.today()
        row = self._db.execute("SELECT usd FROM spend WHERE day = ?", (day,)).fetchone()
        return (float(row[0]) if row else 0.0) + self._unwritten.get(day, 0.0)

    def check(self, estimated_cost: float) -> None:
        """Raise `BudgetExceeded` if spending `estimated_cost` more today would pass the cap."""
        self.release(self.reserve(estimated_cost))

    def reserve(self, estimated_cost: float) -> float:
        """Book `estimated_cost` against today's cap before a call (raises `BudgetExceeded` when it would
        pass it); `release` the returned amount once the call has recorded its real cost or failed."""
        with self._lock:
            spent = self._spent_locked()
            if spent + self._in_flight + estimated_cost > self.daily_budget_usd:
                raise BudgetExceeded(
                    f"{self.label} reached: spent ${spent:.4f} of ${self.daily_budget_usd:.2f} today, "
                    f"${self._in_flight:.4f} more booked by calls under way (this request needs about "
                    f"${estimated_cost:.4f}); it resets at 00:00 UTC, or {self.fix}"
                )
            self._in_flight += estimated_cost
        return estimated_cost

    def release(self, amount: float) -> None:
        with self._lock:
            self._in_flight = max(0.0, self._in_flight - amount)

    def record(self, cost: float) -> None:
        """Add `cost` USD to today's spend, durably when the disk allows.

        A failed write (disk full) is reported to the storage health and the amount is kept in
        memory, still counted against the cap, until a later record writes it too.
        """
        if cost <= 0:
            return
        day = self.today()
        with self._lock:
            amount = float(cost) + self._unwritten.pop(day, 0.0)
            self._unwritten = {}  # spend of earlier days no longer limits anything
            try:
                self._db.execute(
                    "INSERT INTO spend (day, usd) VALUES (?, ?) "
                    "ON CONFLICT(day) DO UPDATE SET usd = usd + excluded.usd",
                    (day, amount),
                )
            except (OSError, sqlite3.Error) as exc:
                self._unwritten[day] = amount
                log.warning("could not record teacher spend of $%.6f in %s: %s", amount, self.path, exc)
                if self._health is not None:
                    self._health.failed("spend_ledger", exc)
                return
        if self._health is not None:
            self._health.wrote("spend_ledger")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SpendLedger({str(self.path)!r}, daily_budget_usd={self.daily_budget_usd})"


def parse_retry_after(value: str | None, now: Clock = time.time) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def estimate_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    """Rough prompt size before the provider counts it: about four characters a token, plus a little per message."""
    total = 0
    for message in messages:
        total += math.ceil(len(str(message.get("content") or "")) / 4) + 4
    return max(1, total)


class Guard:
    """Budget check, rate limit and retries around one provider's calls; the clients share it."""

    def __init__(
        self,
        ledger: SpendLedger,
        limiter: RateLimiter,
        price: Price,
        max_retries: int,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.ledger = ledger
        self.limiter = limiter
        self.price = price
        self.max_retries = max_retries
        self._sleep = sleep
        self._rng = rng

    async def call(self, input_tokens: int, max_output_tokens: int, attempt: Callable[[], Awaitable[T]]) -> T:
        """Book the budget (before anything is sent), then run `attempt` under the rate limit, with retries."""
        booked = self.ledger.reserve(self.price.cost(input_tokens, max_output_tokens))
        reserved = input_tokens + max_output_tokens

        async def limited() -> T:
            # Every retry is a request the provider counts, so each one takes its own slot.
            await self.limiter.acquire(reserved)
            return await attempt()

        try:
            return await with_retries(limited, self.max_retries, sleep=self._sleep, rng=self._rng)
        finally:
            self.ledger.release(booked)

    async def stream(
        self,
        input_tokens: int,
        max_output_tokens: int,
        attempt: Callable[[Settle], AsyncGenerator[TeacherChunk, None]],
    ) -> AsyncGenerator[TeacherChunk, None]:
        """`call` for a streamed answer: check the budget, then pass on `attempt(settle)`'s chunks under the rate limit.

        A `RetryableError` is retried only while no text has gone out; after the first text chunk it becomes
        a `TeacherError`, since the caller already has part of an answer. `attempt` calls `settle` once, with
        the final usage, before its last chunk. An answer that breaks off (or that the caller leaves) after
        text went out never brings its usage, yet was billed: it is charged at our estimate, so the cap holds.
        """
        booked = self.ledger.reserve(self.price.cost(input_tokens, max_output_tokens))
        reserved = input_tokens + max_output_tokens
        settled = False
        sent_chars = 0  # text passed on to the caller

        async def settle(real_input: int, real_output: int) -> float:
            nonlocal settled
            if settled:
                raise RuntimeError("a streamed answer was settled twice")
            settled = True  # before the write, which a cancelled caller may leave running on its own
            return await self.settle(reserved, real_input, real_output)

        tries = 0
        try:
            while True:
                # Every retry is a request the provider counts, so each one takes its own slot.
                await self.limiter.acquire(reserved)
                chunks = attempt(settle)
                try:
                    async for chunk in chunks:
                        if chunk.answer is None:
                            sent_chars += len(chunk.text)
                        yield chunk
                    return
                except RetryableError as exc:
                    if sent_chars:
                        raise TeacherError(
                            f"the teacher broke off mid-answer ({exc}); not retried, since the text so far "
                            "was already passed on: ask again"
                        ) from exc
                    if tries >= self.max_retries:
                        raise _exhausted(exc, tries) from exc
                    delay = _retry_delay(exc, tries, 0.5, 20.0, self._rng)
                    log.warning("teacher attempt %d failed (%s); retrying in %.2f s", tries + 1, exc, delay)
                    await self._sleep(delay)
                    tries += 1
                finally:
                    await chunks.aclose()
        finally:
            if sent_chars and not settled:
                output_estimate = math.ceil(sent_chars / 4)
                log.warning("a streamed teacher answer ended without usage; charging an estimate of %d output tokens",
                            output_estimate)
                # Written here and now: this may run while the caller is being cancelled.
                self.ledger.record(self.price.cost(input_tokens, output_estimate))
                self._refund_unused(reserved, input_tokens, output_estimate)
            self.ledger.release(booked)

    def _refund_unused(self, reserved_tokens: int, input_tokens: int, output_tokens: int) -> None:
        unused = reserved_tokens - input_tokens - output_tokens
        if unused > 0:
            self.limiter.refund(unused)

    async def settle(self, reserved_tokens: int, input_tokens: int, output_tokens: int) -> float:
        """Record what an answer really cost and give the rate limiter back the tokens it did not use."""
        cost = self.price.cost(input_tokens, output_tokens)
        # The ledger fsyncs; keep that off the event loop.
        await asyncio.to_thread(self.ledger.record, cost)
        self._refund_unused(reserved_tokens, input_tokens, output_tokens)
        return cost


def read_spend(path: Path) -> dict[str, float]:
    """Teacher spend per UTC day from a `SpendLedger` file, read-only; empty when there is none."""
    if not Path(path).is_file():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {day: float(usd) for day, usd in db.execute("SELECT day, usd FROM spend ORDER BY day")}
    except sqlite3.Error:
        return {}
    finally:
        db.close()


class PayerLedgers:
    """Teacher spend per API key and UTC day, one `SpendLedger` each (`<folder>/key-NAME.sqlite3`), so that a
    key's daily budget holds across restarts, with the same crash safety as the global cap."""

    def __init__(self, folder: Path, health: StorageHealth | None = None) -> None:
        self.folder = Path(folder)
        self._health = health
        self._ledgers: dict[str, SpendLedger] = {}
        self._lock = threading.Lock()

    @staticmethod
    def ledger_file(folder: Path, payer: str) -> Path:
        return Path(folder) / f"key-{payer}.sqlite3"

    def ledger(self, payer: str, daily_budget_usd: float) -> SpendLedger:
        """`payer`'s ledger, its cap set to the key's budget as the key file says now."""
        with self._lock:
            ledger = self._ledgers.get(payer)
            if ledger is None:
                ledger = SpendLedger(self.ledger_file(self.folder, payer), daily_budget_usd, health=self._health,
                                     label=f"the teacher budget of API key {payer!r}",
                                     fix=f"raise it with `athanor keys budget {payer} USD`")
                self._ledgers[payer] = ledger
            ledger.daily_budget_usd = daily_budget_usd
            return ledger

    def close(self) -> None:
        with self._lock:
            for ledger in self._ledgers.values():
                ledger.close()
            self._ledgers.clear()
