"""A teacher behind any OpenAI-compatible `/chat/completions` endpoint (OpenAI itself, vLLM, llama.cpp, proxies)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any, Callable

import httpx

from ..config import TeacherConfig
from .base import TeacherAnswer, TeacherError, TeacherParams
from .keys import Secret
from .limits import Guard, RateLimiter, RetryableError, Sleep, SpendLedger, estimate_tokens, parse_retry_after
from .pricing import Price

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Many compatible servers reject "developer"; "system" means the same to all of them.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


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

    async def complete(self, messages: list[dict[str, str]], params: TeacherParams) -> TeacherAnswer:
        """One answer from the endpoint; raises `BudgetExceeded` before sending when over the cap, `TeacherError` on failure."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai(messages),
            # max_tokens, not max_completion_tokens: every compatible server knows it.
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": False,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        estimate = estimate_tokens(messages)
        started = time.monotonic()
        data = await self.guard.call(estimate, params.max_tokens, lambda: self._send(body))
        return await self._answer(data, estimate, estimate + params.max_tokens, time.monotonic() - started)

    async def _send(self, body: dict[str, Any]) -> Any:
        try:
            response = await self._http().post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise RetryableError(f"{self.name} did not answer within {self.timeout_s:g} s") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise TeacherError(f"cannot reach {self._shown_url!r}; check [teacher].base_url") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"cannot reach {self._shown_url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise self._classify(response)
        try:
            return response.json()
        except ValueError:
            raise TeacherError(f"{self.name} sent garbage: the answer is not JSON") from None

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

    async def _answer(self, data: Any, estimate: int, reserved: int, latency: float) -> TeacherAnswer:
        choices = data.get("choices") if isinstance(data, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        message = choice.get("message") if choice else None
        text = message.get("content") if isinstance(message, dict) else None
        text = text if isinstance(text, str) else ""
        usage = data.get("usage") if isinstance(data, dict) else None
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
            input_tokens, output_tokens = prompt_tokens, completion_tokens
        else:
            # Some compatible servers omit usage: charge our estimate rather than nothing, so the cap still holds.
            input_tokens, output_tokens = estimate, math.ceil(len(text) / 4)
        # Settled before any garbage check: a counted answer was paid for, whatever it holds.
        cost = await self.guard.settle(reserved, input_tokens, output_tokens)
        if choice is None:
            raise TeacherError(f"{self.name} sent garbage: an answer without choices")
        if not text:
            refusal = message.get("refusal") if isinstance(message, dict) else None
            if refusal:
                raise TeacherError(f"{self.name} refused to answer")
            raise TeacherError(f"{self.name} sent garbage: an answer without text")
        model = data.get("model")
        return TeacherAnswer(
            text=text,
            model=model if isinstance(model, str) and model else self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            latency_s=latency,
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
