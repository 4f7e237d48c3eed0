"""A fake of OpenAI's Chat Completions API (non-streaming), as the OpenAI SDKs and compatible servers speak it.

    POST /v1/chat/completions
    Authorization: Bearer KEY
    {"model": "...", "messages": [{"role": "user", "content": "..."}], "max_tokens": 64, ...}

Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}; a wrong key is 401 invalid_api_key
and, like the real one, the message shows a masked part of the key.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

from . import Fault, FakeServer, Reply, count_tokens

_PATH = "/v1/chat/completions"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_PARAMS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
    "stream", "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "user", "response_format", "tools", "tool_choice", "parallel_tool_calls", "metadata", "store",
    "reasoning_effort", "service_tier", "modalities", "prediction", "audio", "web_search_options", "verbosity",
    "prompt_cache_key", "safety_identifier", "functions", "function_call",
}
_ERRORS = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("The server timed out while processing your request.", "server_error", None),
}


def _mask(key: str) -> str:
    return f"{key[:3]}{'*' * max(4, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "*" * len(key)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class FakeOpenAI(FakeServer):
    """OpenAI's `/v1/chat/completions` on 127.0.0.1; `answer(prompt)` gives the reply to the last user message."""

    def __init__(self, api_key: str = "sk-test-key", answer: Callable[[str], str] | None = None) -> None:
        super().__init__(api_key, answer)
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """What to put in [teacher].base_url (the OpenAI SDKs' convention: it ends in /v1)."""
        return f"{self.url}/v1"

    @staticmethod
    def error(
        status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """A reply in OpenAI's error shape."""
        return Reply.json(status, {"error": {"message": message, "type": type_, "param": param, "code": code}}, headers)

    def route(self, method: str, path: str) -> Any:
        if path != _PATH or method != "POST":
            return self.error(404, f"Invalid URL ({method} {path})", "invalid_request_error")
        return None

    def check_auth(self, headers: dict[str, str], query: dict[str, str]) -> Reply | None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return self.error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if key.strip() != self.api_key:
            return self.error(
                401,
                f"Incorrect API key provided: {_mask(key.strip())}. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        return None

    def error_reply(self, status: int, fault: Fault) -> Reply:
        if status == 502:
            return self.html(502, "502 Bad Gateway")  # the CDN in front answers 502 with HTML
        message, type_, code = _ERRORS.get(status, (f"fake error {status}", "invalid_request_error", None))
        if fault.error_code == "insufficient_quota":
            message, type_ = "You exceeded your current quota, please check your plan and billing details.", "insufficient_quota"
        headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        return self.error(status, message, type_, fault.error_code or code, headers=headers)

    def garbage_reply(self, kind: str, routed: Any) -> Reply:
        if kind == "json":
            return Reply(200, b'{"id": "chatcmpl-fake", "choices": [{"message": {"content": "cut of')
        if kind == "empty":
            return Reply.json(200, self._completion("fake-model", None, "stop", 3, 0, choices=[]))
        if kind == "blocked":
            return Reply.json(200, self._completion("fake-model", None, "stop", 3, 0, refusal="I can't help with that."))
        raise ValueError(f"unknown garbage kind {kind!r}; use json, empty or blocked")

    def bad_json_reply(self, raw: bytes) -> Reply:
        return self.error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
            "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
        )

    def handle(self, routed: Any, body: dict[str, Any]) -> Reply:
        unknown = sorted(set(body) - _PARAMS)
        if unknown:
            return self.error(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            return self.error(400, "you must provide a model parameter", "invalid_request_error")
        if not isinstance(messages, list) or not messages:
            return self.error(400, "[] is too short - 'messages'", "invalid_request_error", param="messages")
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in _ROLES:
                return self.error(
                    400, f"Invalid value: '{role}'. Supported values are: {sorted(_ROLES)}.",
                    "invalid_request_error", "invalid_value", f"messages[{index}].role",
                )
        if body.get("stream"):
            return self.error(400, "this fake answers stream=false only", "invalid_request_error")
        prompt = next((_content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        reply = self.answer(prompt)
        finish = "stop"
        stops = body.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            if stop and stop in reply:
                reply = reply[: reply.index(stop)]
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and count_tokens(reply) > limit:
            reply = " ".join(reply.split()[:limit])
            finish = "length"
        prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) for m in messages)
        return Reply.json(200, self._completion(model, reply, finish, prompt_tokens, count_tokens(reply)))

    def _completion(
        self, model: str, text: str | None, finish: str, prompt_tokens: int, completion_tokens: int,
        choices: list | None = None, refusal: str | None = None,
    ) -> dict[str, Any]:
        if choices is None:
            message = {"role": "assistant", "content": text, "refusal": refusal, "annotations": []}
            choices = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        return {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
