"""The scheduler's admission, batching and queueing rules, on a deterministic counting engine.

The real llama.cpp engine is checked in test_engine and test_batching_engine.
"""

import asyncio
import threading

import pytest

from appliance.engine.scheduler import Overloaded, Scheduler
from appliance.engine.types import SamplingParams, StepResult, TokenEvent


class CountingEngine:
    """A batch engine whose sequences emit `max_tokens` tokens numbered from the prompt's first id.

    Each `step` advances every active sequence by one token and records how many were active;
    `gate` holds the steps so a test can arrange the queue.
    """

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = parallel
        self.gate = threading.Event()
        self.gate.set()
        self.started: list[int] = []
        self.batch_sizes: list[int] = []
        self.removed: list[int] = []
        self.interrupts = 0
        self._seqs: dict[int, list] = {}
        self.prompt_tokens_reused = None
        self.prompt_tokens_computed = None
        self.interrupted_steps = None

    def interrupt(self):
        self.interrupts += 1

    @property
    def free(self) -> int:
        return self.parallel - len(self._seqs)

    def add(self, prompt, params):
        if prompt[0] == 666:
            raise RuntimeError("boom")
        seq = next(s for s in range(self.parallel) if s not in self._seqs)
        self._seqs[seq] = [prompt[0], 0, params.max_tokens]
        self.started.append(prompt[0])
        return seq

    def remove(self, seq):
        if self._seqs.pop(seq, None) is not None:
            self.removed.append(seq)

    def step(self):
        self.gate.wait(5)
        self.batch_sizes.append(len(self._seqs))
        results = []
        for seq, state in list(self._seqs.items()):
            first, produced, limit = state
            if first == 777 and produced == 1:
                results.append(StepResult(seq, error=RuntimeError("decode failed")))
                self.remove(seq)
                continue
            event = TokenEvent(first + produced, str(produced), -0.5, str(produced).encode())
            state[1] += 1
            finished = state[1] >= limit
            results.append(StepResult(seq, event, "length" if finished else None))
            if finished:
                self.remove(seq)
        return results


def params(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n)


async def collect(job):
    return [t.token_id async for t in job.tokens()], job.finish_reason


def test_jobs_are_admitted_in_arrival_order_and_stream_all_tokens():
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


def test_concurrent_jobs_share_decode_steps_and_late_arrivals_join_between_steps():
    async def scenario():
        engine = CountingEngine(parallel=4)
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=10)
        early = [scheduler.submit([1000 * k], params(6)) for k in range(1, 3)]
        while len(engine.started) < 2:
            await asyncio.sleep(0.01)
        engine.gate.set()
        await asyncio.sleep(0.05)
        late = scheduler.submit([5000], params(2))
        results = await asyncio.gather(*(collect(j) for j in early + [late]))
        scheduler.close()
        return engine, results, scheduler.stats()

    engine, results, stats = asyncio.run(scenario())
    assert stats["max_batch"] >= 2 and stats["steps"] == len(engine.batch_sizes) and stats["running"] == 0
    assert [r[0] for r in results] == [list(range(1000, 1006)), list(range(2000, 2006)), [5000, 5001]]
    assert engine.batch_sizes[0] == 2  # both early jobs advanced in one step
    assert max(engine.batch_sizes) <= 4
    assert len(engine.batch_sizes) < 6 + 6 + 2  # fewer steps than decoding them one after another


def test_a_step_wakes_the_event_loop_once_for_all_its_clients():
    async def scenario():
        loop = asyncio.get_running_loop()
        wakes = []
        original = loop.call_soon_threadsafe

        def counted(callback, *args, **kwargs):
            if threading.current_thread().name.startswith("engine-"):
                wakes.append(len(engine.batch_sizes))  # the step it follows
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counted
        engine = CountingEngine(parallel=4)
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=10)
        jobs = [scheduler.submit([1000 * k], params(5)) for k in range(1, 5)]
        while len(engine.started) < 4:
            await asyncio.sleep(0.01)
        engine.gate.set()
        results = await asyncio.gather(*(collect(j) for j in jobs))
        scheduler.close()
        return engine, wakes, results

    engine, wakes, results = asyncio.run(scenario())
    assert [tokens for tokens, _ in results] == [list(range(1000 * k, 1000 * k + 5)) for k in range(1, 5)]
    assert engine.batch_sizes[:5] == [4] * 5
    assert len(wakes) == len(set(wakes))  # at most one wake-up per step for the four streams
    assert len(wakes) <= 5


