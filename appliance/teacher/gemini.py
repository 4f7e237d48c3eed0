"""The Gemini teacher, through Google's maintained SDK (`google.genai`), with our own retries and spend cap."""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import random
import time
from types import ModuleType
from typing import Any, AsyncGenerator, Callable

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..config import TeacherConfig
from .base import TeacherAnswer, TeacherChunk, TeacherError, TeacherParams
from .keys import Secret
from .limits import Guard, RateLimiter, RetryableError, Settle, Sleep, SpendLedger, estimate_tokens, parse_retry_after
from .pricing import Price

httpx2: ModuleType | None
try:  # google.genai sends through httpx2 when it is installed, else httpx; catch both.
    import httpx2
except ImportError:  # pragma: no cover - depends on the environment
    httpx2 = None

# The REST docs and every proxy speak v1beta; pin it rather than follow the SDK's default.
API_VERSION = "v1beta"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_HTTP = (httpx,) if httpx2 is None else (httpx, httpx2)
_TIMEOUTS = tuple(module.TimeoutException for module in _HTTP)
_BAD_URLS = tuple(cls for module in _HTTP for cls in (module.UnsupportedProtocol, module.InvalidURL))
_TRANSPORT = tuple(module.TransportError for module in _HTTP)
_ROLES = {"user": "user", "assistant": "model"}
_SYSTEM_ROLES = ("system", "developer")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_REFUSALS = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
# What the SDK raises on a malformed 200 answer (its JSON and pydantic parsing).
_PARSING = (ValueError, TypeError, KeyError, AttributeError)
_FAILURES = (genai_errors.APIError, *_TRANSPORT, *_BAD_URLS, *_PARSING)
# The HTTP responses a stream opens, so that it can close them itself (see `GeminiTeacher.stream`).
_OPENED: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("gemini_opened", default=None)


async def _note_response(response: Any) -> None:
    opened = _OPENED.get()
    if opened is not None:
        opened.append(response)


def to_gemini(messages: list[dict[str, str]]) -> tuple[str | None, list[types.Content]]:
    """Split chat messages into Gemini's system instruction and its user/model turns."""
    system: list[str] = []
    contents: list[types.Content] = []
    for message in messages:
        role = message.get("role", "")
        text = str(message.get("content") or "")
        if role in _SYSTEM_ROLES:
            system.append(text)
        elif role in _ROLES:
            contents.append(types.Content(role=_ROLES[role], parts=[types.Part(text=text)]))
        else:
            raise TeacherError(f"the teacher cannot take a message with role {role!r}; use system, user or assistant")
    if not any(content.role == "user" for content in contents):
        raise TeacherError("the teacher needs at least one user message")
    return ("\n\n".join(system) if system else None), contents


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value) or "")


