"""A teacher behind any OpenAI-compatible `/chat/completions` endpoint (OpenAI itself, vLLM, llama.cpp, proxies)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, AsyncIterable, Callable

import httpx

from ..config import TeacherConfig
from ..engine.types import JsonFormat
from .base import TeacherAnswer, TeacherChunk, TeacherError, TeacherParams
from .keys import Secret
from .limits import Guard, RateLimiter, RetryableError, Settle, Sleep, SpendLedger, estimate_tokens, parse_retry_after
from .pricing import Price

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Many compatible servers reject "developer"; "system" means the same to all of them.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# SSE lines end at CR, LF or CRLF only; str.splitlines() (and so httpx's aiter_lines) also breaks at
# U+2028, U+2029 and U+0085, which may stand unescaped inside a JSON string.
_SSE_LINE_END = re.compile(rb"\r\n|\r|\n")


def to_openai(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Chat messages as the endpoint takes them."""
    converted = []
    for message in messages:
        role = message.get("role", "")
        if role not in _ROLES:
            raise TeacherError(f"the teacher cannot take a message with role {role!r}; use system, user or assistant")
        converted.append({"role": _ROLES[role], "content": str(message.get("content") or "")})
    if not any(m["role"] == "user" for m in converted):
        raise TeacherError("the teacher needs at least one user message")
    return converted


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


async def sse_data(chunks: AsyncIterable[bytes]) -> AsyncGenerator[str, None]:
    """The `data` of each server-sent event in a byte stream (multi-line data joined with newlines)."""
    pending = b""
    data: list[bytes] = []
    try:
        async for chunk in chunks:
            pending += chunk
            # A CR at the end may be the first half of a CRLF: hold it until the next bytes show.
            held = pending.endswith(b"\r")
            *lines, pending = _SSE_LINE_END.split(pending[:-1] if held else pending)
            if held:
                pending += b"\r"
            for line in lines:
                if not line:
                    if data:
                        yield b"\n".join(data).decode("utf-8")
                        data = []
                    continue
                name, _, value = line.partition(b":")
                if name == b"data":  # "event:", "id:", "retry:" and ": comments" carry nothing we need
                    data.append(value[1:] if value.startswith(b" ") else value)
    finally:
        # Closed here, in order, rather than by asyncio's finalizer when this generator is left midway.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    if pending.rstrip(b"\r"):
        name, _, value = pending.rstrip(b"\r").partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:  # a last event without its blank line: still worth reading
        yield b"\n".join(data).decode("utf-8")


def _retry_hint(response: httpx.Response) -> float | None:
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(response.headers.get("retry-after"))


