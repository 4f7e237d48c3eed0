"""A fake of OpenAI's Chat Completions API, as the OpenAI SDKs and compatible servers speak it.

    POST /v1/chat/completions
    Authorization: Bearer KEY
    {"model": "...", "messages": [{"role": "user", "content": "..."}], "max_tokens": 64, ...}

With "stream": true the answer is server-sent events of `chat.completion.chunk`s: the role first, one word
of content a chunk, a chunk with the finish_reason, with "stream_options": {"include_usage": true} a last
chunk with no choices and the usage (and "usage": null in the others), then "data: [DONE]". A failure
after the stream began is an event holding OpenAI's error object, without [DONE].

Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}; a wrong key is 401 invalid_api_key
and, like the real one, the message shows a masked part of the key.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

from . import Fault, FakeServer, Reply, StreamReply, count_tokens, split_words, sse_event

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

    def __init__(
        self, api_key: str = "sk-test-key", answer: Callable[[str], str] | None = None, chunk_delay: float = 0.0
    ) -> None:
        super().__init__(api_key, answer, chunk_delay)
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
        composed = self._compose(body)
        if isinstance(composed, Reply):
            return composed
        return Reply.json(200, self._completion(*composed))

    def _compose(self, body: dict[str, Any]) -> Reply | tuple[str, str, str, int, int]:
        """The answer to a request (model, text, finish reason, prompt and completion tokens), or the 400 it deserves."""
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
        options = body.get("stream_options")
        if options is not None:
            if not body.get("stream"):
                return self.error(
                    400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    "invalid_request_error", param="stream_options",
                )
            if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
                return self.error(400, f"Invalid value for 'stream_options': {options!r}.", "invalid_request_error",
                                  param="stream_options")
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
        return model, reply, finish, prompt_tokens, count_tokens(reply)

    # -- streaming -------------------------------------------------------------------------------
    def streaming(self, path: str, query: dict[str, str], body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def handle_stream(self, routed: Any, body: dict[str, Any]) -> Reply | StreamReply:
        composed = self._compose(body)
        if isinstance(composed, Reply):
            return composed
        model, reply, finish, prompt_tokens, completion_tokens = composed
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk = self._chunker(model, with_usage)
        events = [(chunk({"role": "assistant", "content": "", "refusal": None}), False)]
        events += [(chunk({"content": piece}), True) for piece in split_words(reply)]
        events.append((chunk({}, finish), False))
        if with_usage:
            events.append((chunk(None, usage=self._usage(prompt_tokens, completion_tokens)), False))
        events.append((sse_event("[DONE]"), False))
        return StreamReply(events, delay=self.chunk_delay, content_type="text/event-stream; charset=utf-8")

    def _chunker(self, model: str, with_usage: bool) -> Callable[..., bytes]:
        """Makes the events of one stream: one id and creation time for all its chunks."""
        ident, created = f"chatcmpl-fake{next(self._ids)}", int(time.time())

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            data: dict[str, Any] = {
                "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_fake", "choices": choices,
            }
            if with_usage:
                data["usage"] = usage
            return sse_event(data)

        return chunk

    def stream_error_event(self, status: int, fault: Fault) -> bytes:
        message, type_, code = _ERRORS.get(status, (f"fake error {status}", "invalid_request_error", None))
        return sse_event({"error": {"message": message, "type": type_, "param": None, "code": fault.error_code or code}})

    def garbage_stream(self, kind: str, routed: Any) -> StreamReply:
        chunk = self._chunker("fake-model", True)
        usage = chunk(None, usage=self._usage(3, 0))
        done = sse_event("[DONE]")
        if kind == "json":
            return StreamReply([(b'data: {"id": "chatcmpl-fake", "choices": [{"delta": {"content": "cut of\n\n', False)])
        if kind == "empty":
            return StreamReply([(usage, False), (done, False)])
        if kind == "blocked":
            events = [
                chunk({"role": "assistant", "content": None, "refusal": ""}),
                chunk({"refusal": "I can't help with that."}),
                chunk({}, "stop"),
                usage,
                done,
            ]
            return StreamReply([(event, False) for event in events])
        raise ValueError(f"unknown garbage kind {kind!r}; use json, empty or blocked")

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
            "usage": self._usage(prompt_tokens, completion_tokens),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