def _retry_hint(exc: genai_errors.APIError) -> float | None:
    """Seconds the server asked us to wait: the Retry-After header, else Google's RetryInfo detail."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    seconds = parse_retry_after(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    error = exc.details.get("error", exc.details) if isinstance(exc.details, dict) else {}
    for detail in error.get("details", []) if isinstance(error, dict) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                pass
    return None


def _is_key_problem(exc: genai_errors.APIError) -> bool:
    # Gemini answers a wrong key with 400 INVALID_ARGUMENT / API_KEY_INVALID, a missing one with 403.
    return exc.code in (401, 403) or "API_KEY_INVALID" in str(exc.details) or "API key not valid" in str(exc.message)


class GeminiTeacher:
    """A teacher answering through the Gemini API (`generateContent`)."""

    provider = "gemini"

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
        self.name = f"gemini:{cfg.model}"
        # For messages and repr only, without a key a proxy URL may carry (`?key=`, `user:password@`).
        self.base_url = key.scrub(cfg.base_url) if cfg.base_url else None
        self.timeout_s = cfg.timeout_s
        self._key = key
        self.guard = Guard(ledger, limiter, price, cfg.max_retries, sleep=sleep, rng=rng)
        self._client = genai.Client(
            vertexai=False,  # never switch to Vertex because GOOGLE_GENAI_USE_VERTEXAI happens to be set
            api_key=key.reveal(),
            http_options=types.HttpOptions(
                base_url=cfg.base_url or None,
                api_version=API_VERSION,
                # Milliseconds; at least 1, since 0 would mean "no timeout" to the SDK.
                timeout=max(1, int(cfg.timeout_s * 1000)),
                # One attempt per SDK call: our retries count attempts, honour the budget and the rate limit.
                retry_options=types.HttpRetryOptions(attempts=1),
                async_client_args={"event_hooks": {"response": [_note_response]}},
            ),
        )

    def __repr__(self) -> str:
        return f"GeminiTeacher(model={self.model!r}, base_url={self.base_url!r})"

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD the teacher would charge for this many tokens."""
        return self.guard.price.cost(input_tokens, output_tokens)

    async def complete(self, messages: list[dict[str, str]], params: TeacherParams) -> TeacherAnswer:
        """One answer from Gemini; raises `BudgetExceeded` before sending when over the cap, `TeacherError` on failure."""
        system, contents = to_gemini(messages)
        config = self._config(system, params)
        estimate = estimate_tokens(messages)
        reserved = estimate + params.max_tokens
        started = time.monotonic()
        response = await self.guard.call(estimate, params.max_tokens, lambda: self._send(contents, config))
        latency = time.monotonic() - started
        reading = _Reading()
        reading.take(response)
        return await self._conclude(
            reading, estimate, lambda used_in, used_out: self.guard.settle(reserved, used_in, used_out), latency
        )

    async def stream(self, messages: list[dict[str, str]], params: TeacherParams) -> AsyncGenerator[TeacherChunk, None]:
        """The answer as Gemini writes it (`streamGenerateContent?alt=sse`): text deltas, then the finished answer.

        Raises `BudgetExceeded` before sending when over the cap; retries only until the first text is out.
        """
        system, contents = to_gemini(messages)
        config = self._config(system, params)
        estimate = estimate_tokens(messages)
        started = time.monotonic()

        async def attempt(settle: Settle) -> AsyncGenerator[TeacherChunk, None]:
            reading = _Reading()
            responses: Any = None
            opened: list[Any] = []
            try:
                try:
                    responses = await self._client.aio.models.generate_content_stream(
                        model=self.model, contents=contents, config=config
                    )
                except _FAILURES as exc:
                    raise self._failure(exc, midway=False) from None
                while True:
                    token = _OPENED.set(opened)  # set and reset within one step: a yield may change the context
                    try:
                        response = await anext(responses)
                    except StopAsyncIteration:
                        break
                    except _FAILURES as exc:
                        raise self._failure(exc, midway=bool(reading.pieces)) from None
                    finally:
                        _OPENED.reset(token)
                    text = reading.take(response)
                    if text:
                        yield TeacherChunk(text=text)
            finally:
                # A stream left midway (an error event, or the caller stopping) leaves the SDK's nested
                # generators to asyncio's finalizer, whose tasks then race to close the same HTTP stream
                # ("aclose(): asynchronous generator is already running"). Closing the response first,
                # here, releases the connection at once and leaves them nothing to race over.
                for http_response in opened:
                    await http_response.aclose()
                if responses is not None:
                    await responses.aclose()
            if reading.has_candidate and not reading.reason:
                # Every real stream ends with a finish reason; without one the answer was cut short.
                raise RetryableError("gemini's stream ended before its answer did (no finish reason)")
            answer = await self._conclude(reading, estimate, settle, time.monotonic() - started)
            yield TeacherChunk(answer=answer)

        chunks = self.guard.stream(estimate, params.max_tokens, attempt)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    @staticmethod
    def _config(system: str | None, params: TeacherParams) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(
            system_instruction=system,
            max_output_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop_sequences=list(params.stop) or None,
            seed=params.seed,
            # JSON mode: Gemini's own terms for OpenAI's response_format.
            response_mime_type="application/json" if params.json_format is not None else None,
            response_json_schema=json.loads(params.json_format.schema)
            if params.json_format is not None and params.json_format.schema else None,
            # No tools are passed; this only keeps the SDK from logging "AFC is enabled" on every call.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    async def _send(self, contents: list[types.Content], config: types.GenerateContentConfig) -> types.GenerateContentResponse:
        try:
            return await self._client.aio.models.generate_content(model=self.model, contents=contents, config=config)
        except _FAILURES as exc:
            raise self._failure(exc, midway=False) from None

    def _failure(self, exc: BaseException, midway: bool) -> TeacherError:
        """What an SDK or transport exception means for us; `midway` when part of the answer had already come."""
        if isinstance(exc, genai_errors.APIError):
            return self._classify(exc)
        if isinstance(exc, _TIMEOUTS):
            if midway:
                return RetryableError(f"gemini sent nothing more for {self.timeout_s:g} s")
            return RetryableError(f"gemini did not answer within {self.timeout_s:g} s")
        if isinstance(exc, _BAD_URLS):
            return TeacherError(f"cannot reach gemini at {self.base_url!r}; check [teacher].base_url")
        if isinstance(exc, _TRANSPORT):
            if midway:
                return RetryableError(f"lost the connection to gemini: {type(exc).__name__}")
            return RetryableError(f"cannot reach gemini: {type(exc).__name__}")
        # The SDK's JSON and pydantic parsing of a malformed 200 answer ends up here.
        return TeacherError(f"gemini sent garbage: {type(exc).__name__} while reading its answer")

    def _classify(self, exc: genai_errors.APIError) -> TeacherError:
        code = exc.code or 0
        message = str(exc.message or "")
        if "<html" in message.lower():
            message = ""  # a load balancer's error page says nothing the status does not
        detail = self._key.scrub(f"{code} {exc.status or ''}: {message}".strip(" :"))[:300]
        if _is_key_problem(exc):
            return TeacherError(
                f"gemini refused the API key ({code} {exc.status or ''}); "
                "check the key in [teacher].api_key_env or [teacher].api_key_file"
            )
        if code in RETRYABLE_STATUS:
            return RetryableError(f"gemini answered {detail}", retry_after=_retry_hint(exc))
        return TeacherError(f"gemini rejected the request: {detail}")

    async def _conclude(self, reading: "_Reading", estimate: int, settle: Settle, latency: float) -> TeacherAnswer:
        """Settle the spend from the usage, then make the answer, or raise for one that is none."""
        text, reason, usage = "".join(reading.pieces), reading.reason, reading.usage
        if usage is not None and usage.prompt_token_count is not None:
            input_tokens = usage.prompt_token_count
            # Thinking tokens are billed as output.
            output_tokens = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        else:
            # No usage in the answer: charge our estimate rather than nothing, so the cap still holds.
            input_tokens, output_tokens = estimate, math.ceil(len(text) / 4)
        # Settled before any garbage check: a counted answer was paid for, whatever it holds.
        cost = await settle(input_tokens, output_tokens)
        if not reading.has_candidate:
            feedback = reading.feedback
            if feedback is not None and feedback.block_reason:
                raise TeacherError(f"gemini refused the prompt ({_enum_name(feedback.block_reason)})")
            raise TeacherError("gemini sent garbage: an answer without candidates")
        if not text:
            if reason in _REFUSALS:
                raise TeacherError(f"gemini refused to answer ({reason})")
            if reason == "MAX_TOKENS":
                # Gemini 2.5 thinks before it answers, and the thinking counts against max_output_tokens.
                raise TeacherError("gemini spent all of max_tokens before answering (thinking counts); ask for more tokens")
            raise TeacherError(f"gemini sent garbage: an answer without text (finish reason {reason or 'none'})")
        return TeacherAnswer(
            text=text,
            model=reading.model_version or self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            latency_s=latency,
            finish_reason=_FINISH.get(reason, "content_filter" if reason in _REFUSALS else "stop"),
        )

    async def aclose(self) -> None:
        """Close the SDK's connection pools."""
        await self._client.aio.aclose()


class _Reading:
    """What the responses of one answer said so far: one response for `generateContent`, several for a stream.

    Text accumulates; the finish reason, usage (cumulative in each chunk) and model are the latest given.
    """

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.reason = ""
        self.usage: types.GenerateContentResponseUsageMetadata | None = None
        self.model_version: str | None = None
        self.feedback: types.GenerateContentResponsePromptFeedback | None = None
        self.has_candidate = False

    def take(self, response: types.GenerateContentResponse) -> str:
        """Note one response; returns its answer text (thoughts left out)."""
        candidate = response.candidates[0] if response.candidates else None
        text = ""
        if candidate is not None:
            self.has_candidate = True
            self.reason = _enum_name(candidate.finish_reason) or self.reason
            parts = candidate.content.parts if candidate.content and candidate.content.parts else []
            text = "".join(part.text for part in parts if part.text and not part.thought)
        if text:
            self.pieces.append(text)
        if response.usage_metadata is not None:
            self.usage = response.usage_metadata
        self.model_version = response.model_version or self.model_version
        if response.prompt_feedback is not None:
            self.feedback = response.prompt_feedback
        return text