class OpenAICompatTeacher:
    """A teacher answering through `POST {base_url}/chat/completions` with a Bearer key."""

    provider = "openai"

    def __init__(
        self,
        cfg: TeacherConfig,
        key: Secret,
        ledger: SpendLedger,
        limiter: RateLimiter,
        price: Price,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.model = cfg.model
        self.name = f"openai:{cfg.model}"
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._shown_url = key.scrub(self.base_url)  # for messages: without a key the URL may carry
        self.timeout_s = cfg.timeout_s
        self._key = key
        self.guard = Guard(ledger, limiter, price, cfg.max_retries, sleep=sleep, rng=rng)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatTeacher(model={self.model!r}, base_url={self._shown_url!r})"

    def _http(self) -> httpx.AsyncClient:
        # A pool's connections belong to the loop that opened them; make one per loop (tests run several).
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                headers={"Authorization": f"Bearer {self._key.reveal()}"},
            )
            self._client_loop = loop
        return self._client

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD the teacher would charge for this many tokens."""
        return self.guard.price.cost(input_tokens, output_tokens)

    def _body(self, messages: list[dict[str, str]], params: TeacherParams, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai(messages),
            # max_tokens, not max_completion_tokens: every compatible server knows it.
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": stream,
        }
        if stream:
            # Without it a stream carries no usage at all (and we would have to charge an estimate).
            body["stream_options"] = {"include_usage": True}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.json_format is not None:
            body["response_format"] = openai_response_format(params.json_format)
        return body

    async def complete(self, messages: list[dict[str, str]], params: TeacherParams) -> TeacherAnswer:
        """One answer from the endpoint; raises `BudgetExceeded` before sending when over the cap, `TeacherError` on failure."""
        body = self._body(messages, params, stream=False)
        estimate = estimate_tokens(messages)
        reserved = estimate + params.max_tokens
        started = time.monotonic()
        data = await self.guard.call(estimate, params.max_tokens, lambda: self._send(body))
        latency = time.monotonic() - started
        return await self._conclude(
            _Reading.of_completion(data),
            estimate,
            lambda used_in, used_out: self.guard.settle(reserved, used_in, used_out),
            latency,
        )

    async def stream(self, messages: list[dict[str, str]], params: TeacherParams) -> AsyncGenerator[TeacherChunk, None]:
        """The answer as the endpoint writes it (`"stream": true`, server-sent events): text deltas, then the finished answer.

        Raises `BudgetExceeded` before sending when over the cap; retries only until the first text is out.
        """
        body = self._body(messages, params, stream=True)
        estimate = estimate_tokens(messages)
        started = time.monotonic()

        async def attempt(settle: Settle) -> AsyncGenerator[TeacherChunk, None]:
            reading = _Reading()
            client = self._http()
            try:
                # A malformed base_url fails here; httpx's InvalidURL is no HTTPError.
                request = client.build_request("POST", f"{self.base_url}/chat/completions", json=body)
                response = await client.send(request, stream=True)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._failure(exc, midway=False) from None
            events: Any = None
            try:
                if response.status_code != 200:
                    try:
                        await response.aread()
                    except httpx.HTTPError as exc:
                        raise self._failure(exc, midway=False) from None
                    raise self._classify(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A compatible server that ignores "stream": true answers in one piece; take it so.
                    try:
                        await response.aread()
                        data = response.json()
                    except httpx.HTTPError as exc:
                        raise self._failure(exc, midway=False) from None
                    except ValueError:
                        raise TeacherError(f"{self.name} sent garbage: the answer is not JSON") from None
                    reading = _Reading.of_completion(data)
                    reading.done = True
                    if reading.pieces:
                        yield TeacherChunk(text=reading.pieces[0])
                    answer = await self._conclude(reading, estimate, settle, time.monotonic() - started)
                    yield TeacherChunk(answer=answer)
                    return
                events = sse_data(response.aiter_bytes())
                while True:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    except httpx.HTTPError as exc:
                        raise self._failure(exc, midway=bool(reading.pieces)) from None
                    except ValueError:  # UnicodeDecodeError
                        raise TeacherError(f"{self.name} sent garbage: a stream that is not UTF-8") from None
                    if event.strip() == "[DONE]":
                        reading.done = True
                        break
                    text = reading.take(self._event(event))
                    if text:
                        yield TeacherChunk(text=text)
            finally:
                if events is not None:
                    await events.aclose()
                await response.aclose()  # releases the connection, also when we stop early
            if not reading.done and reading.finish is None:
                raise RetryableError(f"{self.name}'s stream ended before its answer did (no finish_reason, no [DONE])")
            answer = await self._conclude(reading, estimate, settle, time.monotonic() - started)
            yield TeacherChunk(answer=answer)

        chunks = self.guard.stream(estimate, params.max_tokens, attempt)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    def _event(self, event: str) -> dict[str, Any]:
        """One `chat.completion.chunk` of a stream; raises for an error event or one that is not JSON."""
        try:
            data = json.loads(event)
        except ValueError:
            raise TeacherError(f"{self.name} sent garbage: a stream event that is not JSON") from None
        if not isinstance(data, dict):
            raise TeacherError(f"{self.name} sent garbage: a stream event that is not a JSON object")
        error = data.get("error")
        if error is not None:
            # The status was 200 when the stream began; a failure after it arrives as an event.
            error = error if isinstance(error, dict) else {"message": str(error)}
            message = self._key.scrub(str(error.get("message") or ""))[:300]
            code = error.get("code")
            kind = str(error.get("type") or "")
            what = f"{self.name} failed mid-stream ({kind or code or 'error'}): {message}"
            if code in RETRYABLE_STATUS or code == "rate_limit_exceeded" or kind in ("server_error", "overloaded_error"):
                raise RetryableError(what)
            raise TeacherError(what)
        return data

    async def _send(self, body: dict[str, Any]) -> Any:
        try:
            response = await self._http().post(f"{self.base_url}/chat/completions", json=body)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._failure(exc, midway=False) from None
        if response.status_code != 200:
            raise self._classify(response)
        try:
            return response.json()
        except ValueError:
            raise TeacherError(f"{self.name} sent garbage: the answer is not JSON") from None

    def _failure(self, exc: httpx.HTTPError | httpx.InvalidURL, midway: bool) -> TeacherError:
        """What a transport exception means for us; `midway` when part of the answer had already come."""
        if isinstance(exc, httpx.TimeoutException):
            if midway:
                return RetryableError(f"{self.name} sent nothing more for {self.timeout_s:g} s")
            return RetryableError(f"{self.name} did not answer within {self.timeout_s:g} s")
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return TeacherError(f"cannot reach {self._shown_url!r}; check [teacher].base_url")
        if isinstance(exc, httpx.TransportError):
            if midway:
                return RetryableError(f"lost the connection to {self._shown_url}: {type(exc).__name__}")
            return RetryableError(f"cannot reach {self._shown_url}: {type(exc).__name__}")
        return TeacherError(f"{self.name} sent an unreadable answer: {type(exc).__name__}")

    def _classify(self, response: httpx.Response) -> TeacherError:
        code = response.status_code
        error = _error_of(response)
        if code in (401, 403):
            # OpenAI echoes part of a wrong key in its message; leave the message out entirely.
            return TeacherError(
                f"{self.name} refused the API key ({code}); check the key in [teacher].api_key_env or [teacher].api_key_file"
            )
        message = self._key.scrub(str(error.get("message") or response.reason_phrase or ""))[:300]
        if code == 429 and error.get("code") == "insufficient_quota":
            # Out of credit, not out of breath: retrying cannot help.
            return TeacherError(f"{self.name} has no quota left ({message}); check the account's billing")
        if code in RETRYABLE_STATUS:
            return RetryableError(f"{self.name} answered {code}: {message}", retry_after=_retry_hint(response))
        return TeacherError(f"{self.name} rejected the request ({code}): {message}")

    async def _conclude(self, reading: "_Reading", estimate: int, settle: Settle, latency: float) -> TeacherAnswer:
        """Settle the spend from the usage, then make the answer, or raise for one that is none."""
        text, usage = "".join(reading.pieces), reading.usage
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
            input_tokens, output_tokens = prompt_tokens, completion_tokens
        else:
            # Some compatible servers omit usage: charge our estimate rather than nothing, so the cap still holds.
            input_tokens, output_tokens = estimate, math.ceil(len(text) / 4)
        # Settled before any garbage check: a counted answer was paid for, whatever it holds.
        cost = await settle(input_tokens, output_tokens)
        if not reading.has_choice:
            raise TeacherError(f"{self.name} sent garbage: an answer without choices")
        if not text:
            if reading.refused:
                raise TeacherError(f"{self.name} refused to answer")
            raise TeacherError(f"{self.name} sent garbage: an answer without text")
        return TeacherAnswer(
            text=text,
            model=reading.model or self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            latency_s=latency,
            finish_reason=reading.finish or "stop",
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass
class _Reading:
    """What one answer said so far: a whole `chat.completion`, or the `chat.completion.chunk`s of a stream."""

    pieces: list[str] = field(default_factory=list)
    has_choice: bool = False
    refused: bool = False
    finish: str | None = None
    usage: Any = None
    model: str | None = None
    done: bool = False  # the stream's "data: [DONE]" came

    @classmethod
    def of_completion(cls, data: Any) -> "_Reading":
        reading = cls()
        if not isinstance(data, dict):
            return reading
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        reading._note(data, choice, choice.get("message") if choice else None)
        return reading

    def take(self, chunk: dict[str, Any]) -> str:
        """Note one stream chunk; returns its text delta."""
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        return self._note(chunk, choice, choice.get("delta") if choice else None)

    def _note(self, data: dict[str, Any], choice: dict[str, Any] | None, message: Any) -> str:
        text = message.get("content") if isinstance(message, dict) else None
        text = text if isinstance(text, str) else ""
        if choice is not None:
            self.has_choice = True
            self.finish = str(choice.get("finish_reason") or "") or self.finish
            if isinstance(message, dict) and message.get("refusal"):
                self.refused = True
        if text:
            self.pieces.append(text)
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        model = data.get("model")
        if isinstance(model, str) and model:
            self.model = model
        return text


def openai_response_format(json_format: JsonFormat) -> dict[str, Any]:
    """OpenAI's `response_format` for a JSON constraint."""
    if json_format.schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": json_format.name or "answer", "strict": True,
                                                   "schema": json.loads(json_format.schema)}}
