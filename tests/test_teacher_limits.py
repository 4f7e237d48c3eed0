"""Rate limits, retries and the daily spend cap, on injected clocks: no test here waits on wall-clock time."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from appliance.errors import AthanorError
from appliance.teacher.base import BudgetExceeded, TeacherError
from appliance.teacher.limits import (
    RateLimiter,
    RetryableError,
    SpendLedger,
    estimate_tokens,
    parse_retry_after,
    retry_delays,
    utc_day,
    with_retries,
)

from .conftest import ROOT


class FakeTime:
    """A clock and a sleep: `sleep` records the wait and, if `advance`, moves the clock on by it."""

    def __init__(self, now: float = 1000.0, advance: bool = True) -> None:
        self.now = now
        self.advance = advance
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.advance:
            self.now += seconds


def limiter(rpm: int, tpm: int, time: FakeTime) -> RateLimiter:
    return RateLimiter(rpm, tpm, clock=time.clock, sleep=time.sleep)


def test_requests_beyond_the_per_minute_slots_wait_for_a_refill():
    time = FakeTime()
    limit = limiter(2, 10**6, time)

    async def three():
        for _ in range(3):
            await limit.acquire(1)

    asyncio.run(three())
    # Two slots are free at once; the third refills at 2 per minute, i.e. after 30 s.
    assert time.sleeps == [pytest.approx(30.0)]


def test_tokens_beyond_the_per_minute_budget_wait_for_a_refill():
    time = FakeTime()
    limit = limiter(1000, 600, time)  # 10 tokens a second

    async def go():
        await limit.acquire(600)
        await limit.acquire(100)
        time.now += 5  # 50 tokens refilled meanwhile
        await limit.acquire(100)

    asyncio.run(go())
    assert time.sleeps == [pytest.approx(10.0), pytest.approx(5.0)]


def test_a_request_bigger_than_a_minute_of_tokens_goes_when_the_bucket_is_full():
    time = FakeTime()
    limit = limiter(1000, 100, time)

    async def go():
        await limit.acquire(250)  # full bucket: admitted at once, not deadlocked
        await limit.acquire(10)  # the overdraft (-150) is paid back first: (10 + 150) / (100/60 per s)
        await limit.acquire(250)  # needs a full bucket again: 100 / (100/60)

    asyncio.run(go())
    assert time.sleeps == [pytest.approx(96.0), pytest.approx(60.0)]


def test_an_idle_bucket_holds_no_more_than_its_capacity():
    time = FakeTime()
    limit = limiter(1, 10**6, time)

    async def go():
        time.now += 3600  # an hour idle earns no burst beyond one minute's slots
        await limit.acquire(1)
        await limit.acquire(1)

    asyncio.run(go())
    assert time.sleeps == [pytest.approx(60.0)]


def test_concurrent_callers_queue_behind_each_other():
    time = FakeTime(advance=False)
    limit = limiter(1, 10**6, time)

    async def go():
        await asyncio.gather(*(limit.acquire(1) for _ in range(3)))

    asyncio.run(go())
    assert sorted(time.sleeps) == [pytest.approx(60.0), pytest.approx(120.0)]


def test_a_cancelled_wait_gives_its_slot_back():
    time = FakeTime(advance=False)

    async def cancelled_sleep(seconds: float) -> None:
        time.sleeps.append(seconds)
        raise asyncio.CancelledError

    limit = RateLimiter(1, 10**6, clock=time.clock, sleep=cancelled_sleep)

    async def go():
        await limit.acquire(1)
        with pytest.raises(asyncio.CancelledError):
            await limit.acquire(1)
        with pytest.raises(asyncio.CancelledError):
            await limit.acquire(1)

    asyncio.run(go())
    # Without the refund the third caller would queue behind the cancelled one (120 s).
    assert time.sleeps == [pytest.approx(60.0), pytest.approx(60.0)]


def test_rate_limits_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0, 10)


@pytest.mark.parametrize(
    "rng_value, expected",
    [
        # The top of the jitter range doubles from 0.5 s and stops at the 20 s cap.
        (1.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]),
        # Full jitter: the delay is a uniform fraction of that range.
        (0.5, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
        (0.0, [0.0] * 8),
    ],
)
def test_retry_delays_are_exponential_with_full_jitter(rng_value, expected):
    assert retry_delays(8, rng=lambda: rng_value) == pytest.approx(expected)


def test_no_retries_means_no_delays():
    assert retry_delays(0) == []


class Flaky:
    """A call that raises the given exceptions in turn, then answers "ok"."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def run_retries(call: Flaky, max_retries: int) -> tuple[object, list[float]]:
    time = FakeTime()
    result = asyncio.run(with_retries(call, max_retries, sleep=time.sleep, rng=lambda: 1.0))
    return result, time.sleeps


