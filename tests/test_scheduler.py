"""The scheduler's queueing rules, on a deterministic counting engine (the real one is in test_engine)."""

import asyncio
import threading

import pytest

from appliance.engine.scheduler import Overloaded, Scheduler
from appliance.engine.types import SamplingParams, TokenEvent


class CountingEngine:
    """Emits `max_tokens` tokens numbered from the prompt's first id; can be held at a gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started: list[int] = []
        self.steps = 0

    def generate(self, prompt, params, cancelled):
        self.started.append(prompt[0])
        for i in range(params.max_tokens):
            self.gate.wait(5)
            if cancelled():
                return "cancelled"
            self.steps += 1
            yield TokenEvent(prompt[0] + i, str(i), -0.5, str(i).encode())
        return "length"


def params(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n)


async def collect(job):
    return [t.token_id async for t in job.tokens()], job.finish_reason


def test_jobs_run_in_arrival_order_and_stream_all_tokens():
    async def scenario():
        engine = CountingEngine()
        scheduler = Scheduler(engine, max_queue=10)
        jobs = [scheduler.submit([100 * k], params(3)) for k in range(4)]
        results = await asyncio.gather(*(collect(j) for j in jobs))
        scheduler.close()
        return engine.started, results

    started, results = asyncio.run(scenario())
    assert started == [0, 100, 200, 300]
    assert results[2] == ([200, 201, 202], "length")


def test_over_the_bound_is_refused_with_a_retry_hint():
    async def scenario():
        engine = CountingEngine()
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=2)
        first = scheduler.submit([1], params(2))
        while not engine.started:  # the worker has taken the first job: the queue is empty again
            await asyncio.sleep(0.01)
        waiting = [scheduler.submit([2], params(1)), scheduler.submit([3], params(1))]
        with pytest.raises(Overloaded) as raised:
            scheduler.submit([4], params(1))
        engine.gate.set()
        await asyncio.gather(collect(first), *(collect(j) for j in waiting))
        scheduler.close()
        return raised.value

    refused = asyncio.run(scenario())
    assert refused.retry_after >= 1
    assert "2 requests are already waiting" in str(refused)


def test_cancelling_frees_the_slot_and_skips_queued_jobs():
    async def scenario():
        engine = CountingEngine()
        scheduler = Scheduler(engine, max_queue=10)
        engine.gate.clear()
        running = scheduler.submit([1], params(1000))
        queued = scheduler.submit([2], params(5))
        after = scheduler.submit([3], params(2))
        queued.cancel()
        running.cancel()
        engine.gate.set()
        results = await asyncio.gather(collect(running), collect(queued), collect(after))
        scheduler.close()
        return engine, results

    engine, (running, queued, after) = asyncio.run(scenario())
    assert running[1] == "cancelled" and len(running[0]) < 1000
    assert queued == ([], "cancelled")
    assert after == ([3, 4], "length")
    assert 2 not in engine.started  # the cancelled queued job never reached the engine


def test_an_engine_error_reaches_only_its_own_client():
    class Failing(CountingEngine):
        def generate(self, prompt, params, cancelled):
            if prompt[0] == 666:
                raise RuntimeError("boom")
            return super().generate(prompt, params, cancelled)

    async def scenario():
        scheduler = Scheduler(Failing(), max_queue=10)
        bad = scheduler.submit([666], params(1))
        good = scheduler.submit([1], params(1))
        with pytest.raises(RuntimeError, match="boom"):
            await collect(bad)
        result = await collect(good)
        scheduler.close()
        return result

    assert asyncio.run(scenario()) == ([1], "length")


def test_a_job_that_does_not_stream_gets_all_its_tokens_at_the_end():
    async def scenario():
        scheduler = Scheduler(CountingEngine(), max_queue=10)
        job = scheduler.submit([10], params(50), stream=False)
        result = await collect(job)
        scheduler.close()
        return result

    tokens, reason = asyncio.run(scenario())
    assert tokens == list(range(10, 60)) and reason == "length"
