"""Streamed teacher answers end to end: the real google-genai SDK and real httpx against the fakes' real SSE.

Gemini streams through `:streamGenerateContent?alt=sse`, OpenAI-compatible endpoints through `"stream": true`
with `data: [DONE]`. Only time is injected (a recording sleep for the backoff); nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from typing import Any

import httpx
import pytest

from appliance.config import TeacherConfig
from appliance.teacher import BudgetExceeded, TeacherChunk, TeacherError, TeacherParams
from appliance.teacher.limits import RateLimiter, estimate_tokens
from appliance.teacher.openai_compat import sse_data
from appliance.teacher.pricing import price_for
from tests.fakes import FakeGemini, FakeOpenAI, Fault, count_tokens, split_words
from tests.test_teacher_clients import KEY, MODELS, PARAMS, PROVIDERS, QUESTION, WRONG_KEY, Sleeps, build, fake_for, opened

ANSWER = "Paris has been the capital of France since the tenth century"
WORDS = len(ANSWER.split())


def price(provider: str):
    return price_for(TeacherConfig(model=MODELS[provider]))


class Streamed:
    """What one `stream()` gave: its chunks with their arrival times, and the exception that ended it, if any."""

    def __init__(self) -> None:
        self.started = 0.0
        self.chunks: list[TeacherChunk] = []
        self.times: list[float] = []
        self.error: BaseException | None = None

    @property
    def texts(self) -> list[str]:
        return [chunk.text for chunk in self.chunks if chunk.answer is None]

    @property
    def answer(self) -> Any:
        """The final chunk's answer (None if the stream never finished); only the last chunk may carry one."""
        assert all(chunk.answer is None and chunk.text for chunk in self.chunks[:-1])
        return self.chunks[-1].answer if self.chunks else None


def stream(teacher: Any, messages=QUESTION, params: TeacherParams = PARAMS, leave_after: int | None = None) -> Streamed:
    """Run one `stream()` on a fresh loop; `leave_after` text chunks, the caller stops reading and closes it."""
    result = Streamed()

    async def go() -> None:
        async with opened(teacher):
            chunks = teacher.stream(messages, params)
            result.started = time.monotonic()
            try:
                async for chunk in chunks:
                    result.times.append(time.monotonic())
                    result.chunks.append(chunk)
                    if leave_after is not None and len(result.chunks) >= leave_after:
                        break
            except Exception as exc:  # kept so tests can inspect it beside the fake's record
                result.error = exc
            finally:
                await chunks.aclose()

    asyncio.run(go())
    return result


def fake_answering(provider: str, **options: Any):
    return fake_for(provider, answer=lambda prompt: ANSWER, **options)


# -- answers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_answer_comes_in_order_while_the_teacher_is_still_writing(provider, tmp_path):
    with fake_answering(provider, chunk_delay=0.15) as fake:
        teacher = build(provider, fake, tmp_path)
        got = stream(teacher)
        request = fake.last
    assert got.error is None
    # One chunk a word, in order, and the final answer is their sum.
    assert got.texts == split_words(ANSWER) and len(got.texts) == WORDS
    answer = got.answer
    assert got.chunks[-1].final and got.chunks[-1].text == "" and answer.text == ANSWER == "".join(got.texts)
    # The first words arrived long before the fake wrote its last byte (at least WORDS - 1 delays later).
    assert request.finished_at is not None
    assert got.times[0] < request.finished_at - 0.6
    assert got.times[len(got.texts) - 1] - got.times[0] > 0.6  # and the rest as they were written
    assert answer.latency_s >= got.times[len(got.texts) - 1] - got.times[0]  # from before the request to the end
    assert (answer.model, answer.finish_reason) == (MODELS[provider], "stop")
    if provider == "gemini":
        assert request.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        assert request.query == {"alt": "sse"}
    else:
        assert request.body["stream"] is True and request.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_and_cost_come_from_the_final_usage_and_are_recorded_once(provider, tmp_path):
    # Gemini repeats the prompt's count in every chunk: summing chunks would count it once a word.
    with fake_answering(provider) as fake:
        teacher = build(provider, fake, tmp_path)

        async def twice():
            async with opened(teacher):
                return [[chunk async for chunk in teacher.stream(QUESTION, PARAMS)][-1].answer for _ in range(2)]

        first, second = asyncio.run(twice())
    assert first.input_tokens == count_tokens(QUESTION[0]["content"]) and first.output_tokens == WORDS
    assert first.cost_usd == pytest.approx(price(provider).cost(first.input_tokens, first.output_tokens))
    assert second == dataclasses.replace(first, latency_s=second.latency_s)
    assert teacher.guard.ledger.spent_today() == pytest.approx(2 * first.cost_usd)