def test_retries_back_off_until_success():
    call = Flaky(RetryableError("503"), RetryableError("503"))
    result, sleeps = run_retries(call, 3)
    assert (result, call.calls, sleeps) == ("ok", 3, [0.5, 1.0])


@pytest.mark.parametrize(
    "retry_after, slept",
    [
        (7.0, 7.0),  # the server's Retry-After replaces the backoff
        (0.0, 0.0),
        (300.0, 20.0),  # but is capped: a five-minute pause is not worth a retry's wait
        (-5.0, 0.0),
    ],
)
def test_retry_after_is_honoured_and_capped(retry_after, slept):
    call = Flaky(RetryableError("429", retry_after=retry_after))
    result, sleeps = run_retries(call, 1)
    assert result == "ok" and sleeps == [slept]


def test_exhausted_retries_raise_a_teacher_error_naming_the_last_failure():
    call = Flaky(RetryableError("first: 500"), RetryableError("second: 503"), RetryableError("last: 504"))
    time = FakeTime()
    with pytest.raises(TeacherError) as caught:
        asyncio.run(with_retries(call, 2, sleep=time.sleep, rng=lambda: 1.0))
    assert type(caught.value) is TeacherError  # not the retryable kind: nobody should retry it again
    assert "3 attempts" in str(caught.value) and "last: 504" in str(caught.value)
    assert call.calls == 3 and time.sleeps == [0.5, 1.0]


def test_other_errors_pass_through_without_retrying():
    call = Flaky(TeacherError("bad key"), RetryableError("never reached"))
    time = FakeTime()
    with pytest.raises(TeacherError, match="bad key"):
        asyncio.run(with_retries(call, 5, sleep=time.sleep))
    assert call.calls == 1 and time.sleeps == []


def test_zero_retries_means_one_attempt():
    call = Flaky(RetryableError("503"))
    with pytest.raises(TeacherError, match="after 1 attempt;"):
        asyncio.run(with_retries(call, 0, sleep=FakeTime().sleep))
    assert call.calls == 1


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3", 3.0),
        ("1.5", 1.5),
        ("-2", 0.0),
        (format_datetime(datetime.fromtimestamp(1_000_010, tz=timezone.utc), usegmt=True), 10.0),  # HTTP date
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=lambda: 1_000_000.0) == (None if expected is None else pytest.approx(expected))


def test_estimate_tokens_grows_with_the_prompt():
    short = estimate_tokens([{"role": "user", "content": "hi"}])
    long = estimate_tokens([{"role": "user", "content": "hi " * 400}])
    assert 1 <= short < long and long >= 300


DAY_ONE_LATE = datetime(2025, 3, 1, 23, 59, 50, tzinfo=timezone.utc).timestamp()
DAY_TWO_EARLY = datetime(2025, 3, 2, 0, 0, 5, tzinfo=timezone.utc).timestamp()


def test_ledger_adds_up_todays_spend_and_survives_reopening(tmp_path):
    path = tmp_path / "state" / "spend.sqlite3"
    ledger = SpendLedger(path, 1.0, clock=lambda: DAY_ONE_LATE)
    ledger.record(0.25)
    ledger.record(0.125)
    ledger.record(0.0)
    assert ledger.spent_today() == pytest.approx(0.375)
    ledger.close()
    reopened = SpendLedger(path, 1.0, clock=lambda: DAY_ONE_LATE)
    assert reopened.spent_today() == pytest.approx(0.375)


def test_ledger_resets_on_a_new_utc_day(tmp_path):
    now = [DAY_ONE_LATE]
    ledger = SpendLedger(tmp_path / "spend.sqlite3", 1.0, clock=lambda: now[0])
    ledger.record(0.9)
    with pytest.raises(BudgetExceeded):
        ledger.check(0.2)
    now[0] = DAY_TWO_EARLY
    assert ledger.spent_today() == 0.0
    ledger.check(0.2)
    assert utc_day(DAY_ONE_LATE) == "2025-03-01" and utc_day(DAY_TWO_EARLY) == "2025-03-02"


