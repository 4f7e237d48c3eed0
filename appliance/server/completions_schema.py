"""`POST /v1/completions`, OpenAI's legacy text completions: the wire format, validated, and the answers.

The prompt is continued as it is (no chat template; chat markup written in it is read as such, as
llama-server does), by the student alone. Fields this endpoint cannot honour (`echo`, `suffix`,
`best_of` > 1, several prompts) are a 400 naming them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import Field, ValidationError

from ..engine.types import TokenEvent
from .errors import ApiError
from .openai_schema import SamplingRequest, _describe, parse_json_body, usage

DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for this endpoint (chat completions default to the rest of the context)."""


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=1)
    echo: bool = False
    suffix: str | None = None

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def _refuse(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="unsupported_value")


def parse_completion_request(body: bytes) -> CompletionRequest:
    data = parse_json_body(body)
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and (len(prompt) != 1 or not isinstance(prompt[0], str)):
        raise _refuse("prompt", "one prompt (a string, or a list of one string) per request; token arrays and "
                                "batches of prompts are not supported: send one request each")
    if data.get("echo") is True:
        raise _refuse("echo", "true is not supported: the answer never repeats the prompt; prepend it yourself")
    if data.get("suffix") not in (None, ""):
        raise _refuse("suffix", "insertion (fill-in-the-middle) is not supported by the chat students served here")
    try:
        request = CompletionRequest.model_validate(data)
    except ValidationError as exc:
        param, message, code = _describe(exc.errors(), data)
        raise ApiError(400, f"{param}: {message}" if param else message, param=param, code=code) from None
    if not request.text:
        raise ApiError(400, "prompt is empty", param="prompt", code="invalid_value")
    return request


def legacy_logprobs(tokens: list[TokenEvent], top: int, offset: int = 0) -> dict[str, Any]:
    """The completions endpoint's logprobs object (token strings, their log-probabilities, the top
    alternatives at each step as {token: logprob}, and each token's offset in the text)."""
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{alt.token: alt.logprob for alt in t.top[:top]} for t in tokens] if top else None,
            "text_offset": offsets}


def text_completion_body(completion_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                         completion_tokens: int, tokens: list[TokenEvent], logprobs: int | None,
                         extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": completion_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason,
                         "logprobs": legacy_logprobs(tokens, logprobs) if logprobs is not None else None}],
            "usage": usage(prompt_tokens, completion_tokens), **extra}


def text_chunk(completion_id: str, model: str, text: str, finish_reason: str | None, created: int,
               tokens: list[TokenEvent] | None = None, logprobs: int | None = None, offset: int = 0,
               extra: dict[str, Any] | None = None, usage_of: tuple[int, int] | None = None) -> bytes:
    """One server-sent event of a streamed text completion."""
    payload: dict[str, Any] = {
        "id": completion_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason,
                     "logprobs": legacy_logprobs(tokens or [], logprobs, offset) if logprobs is not None else None}],
        **(extra or {})}
    if usage_of is not None:
        payload["choices"] = []
        payload["usage"] = usage(*usage_of)
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()