def test_no_more_than_parallel_sequences_run_and_the_rest_wait_their_turn():
    async def scenario():
        engine = CountingEngine(parallel=2)
        scheduler = Scheduler(engine, max_queue=10)
        jobs = [scheduler.submit([100 * k], params(4)) for k in range(5)]
        results = await asyncio.gather(*(collect(j) for j in jobs))
        scheduler.close()
        return engine, results

    engine, results = asyncio.run(scenario())
    assert max(engine.batch_sizes) == 2
    assert engine.started == [0, 100, 200, 300, 400]
    assert all(reason == "length" and len(tokens) == 4 for tokens, reason in results)


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


def test_cancelling_frees_the_sequence_and_skips_queued_jobs():
    async def scenario():
        engine = CountingEngine()
        scheduler = Scheduler(engine, max_queue=10)
        engine.gate.clear()
        running = scheduler.submit([1], params(1000))
        queued = scheduler.submit([2], params(5))
        after = scheduler.submit([3], params(2))
        while not engine.started:
            await asyncio.sleep(0.01)
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
    assert 0 in engine.removed  # the cancelled running job's sequence went back to the engine


def test_an_engine_error_reaches_only_its_own_client():
    async def scenario():
        scheduler = Scheduler(CountingEngine(parallel=3), max_queue=10)
        bad_admit = scheduler.submit([666], params(1))
        bad_step = scheduler.submit([777], params(5))
        good = scheduler.submit([1], params(3))
        with pytest.raises(RuntimeError, match="boom"):
            await collect(bad_admit)
        with pytest.raises(RuntimeError, match="decode failed"):
            await collect(bad_step)
        result = await collect(good)
        scheduler.close()
        return result

    assert asyncio.run(scenario()) == ([1, 2, 3], "length")


def test_a_job_that_does_not_stream_gets_all_its_tokens_at_the_end():
    async def scenario():
        scheduler = Scheduler(CountingEngine(), max_queue=10)
        job = scheduler.submit([10], params(50), stream=False)
        result = await collect(job)
        scheduler.close()
        return result

    tokens, reason = asyncio.run(scenario())
    assert tokens == list(range(10, 60)) and reason == "length"


def test_close_finishes_admitted_and_queued_jobs_then_refuses_new_ones():
    async def scenario():
        engine = CountingEngine(parallel=1)
        scheduler = Scheduler(engine, max_queue=10)
        jobs = [scheduler.submit([100 * k], params(20)) for k in range(1, 4)]
        closing = asyncio.create_task(asyncio.to_thread(scheduler.close, 10.0))
        results = await asyncio.gather(*(collect(j) for j in jobs))
        await closing
        with pytest.raises(Overloaded, match="shut down"):
            scheduler.submit([9], params(1))
        return results

    results = asyncio.run(scenario())
    assert [reason for _, reason in results] == ["length"] * 3
    assert [len(tokens) for tokens, _ in results] == [20] * 3


def test_close_cancels_what_is_left_at_its_timeout():
    async def scenario():
        engine = CountingEngine(parallel=1)
        scheduler = Scheduler(engine, max_queue=10)
        engine.gate.clear()
        endless = scheduler.submit([1], params(10**9))
        queued = scheduler.submit([2], params(1))
        while not engine.started:
            await asyncio.sleep(0.01)
        closing = asyncio.create_task(asyncio.to_thread(scheduler.close, 0.3))
        engine.gate.set()
        results = await asyncio.gather(collect(endless), collect(queued))
        await closing
        return results

    (_, endless_reason), queued = asyncio.run(scenario())
    assert endless_reason == "cancelled"
    assert queued == ([], "cancelled")


def test_a_request_that_can_start_now_interrupts_the_step_in_progress():
    async def scenario():
        engine = CountingEngine(parallel=2)
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=10)
        first = scheduler.submit([100], params(3))
        while not engine.started:
            await asyncio.sleep(0.01)
        interrupts_alone = engine.interrupts  # nothing was running: nothing to interrupt
        while scheduler.busy == 0:
            await asyncio.sleep(0.01)
        second = scheduler.submit([200], params(3))  # a free sequence waits for it
        with_room = engine.interrupts
        third = scheduler.submit([300], params(3))  # no free sequence: it waits its turn anyway
        engine.gate.set()
        results = await asyncio.gather(*(collect(j) for j in (first, second, third)))
        scheduler.close()
        return interrupts_alone, with_room, engine.interrupts, results

    alone, with_room, total, results = asyncio.run(scenario())
    assert (alone, with_room, total) == (0, 1, 1)
    assert [tokens for tokens, _ in results] == [[100, 101, 102], [200, 201, 202], [300, 301, 302]]
