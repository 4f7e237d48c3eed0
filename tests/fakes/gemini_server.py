"""A fake of the Gemini API's `generateContent` and `streamGenerateContent` (REST, as google.genai and curl speak it).

    POST /v1beta/models/{model}:generateContent     (also /v1/ and /v1alpha/)
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse
    x-goog-api-key: KEY                             (or ?key=KEY)
    {"contents": [{"role": "user", "parts": [{"text": "..."}]}],
     "systemInstruction": {"parts": [{"text": "..."}]}, "generationConfig": {"maxOutputTokens": 64, ...}}

A stream is server-sent events ("data: {json}\r\n\r\n"), each a whole GenerateContentResponse holding
one word of the answer; every event carries usageMetadata with the prompt's count, and the last one the
finishReason and the full usage (candidatesTokenCount, thoughtsTokenCount), as the real API sends them.
A failure after the stream began is an event holding Google's error object.

Errors use Google's shape {"error": {"code", "message", "status", "details"}}, with the real codes:
a wrong key is 400 INVALID_ARGUMENT (reason API_KEY_INVALID), a missing one 403 PERMISSION_DENIED.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Callable, Iterable

from . import Fault, FakeServer, Reply, StreamReply, count_tokens, split_words, sse_event

_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(?:generateContent|streamGenerateContent)$")
_CRLF = "\r\n"  # Google ends its event lines with CRLF
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
# Fields of GenerateContentRequest and GenerationConfig, in both JSON spellings protobuf accepts.
_REQUEST_FIELDS = {
    "model", "contents", "tools", "toolConfig", "tool_config", "safetySettings", "safety_settings",
    "systemInstruction", "system_instruction", "generationConfig", "generation_config",
    "cachedContent", "cached_content",
}
_CONFIG_FIELDS = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
    "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
    "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities", "mediaResolution",
    "speechConfig", "enableEnhancedCivicAnswers",
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _field(data: dict[str, Any], camel: str) -> Any:
    return data.get(camel, data.get(_snake(camel)))


def _text_of(content: Any) -> str:
    parts = content.get("parts", []) if isinstance(content, dict) else []
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


class _Invalid(Exception):
    pass


class FakeGemini(FakeServer):
    """Gemini's `generateContent` on 127.0.0.1; `answer(prompt)` gives the reply to the last user turn."""

    def __init__(
        self,
        api_key: str = "test-key",
        answer: Callable[[str], str] | None = None,
        models: Iterable[str] | None = None,
        thoughts_tokens: int = 0,
        chunk_delay: float = 0.0,
    ) -> None:
        super().__init__(api_key, answer, chunk_delay)
        self.models = set(models) if models is not None else None
        """Models that exist; None means any name is served."""
        self.thoughts_tokens = thoughts_tokens
        """Thinking tokens to report in usage (billed as output by the real API)."""
        self._ids = itertools.count(1)

    @staticmethod
    def error(status: int, message: str, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> Reply:
        """A reply in Google's error shape."""
        error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
        if details:
            error["details"] = details
        return Reply.json(status, {"error": error}, headers)

    def route(self, method: str, path: str) -> Any:
        match = _PATH.match(path)
        if match is None or method != "POST":
            return self.error(404, f"Method not found: {method} {path}")
        model = match.group(2)
        if self.models is not None and model not in self.models:
            return self.error(
                404, f"models/{model} is not found for API version {match.group(1)}, or is not supported for generateContent."
            )
        return model

    def check_auth(self, headers: dict[str, str], query: dict[str, str]) -> Reply | None:
        key = headers.get("x-goog-api-key") or query.get("key")
        if not key:
            return self.error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if key != self.api_key:
            message = "API key not valid. Please pass a valid API key."
            return self.error(
                400,
                message,
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
                ],
            )
        return None

    def error_reply(self, status: int, fault: Fault) -> Reply:
        if status == 502:
            return self.html(502, "502 Server Error")  # Google's front end answers 502 with HTML
        headers: dict[str, str] = {}
        details: list[dict[str, Any]] = []
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{fault.retry_after:g}s"})
        if fault.error_code:
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": fault.error_code})
        return self.error(status, _MESSAGES.get(status, f"fake error {status}"), details, headers)

    def garbage_reply(self, kind: str, model: Any) -> Reply:
        usage = {"promptTokenCount": 3, "totalTokenCount": 3}
        if kind == "json":
            return Reply(200, b'{"candidates": [{"content": {"parts": [{"text": "cut of')
        if kind == "empty":
            return Reply.json(200, {"usageMetadata": usage, "modelVersion": model})
        if kind == "blocked":
            return Reply.json(200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage, "modelVersion": model})
        raise ValueError(f"unknown garbage kind {kind!r}; use json, empty or blocked")

    def bad_json_reply(self, raw: bytes) -> Reply:
        return self.error(400, f"Invalid JSON payload received. Unexpected token.\n{raw[:40]!r}")

    def handle(self, model: Any, body: dict[str, Any]) -> Reply:
        composed = self._compose(body)
        if isinstance(composed, Reply):
            return composed
        reply, finish, usage = composed
        return Reply.json(
            200,
            {
                "candidates": [
                    {"content": {"parts": [{"text": reply}], "role": "model"}, "finishReason": finish, "index": 0}
                ],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": f"fake-{next(self._ids)}",
            },
        )

    # -- streaming -------------------------------------------------------------------------------
    def streaming(self, path: str, query: dict[str, str], body: Any) -> bool:
        # google.genai always asks alt=sse; without it the real API sends one JSON array, which this fake does not.
        return path.endswith(":streamGenerateContent")

    def handle_stream(self, model: Any, body: dict[str, Any]) -> Reply | StreamReply:
        composed = self._compose(body)
        if isinstance(composed, Reply):
            return composed
        reply, finish, usage = composed
        response_id = f"fake-{next(self._ids)}"
        pieces = split_words(reply) or [""]
        partial = {k: usage[k] for k in ("promptTokenCount", "promptTokensDetails")}
        events = []
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
            if last:
                candidate["finishReason"] = finish
            event = {
                "candidates": [candidate],
                "usageMetadata": usage if last else {**partial, "totalTokenCount": usage["promptTokenCount"]},
                "modelVersion": model,
                "responseId": response_id,
            }
            events.append((sse_event(event, _CRLF), bool(piece)))
        return StreamReply(events, delay=self.chunk_delay)

    def stream_error_event(self, status: int, fault: Fault) -> bytes:
        error = {"code": status, "message": _MESSAGES.get(status, f"fake error {status}"), "status": _STATUS.get(status, "UNKNOWN")}
        return sse_event({"error": error}, _CRLF)

    def garbage_stream(self, kind: str, model: Any) -> StreamReply:
        usage = {"promptTokenCount": 3, "totalTokenCount": 3}
        if kind == "json":
            return StreamReply([(b'data: {"candidates": [{"content": {"parts": [{"text": "cut of\r\n\r\n', False)])
        if kind == "empty":
            return StreamReply([(sse_event({"usageMetadata": usage, "modelVersion": model}, _CRLF), False)])
        if kind == "blocked":
            event = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage, "modelVersion": model}
            return StreamReply([(sse_event(event, _CRLF), False)])
        raise ValueError(f"unknown garbage kind {kind!r}; use json, empty or blocked")

    def _compose(self, body: dict[str, Any]) -> Reply | tuple[str, str, dict[str, Any]]:
        """The answer to a request (text, finish reason, usageMetadata), or the 400 it deserves."""
        try:
            system, turns, config = self._parse(body)
        except _Invalid as exc:
            return self.error(400, str(exc))
        prompt = next((text for role, text in reversed(turns) if role == "user"), "")
        reply = self.answer(prompt)
        finish = "STOP"
        for stop in _field(config, "stopSequences") or []:
            if stop and stop in reply:
                reply = reply[: reply.index(stop)]
        limit = _field(config, "maxOutputTokens")
        if isinstance(limit, int) and count_tokens(reply) > limit:
            reply = " ".join(reply.split()[:limit])
            finish = "MAX_TOKENS"
        prompt_tokens = count_tokens(system) + sum(count_tokens(text) for _, text in turns)
        answer_tokens = count_tokens(reply)
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens + self.thoughts_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        }
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        return reply, finish, usage

    @staticmethod
    def _parse(body: dict[str, Any]) -> tuple[str, list[tuple[str, str]], dict[str, Any]]:
        unknown = sorted(set(body) - _REQUEST_FIELDS)
        if unknown:
            raise _Invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.')
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _Invalid("* GenerateContentRequest.contents: contents is not specified\n")
        turns = []
        for content in contents:
            role = content.get("role", "user") if isinstance(content, dict) else None
            if role not in ("user", "model"):
                raise _Invalid("Please use a valid role: user, model.")
            if not isinstance(content.get("parts"), list) or not content["parts"]:
                raise _Invalid("* GenerateContentRequest.contents.parts: contents.parts must not be empty.\n")
            turns.append((role, _text_of(content)))
        config = _field(body, "generationConfig") or {}
        if not isinstance(config, dict):
            raise _Invalid("Invalid JSON payload received. generationConfig must be an object.")
        unknown = sorted({_snake(k) for k in config} - {_snake(k) for k in _CONFIG_FIELDS})
        if unknown:
            raise _Invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}" at \'generation_config\': Cannot find field.')
        system = _text_of(_field(body, "systemInstruction") or {})
        return system, turns, config