@pytest.mark.parametrize(
    "spent, estimate, over",
    [
        (0.0, 0.5, False),
        (0.5, 0.5, False),  # exactly at the cap is allowed
        (0.5, 0.5001, True),
        (1.0, 0.0, False),  # a free request still fits at the cap
        (1.2, 0.0, True),  # a past overshoot (concurrent answers) blocks everything
    ],
)
def test_ledger_check_against_the_cap(tmp_path, spent, estimate, over):
    ledger = SpendLedger(tmp_path / "spend.sqlite3", 1.0, clock=lambda: DAY_ONE_LATE)
    ledger.record(spent)
    if over:
        with pytest.raises(BudgetExceeded) as caught:
            ledger.check(estimate)
        message = str(caught.value)
        assert f"${spent:.4f}" in message and "$1.00" in message
        assert "resets at 00:00 UTC" in message and "[teacher].daily_budget_usd" in message
    else:
        ledger.check(estimate)


def test_ledger_file_is_wal_with_full_sync(tmp_path):
    path = tmp_path / "spend.sqlite3"
    ledger = SpendLedger(path, 1.0)
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_recorded_spend_survives_kill_9(tmp_path):
    path = tmp_path / "spend.sqlite3"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from appliance.teacher.limits import SpendLedger\n"
        f"SpendLedger(Path(sys.argv[1]), 1.0, clock=lambda: {DAY_ONE_LATE}).record(0.42)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr
    assert SpendLedger(path, 1.0, clock=lambda: DAY_ONE_LATE).spent_today() == pytest.approx(0.42)


def test_ledger_is_thread_safe(tmp_path):
    ledger = SpendLedger(tmp_path / "spend.sqlite3", 100.0)

    def spend():
        for _ in range(25):
            ledger.record(0.01)
            ledger.spent_today()

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.spent_today() == pytest.approx(1.0)


def test_an_unwritable_ledger_says_where_and_what_to_do(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(AthanorError) as caught:
        SpendLedger(blocker / "spend.sqlite3", 1.0)
    assert str(blocker) in str(caught.value) and "writable" in str(caught.value)


def test_concurrent_calls_cannot_all_pass_the_cap_before_any_records(tmp_path):
    """The cap reserves before a call and settles after: two calls of ~$0.6 under a $1 cap, in flight
    together, cannot both go (check-then-act let both through)."""
    from appliance.teacher.limits import Guard
    from appliance.teacher.pricing import Price

    ledger = SpendLedger(tmp_path / "spend.sqlite3", 1.0)
    guard = Guard(ledger, RateLimiter(requests_per_minute=1000, tokens_per_minute=10**9), Price(0.0, 600_000.0),
                  max_retries=0)
    release = asyncio.Event()

    async def attempt():
        await release.wait()
        ledger.record(0.6)
        return "answer"

    async def both():
        first = asyncio.create_task(guard.call(10, 1, attempt))
        await asyncio.sleep(0.05)
        with pytest.raises(BudgetExceeded, match="booked by calls under way"):
            await guard.call(10, 1, attempt)
        release.set()
        return await first

    assert asyncio.run(both()) == "answer"
    assert ledger.spent_today() == pytest.approx(0.6)
    with pytest.raises(BudgetExceeded):  # and after it settled, the spend itself counts
        ledger.check(0.6)
    ledger.check(0.3)  # nothing stays booked


def test_each_api_key_has_its_own_daily_ledger(tmp_path):
    from appliance.teacher.limits import PayerLedgers

    payers = PayerLedgers(tmp_path / "by-key")
    phone = payers.ledger("phone", 0.01)
    phone.record(0.008)
    with pytest.raises(BudgetExceeded, match=r"API key 'phone'.*athanor keys budget phone USD"):
        phone.reserve(0.005)
    assert payers.ledger("laptop", 0.01).reserve(0.005) == 0.005  # another key's spend is its own
    assert payers.ledger("phone", 1.0) is phone and phone.reserve(0.005) == 0.005  # a raised budget holds at once
    payers.close()
    again = PayerLedgers(tmp_path / "by-key")
    assert again.ledger("phone", 0.01).spent_today() == pytest.approx(0.008)  # kept across restarts
    again.close()