def test_gemini_streamed_thinking_tokens_are_billed_as_output(tmp_path):
    with fake_answering("gemini", thoughts_tokens=50) as fake:
        teacher = build("gemini", fake, tmp_path)
        answer = stream(teacher).answer
    assert answer.output_tokens == WORDS + 50
    assert teacher.guard.ledger.spent_today() == pytest.approx(price("gemini").cost(answer.input_tokens, WORDS + 50))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_answer_cut_by_max_tokens_says_length(provider, tmp_path):
    with fake_answering(provider) as fake:
        got = stream(build(provider, fake, tmp_path), params=TeacherParams(max_tokens=3))
    assert got.texts == ["Paris", " has", " been"]
    assert (got.answer.text, got.answer.output_tokens, got.answer.finish_reason) == ("Paris has been", 3, "length")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unicode_line_separators_and_accents_survive_the_stream(provider, tmp_path):
    # The APIs send UTF-8 unescaped; U+2028 inside a JSON string is not an SSE line end.
    text = "Ça\u2028va très\u2029bien ✓ \u0085fin"
    with fake_for(provider, answer=lambda prompt: text) as fake:
        got = stream(build(provider, fake, tmp_path))
    assert got.error is None and got.answer.text == text == "".join(got.texts)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_complete_still_answers_in_one_piece(provider, tmp_path):
    with fake_answering(provider) as fake:
        teacher = build(provider, fake, tmp_path)

        async def both():
            async with opened(teacher):
                whole = await teacher.complete(QUESTION, PARAMS)
                streamed = [chunk async for chunk in teacher.stream(QUESTION, PARAMS)]
                return whole, streamed[-1].answer

        whole, streamed = asyncio.run(both())
        paths = [request.path for request in fake.requests]
    assert whole.text == streamed.text == ANSWER and whole.cost_usd == streamed.cost_usd
    if provider == "gemini":
        assert paths == ["/v1beta/models/gemini-2.5-flash:generateContent", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"]
    else:
        assert [request.body["stream"] for request in fake.requests] == [False, True]


def test_an_openai_compatible_server_that_ignores_stream_true_is_taken_in_one_piece(tmp_path):
    class NotStreaming(FakeOpenAI):
        def handle_stream(self, routed, body):
            return self.handle(routed, {k: v for k, v in body.items() if k not in ("stream", "stream_options")})

    with NotStreaming(api_key=KEY, answer=lambda prompt: ANSWER) as fake:
        teacher = build("openai", fake, tmp_path)
        got = stream(teacher)
        attempts = len(fake.requests)
    assert got.error is None and got.texts == [ANSWER] and got.answer.text == ANSWER and attempts == 1
    assert teacher.guard.ledger.spent_today() == pytest.approx(got.answer.cost_usd) and got.answer.cost_usd > 0


# -- retries before the first chunk -------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_429_before_the_first_chunk_is_retried(provider, tmp_path):
    sleeps = Sleeps()
    with fake_answering(provider) as fake:
        fake.fail(Fault(status=429, retry_after=7))
        teacher = build(provider, fake, tmp_path, sleeps=sleeps)
        got = stream(teacher)
        attempts = len(fake.requests)
    assert got.error is None and got.answer.text == ANSWER and got.texts == split_words(ANSWER)
    assert attempts == 2
    assert sleeps.calls == [7.0]  # the server's hint, not our backoff
    assert teacher.guard.ledger.spent_today() == pytest.approx(got.answer.cost_usd)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_error_event_before_any_text_is_retried(provider, tmp_path):
    # The stream began (200) but failed before its first word: nothing went out, so it is asked again.
    sleeps = Sleeps()
    with fake_answering(provider) as fake:
        fake.fail(Fault(status=503, cut_after=0))
        got = stream(build(provider, fake, tmp_path, sleeps=sleeps))
        attempts = len(fake.requests)
    assert got.error is None and got.answer.text == ANSWER
    assert attempts == 2 and sleeps.calls == [0.5]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_5xx_before_the_first_chunk_until_retries_are_exhausted(provider, tmp_path):
    sleeps = Sleeps()
    with fake_answering(provider) as fake:
        fake.fail_times(3, status=502)
        teacher = build(provider, fake, tmp_path, max_retries=2, sleeps=sleeps)
        got = stream(teacher)
        attempts = len(fake.requests)
    assert type(got.error) is TeacherError and "after 3 attempts" in str(got.error) and "502" in str(got.error)
    assert "<html" not in str(got.error).lower()
    assert got.chunks == [] and attempts == 3 and sleeps.calls == [0.5, 1.0]
    assert teacher.guard.ledger.spent_today() == 0.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_timeout_before_the_first_chunk_is_retried(provider, tmp_path):
    with fake_answering(provider) as fake:
        fake.fail(Fault(delay=3.0))
        got = stream(build(provider, fake, tmp_path, max_retries=1, timeout_s=0.5))
        attempts = len(fake.requests)
    assert got.error is None and got.answer.text == ANSWER and attempts == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_calls_that_never_answer_name_the_timeout(provider, tmp_path):
    with fake_answering(provider) as fake:
        fake.fail_times(2, delay=3.0)
        got = stream(build(provider, fake, tmp_path, max_retries=1, timeout_s=0.5))
    assert type(got.error) is TeacherError and "did not answer within 0.5 s" in str(got.error)


# -- failures after the first chunk -------------------------------------------------------------------


def estimated_cost(provider: str, text: str) -> float:
    return price(provider).cost(estimate_tokens(QUESTION), math.ceil(len(text) / 4))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_connection_lost_after_the_first_chunk_is_a_teacher_error_not_a_retry(provider, tmp_path):
    sleeps = Sleeps()
    with fake_answering(provider) as fake:
        fake.fail(Fault(cut_after=2))
        teacher = build(provider, fake, tmp_path, sleeps=sleeps)
        got = stream(teacher)
        attempts = len(fake.requests)
    assert got.texts == ["Paris", " has"] and got.answer is None
    assert type(got.error) is TeacherError
    assert "mid-answer" in str(got.error) and "not retried" in str(got.error) and "ask again" in str(got.error)
    assert attempts == 1 and sleeps.calls == []
    # The provider billed what it wrote but its usage never came: charged once, at our estimate.
    assert teacher.guard.ledger.spent_today() == pytest.approx(estimated_cost(provider, "Paris has"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_error_event_after_the_first_chunk_is_a_teacher_error_not_a_retry(provider, tmp_path):
    with fake_answering(provider) as fake:
        fake.fail(Fault(status=503, cut_after=1))
        teacher = build(provider, fake, tmp_path)
        got = stream(teacher)
        attempts = len(fake.requests)
    assert got.texts == ["Paris"] and type(got.error) is TeacherError
    assert "mid-answer" in str(got.error) and "overloaded" in str(got.error)
    assert attempts == 1
    assert teacher.guard.ledger.spent_today() == pytest.approx(estimated_cost(provider, "Paris"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_that_goes_silent_midway_times_out_as_a_teacher_error(provider, tmp_path):
    with fake_answering(provider) as fake:
        fake.fail(Fault(cut_after=1, stall=3.0))
        got = stream(build(provider, fake, tmp_path, timeout_s=0.5))
        attempts = len(fake.requests)
    assert got.texts == ["Paris"] and type(got.error) is TeacherError
    assert "sent nothing more for 0.5 s" in str(got.error) and attempts == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_caller_leaving_early_closes_the_stream_and_pays_for_what_came(provider, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with fake_answering(provider, chunk_delay=0.1) as fake:
        teacher = build(provider, fake, tmp_path)
        got = stream(teacher, leave_after=2)
        # The connection was dropped: the fake's next write, a delay later, finds nobody reading.
        assert fake.last.hung_up.wait(5.0) and fake.last.finished_at is None
    assert got.texts == ["Paris", " has"] and got.error is None
    assert teacher.guard.ledger.spent_today() == pytest.approx(estimated_cost(provider, "Paris has"))
    # google-genai's nested generators, left to asyncio's finalizer, would race to close the stream.
    assert "asynchronous generator" not in caplog.text


# -- failures that must not be retried ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, words",
    [
        ("json", "garbage"),  # an event whose data is not JSON
        ("empty", "garbage"),  # events without candidates / choices
        ("blocked", "refused"),  # the provider declined to answer
    ],
)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_garbage_streams_are_teacher_errors_without_retry(provider, kind, words, tmp_path):
    with fake_answering(provider) as fake:
        fake.fail(Fault(garbage=kind))
        got = stream(build(provider, fake, tmp_path))
        attempts = len(fake.requests)
    assert type(got.error) is TeacherError and words in str(got.error)
    assert got.chunks == [] and attempts == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_key_fails_the_stream_at_once_without_leaking(provider, tmp_path):
    with fake_answering(provider) as fake:
        got = stream(build(provider, fake, tmp_path, key=WRONG_KEY))
        attempts = len(fake.requests)
    assert type(got.error) is TeacherError and "[teacher].api_key_env" in str(got.error) and attempts == 1
    assert WRONG_KEY not in str(got.error) and WRONG_KEY[-4:] not in str(got.error)


# -- budget and rate limit ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_exhausted_budget_refuses_the_stream_before_any_call(provider, tmp_path):
    with fake_answering(provider) as fake:
        teacher = build(provider, fake, tmp_path, budget=0.01)
        teacher.guard.ledger.record(0.01)
        got = stream(teacher)
        assert fake.requests == []
    assert isinstance(got.error, BudgetExceeded) and got.chunks == []
    assert "$0.0100 of $0.01" in str(got.error) and "00:00 UTC" in str(got.error)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_streams_estimate_counts_against_the_budget_too(provider, tmp_path):
    with fake_answering(provider) as fake:
        got = stream(build(provider, fake, tmp_path, budget=0.001), params=TeacherParams(max_tokens=100_000))
        assert isinstance(got.error, BudgetExceeded) and fake.requests == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streams_wait_for_the_rate_limiter(provider, tmp_path):
    now = [0.0]
    waits = Sleeps()
    limiter = RateLimiter(1, 10**6, clock=lambda: now[0], sleep=waits)
    with fake_answering(provider) as fake:
        teacher = build(provider, fake, tmp_path, limiter=limiter)

        async def twice():
            async with opened(teacher):
                for _ in range(2):
                    async for _chunk in teacher.stream(QUESTION, PARAMS):
                        pass

        asyncio.run(twice())
        assert len(fake.requests) == 2
    assert waits.calls == [pytest.approx(60.0)]


# -- the fakes speak the real streaming protocols -----------------------------------------------------


def events_of(response: httpx.Response, separator: bytes) -> list[str]:
    body = response.content
    assert body.endswith(separator)
    return [event.removeprefix(b"data: ").decode() for event in body.split(separator) if event]


def test_fake_gemini_streams_sse_like_the_real_api():
    with FakeGemini(api_key=KEY, answer=lambda prompt: "one two three") as fake:
        url = f"{fake.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
        ok = httpx.post(url, params={"alt": "sse"}, json=body, headers={"x-goog-api-key": KEY})
        fake.fail(Fault(status=429, retry_after=2))
        limited = httpx.post(url, params={"alt": "sse"}, json=body, headers={"x-goog-api-key": KEY})
    assert ok.status_code == 200 and ok.headers["content-type"] == "text/event-stream"
    assert ok.headers["transfer-encoding"] == "chunked"
    events = [json.loads(event) for event in events_of(ok, b"\r\n\r\n")]
    assert ["".join(p["text"] for p in e["candidates"][0]["content"]["parts"]) for e in events] == ["one", " two", " three"]
    assert [e["candidates"][0].get("finishReason") for e in events] == [None, None, "STOP"]
    assert len({e["responseId"] for e in events}) == 1
    assert events[0]["usageMetadata"] == {**events[0]["usageMetadata"], "promptTokenCount": 2, "totalTokenCount": 2}
    assert "candidatesTokenCount" not in events[0]["usageMetadata"]
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 3 and events[-1]["usageMetadata"]["totalTokenCount"] == 5
    # An error before the stream begins is a plain HTTP error, as from generateContent.
    assert limited.status_code == 429 and limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_fake_openai_streams_sse_like_the_real_api():
    with FakeOpenAI(api_key=KEY, answer=lambda prompt: "one two three") as fake:
        url = f"{fake.base_url}/chat/completions"
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "stream": True}
        plain = httpx.post(url, json=body, headers=auth)
        with_usage = httpx.post(url, json={**body, "stream_options": {"include_usage": True}}, headers=auth)
        misplaced = httpx.post(url, json={**body, "stream": False, "stream_options": {"include_usage": True}}, headers=auth)
        fake.fail(Fault(status=503, cut_after=1))
        broken = httpx.post(url, json=body, headers=auth)
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/event-stream")
    events = events_of(plain, b"\n\n")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["one", " two", " three"]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    usage_chunks = [json.loads(event) for event in events_of(with_usage, b"\n\n")[:-1]]
    assert all(c["usage"] is None for c in usage_chunks[:-1])
    assert usage_chunks[-1]["choices"] == [] and usage_chunks[-1]["usage"]["completion_tokens"] == 3
    assert misplaced.status_code == 400 and "stream_options" in misplaced.json()["error"]["message"]
    broken_events = events_of(broken, b"\n\n")
    assert "[DONE]" not in broken_events and json.loads(broken_events[-1])["error"]["type"] == "server_error"


# -- the SSE reader -----------------------------------------------------------------------------------


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def read_events(*parts: bytes) -> list[str]:
    async def go():
        return [event async for event in sse_data(_chunks(*parts))]

    return asyncio.run(go())


def test_sse_reader_splits_at_cr_lf_and_crlf_only_across_any_chunking():
    stream_bytes = (
        b": a comment\r\n"
        b"event: message\r\ndata: {\"a\": \"x\xe2\x80\xa8y\"}\r\n\r\n"  # U+2028 inside the JSON is no line end
        b"data: first\rdata: second\r\r"  # CR alone, and two data lines joined by a newline
        b"data:no-space\n\n"
        b"data: [DONE]"  # the last event without its blank line
    )
    expected = ['{"a": "x\u2028y"}', "first\nsecond", "no-space", "[DONE]"]
    assert read_events(stream_bytes) == expected
    # One byte at a time splits every CRLF and every multi-byte character.
    assert read_events(*[stream_bytes[i : i + 1] for i in range(len(stream_bytes))]) == expected
